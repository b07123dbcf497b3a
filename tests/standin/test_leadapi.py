"""
test_leadapi.py: checks that the stand-in lead APIs (leadapi.py) enforce their contracts.

Starts leadapi.py on a free port in a subprocess once for the module, resets it before each test
through the control API, and talks to it with http.client so raw bodies and headers can be
inspected.  Run: python3 -m unittest discover -s tests/standin -v
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "leadapi.py")

LEADPRO = "/leadpro/api/v103"
LEADPRO_KEY = "test-leadpro-key"
LOFTY_KEY = "test-lofty-key"
LOFTY_BEARER = "test-lofty-oauth"
WEBHOOK_KEY = b"test-webhook-secret-32-bytes!!!!"
BIG = 2 ** 53 + 1

PROC = None
PORT = None
TMPDIR = None
RECORD = None
LOG = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setUpModule():
    global PROC, PORT, TMPDIR, RECORD, LOG
    TMPDIR = tempfile.TemporaryDirectory(prefix="leadapi-test-")
    RECORD = os.path.join(TMPDIR.name, "record.json")
    LOG = open(os.path.join(TMPDIR.name, "stderr.log"), "w+b")
    PORT = free_port()
    # From scratch: the stand-in reads LEADAPI_* options, which the caller's shell must not set.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    PROC = subprocess.Popen([sys.executable, SERVER, "--port", str(PORT), "--record", RECORD],
                            stdout=subprocess.DEVNULL, stderr=LOG, env=env)
    deadline = time.monotonic() + 10
    while True:
        try:
            status, _, _ = request("GET", "/_control/health", timeout=1)
            if status == 200:
                return
        except OSError:
            pass
        if PROC.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("stand-in did not start")
        time.sleep(0.05)


def tearDownModule():
    if PROC is not None:
        PROC.terminate()
        try:
            PROC.wait(5)
        except subprocess.TimeoutExpired:
            PROC.kill()
            PROC.wait()
    LOG.close()
    TMPDIR.cleanup()


def request(method, path, body=None, headers=None, timeout=5, conn=None):
    """One request. body: dict/list → JSON, str/bytes as is. Returns (status, headers, text)."""
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        hdrs.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
    finally:
        if own:
            conn.close()


def jreq(method, path, body=None, headers=None, **kw):
    status, hdrs, text = request(method, path, body, headers, **kw)
    return status, hdrs, (json.loads(text) if text else None)


def control(method, path, body=None):
    status, _, obj = jreq(method, "/_control" + path, body)
    assert status == 200, (status, obj)
    return obj


def set_mode(api, mode, **opts):
    return control("POST", "/mode", dict(api=api, mode=mode, **opts))


def leads(api):
    return control("GET", "/leads?api=" + api)["leads"]


def requests_of(api):
    return control("GET", "/requests?api=" + api)["requests"]


def lp_headers():
    return {"X-API-KEY": LEADPRO_KEY}


def lp_lead(**over):
    lead = {"type": "sale", "first_name": "Marla", "last_name": "Singer",
            "email": "marla@example.com", "phone": "01623000000"}
    lead.update(over)
    return {k: v for k, v in lead.items() if v is not None}


def lp_post(body, path="/leads", headers=None):
    return jreq("POST", LEADPRO + path, body, headers or lp_headers())


class Base(unittest.TestCase):
    def setUp(self):
        control("POST", "/reset")


class LeadProTests(Base):
    def assert_422(self, body, field, path="/leads"):
        status, _, obj = lp_post(body, path)
        self.assertEqual(status, 422, obj)
        self.assertEqual(obj["message"], "The given data was invalid.")
        self.assertIn(field, obj["errors"], obj)
        self.assertIsInstance(obj["errors"][field], list)
        self.assertIsInstance(obj["errors"][field][0], str)
        return obj

    def test_auth(self):
        for headers in ({}, {"X-API-KEY": "wrong"}):
            status, _, obj = lp_post(lp_lead(), headers=headers or {"X-Other": "1"})
            self.assertEqual(status, 401)
            self.assertEqual(obj, {"message": "Unauthenticated."})
        self.assertEqual(leads("leadpro"), [])

    def test_offices(self):
        status, _, obj = jreq("GET", LEADPRO + "/offices", headers=lp_headers())
        self.assertEqual(status, 200)
        self.assertEqual(obj, {"data": [{"id": 1, "name": "Derby"},
                                        {"id": "2", "name": "Nottingham"}]})

    def test_create_and_get(self):
        body = lp_lead(utm_source="google", host="https://www.example.co.uk/sell",
                       meta={"Property ID": "7362"}, office_id=2, gdpr_checkbox=True,
                       questionnaire={"q1": ["Pets?", "Yes"]}, property_type="detached")
        status, _, obj = lp_post(body)
        self.assertEqual(status, 200, obj)
        lead_id = obj["data"]["id"]
        self.assertIsInstance(lead_id, int)
        status, _, got = jreq("GET", LEADPRO + "/leads/%d" % lead_id, headers=lp_headers())
        self.assertEqual(status, 200)
        self.assertEqual(got["data"]["id"], lead_id)
        self.assertEqual(got["data"]["utm_source"], "google")
        self.assertEqual(got["data"]["source"], "homepage")
        self.assertEqual(got["data"]["questionnaire"], [["Pets?", "Yes"]])
        recs = leads("leadpro")
        self.assertEqual(len(recs), 1)
        self.assertEqual(recs[0]["id"], lead_id)
        self.assertEqual(recs[0]["body"], json.dumps(body))
        self.assertEqual(recs[0]["state"]["host"], "https://www.example.co.uk/sell")
        with open(RECORD, encoding="utf-8") as f:
            on_disk = json.load(f)
        self.assertEqual(on_disk["leads"][0]["json"]["utm_source"], "google")
        self.assertEqual(on_disk["leads"][0]["json"]["host"], "https://www.example.co.uk/sell")

    def test_required(self):
        status, _, obj = lp_post({})
        self.assertEqual(status, 422)
        for f in ("first_name", "last_name", "email", "phone", "type"):
            self.assertIn(f, obj["errors"])
        self.assert_422(lp_lead(first_name=""), "first_name")

    def test_lengths(self):
        self.assert_422(lp_lead(first_name="x" * 51), "first_name")
        self.assert_422(lp_lead(last_name="x" * 51), "last_name")
        self.assert_422(lp_lead(phone="1" * 256), "phone")
        self.assert_422(lp_lead(title=""), "title")
        self.assert_422(lp_lead(title="x" * 51), "title")
        self.assert_422(lp_lead(advert_address="x" * 101), "advert_address")
        self.assert_422(lp_lead(address="x" * 101), "address")
        self.assert_422(lp_lead(advert_postcode="D"), "advert_postcode")
        self.assert_422(lp_lead(postcode="DE1 1JX DE1 1"), "postcode")
        for f in ("advert_url", "advert_image", "message", "host"):
            self.assert_422(lp_lead(**{f: "x" * 256}), f)
        ok = lp_lead(first_name="x" * 50, advert_address="x" * 100, postcode="DE",
                     message="x" * 255)
        self.assertEqual(lp_post(ok)[0], 200)

    def test_types(self):
        self.assert_422(lp_lead(email="not-an-email"), "email")
        self.assert_422(lp_lead(type="buyer"), "type")
        self.assert_422(lp_lead(first_name=7), "first_name")
        self.assert_422(lp_lead(utm_source=["a"]), "utm_source")
        self.assert_422(lp_lead(gdpr_checkbox="yes"), "gdpr_checkbox")
        self.assert_422(lp_lead(international=1), "international")
        self.assert_422(lp_lead(property_type="bungalow"), "property_type")
        self.assert_422(lp_lead(office_id=3), "office_id")
        self.assert_422(lp_lead(office_id="1"), "office_id")
        self.assertEqual(lp_post(lp_lead(office_id=1, international=False))[0], 200)

    def test_meta_availability_questionnaire(self):
        self.assert_422(lp_lead(meta=["a"]), "meta")
        self.assert_422(lp_lead(meta={"a": 1}), "meta")
        self.assert_422(lp_lead(meta={"k": "x" * 1100}), "meta")
        self.assert_422(lp_lead(appointment_availability="monday"), "appointment_availability")
        self.assert_422(lp_lead(appointment_availability={"h": "x" * 1100}),
                        "appointment_availability")
        self.assert_422(lp_lead(questionnaire={"q": ["only one"]}), "questionnaire")
        self.assert_422(lp_lead(questionnaire={"q": ["a", 2]}), "questionnaire")
        self.assert_422(lp_lead(questionnaire={"q%d" % i: ["x" * 30, "y" * 30]
                                               for i in range(40)}), "questionnaire")
        ok = lp_lead(meta={"a": "b"}, appointment_availability={"hours": ["2025-01-01T08:00Z"]},
                     questionnaire=[["a", "b"]])
        self.assertEqual(lp_post(ok)[0], 200)

    def test_unknown_source_becomes_homepage(self):
        status, _, obj = lp_post(lp_lead(source="facebook"))
        self.assertEqual(status, 200)
        rec = leads("leadpro")[0]
        self.assertEqual(rec["state"]["source"], "homepage")
        self.assertEqual(rec["source_replaced"], "facebook")
        lp_post(lp_lead(source="zoopla"))
        self.assertEqual(leads("leadpro")[1]["state"]["source"], "zoopla")

    def test_not_json(self):
        status, _, obj = jreq("POST", LEADPRO + "/leads", "{not json",
                              dict(lp_headers(), **{"Content-Type": "application/json"}))
        self.assertEqual(status, 400)
        self.assertIn("message", obj)
        status, _, _ = jreq("POST", LEADPRO + "/leads", "first_name=Marla",
                            dict(lp_headers(),
                                 **{"Content-Type": "application/x-www-form-urlencoded"}))
        self.assertEqual(status, 400)
        status, _, _ = lp_post(["a"])
        self.assertEqual(status, 400)

    def test_valuation(self):
        body = lp_lead(type="vendor", postcode="DE1 1JX", property_bedrooms=4)
        status, _, a = lp_post(body, "/leads/valuation")
        self.assertEqual(status, 200, a)
        self.assertIsInstance(a["data"]["id"], int)
        self.assertEqual(a["valuation_status"], "Success")
        for k in ("minimum_sale_estimation", "average_sale_estimation", "maximum_sale_estimation",
                  "minimum_rent_estimation", "average_rent_estimation", "maximum_rent_estimation"):
            self.assertIsInstance(a[k], int)
        self.assertLess(a["minimum_sale_estimation"], a["average_sale_estimation"])
        self.assertLess(a["average_sale_estimation"], a["maximum_sale_estimation"])
        _, _, b = lp_post(body, "/leads/valuation")
        self.assertEqual(a["average_sale_estimation"], b["average_sale_estimation"])
        self.assertNotEqual(a["data"]["id"], b["data"]["id"])
        _, _, c = lp_post(lp_lead(type="vendor", postcode="DE1 1JX", property_bedrooms=5),
                          "/leads/valuation")
        self.assertGreater(c["average_sale_estimation"], a["average_sale_estimation"])
        self.assertEqual(leads("leadpro")[0]["state"]["source"], "ivt")
        self.assert_422(lp_lead(type="sale", postcode="DE1 1JX"), "type", "/leads/valuation")
        self.assert_422(lp_lead(type="landlord", postcode="D"), "postcode", "/leads/valuation")

    def test_valuation_failed_mode(self):
        set_mode("leadpro", "valuation_failed", count=1)
        self.assertEqual(lp_post(lp_lead())[0], 200)  # plain creates are not affected
        status, _, obj = lp_post(lp_lead(type="landlord", postcode="NG1 1AA"), "/leads/valuation")
        self.assertEqual(status, 200)
        self.assertEqual(obj["valuation_status"], "Failed")
        self.assertIn("id", obj["data"])
        self.assertNotIn("average_sale_estimation", obj)
        _, _, obj = lp_post(lp_lead(type="landlord", postcode="NG1 1AA"), "/leads/valuation")
        self.assertEqual(obj["valuation_status"], "Success")

    def test_id_shapes(self):
        control("POST", "/id_shape", {"shape": "top"})
        _, _, obj = lp_post(lp_lead())
        self.assertIsInstance(obj["id"], int)
        self.assertNotIn("data", obj)
        control("POST", "/id_shape", {"shape": "string"})
        _, _, obj = lp_post(lp_lead())
        self.assertIsInstance(obj["data"]["id"], str)
        self.assertTrue(obj["data"]["id"].isdigit())
        control("POST", "/id_shape", {"shape": "big"})
        status, _, text = request("POST", LEADPRO + "/leads", lp_lead(), lp_headers())
        self.assertEqual(status, 200)
        self.assertIn('"id":9007199254740993', text.replace(" ", ""))
        _, _, text = request("POST", LEADPRO + "/leads", lp_lead(), lp_headers())
        self.assertIn('"id":9007199254740995', text.replace(" ", ""))
        status, _, obj = jreq("GET", LEADPRO + "/leads/9007199254740993", headers=lp_headers())
        self.assertEqual(status, 200)
        self.assertEqual(obj["data"]["id"], BIG)
        status, _, _ = jreq("GET", LEADPRO + "/leads/9007199254740992", headers=lp_headers())
        self.assertEqual(status, 404)
        self.assertEqual(jreq("POST", "/_control/id_shape", {"shape": "nope"})[0], 400)

    def test_update(self):
        body = lp_lead(meta={"a": "1"}, questionnaire=[["q1", "a1"]])
        _, _, obj = lp_post(body)
        lead_id = obj["data"]["id"]
        path = LEADPRO + "/leads/%d" % lead_id
        status, _, obj = jreq("PATCH", LEADPRO + "/leads/999999", {"status": "Contacted"},
                              lp_headers())
        self.assertEqual(status, 404)
        self.assertEqual(obj, {"message": "Lead not found."})
        status, _, obj = jreq("PATCH", path, {"status": "Contacted", "meta": {"b": "2"},
                                              "questionnaire": [["q2", "a2"]],
                                              "address": "x" * 200, "utm_gclid": "G1"},
                              lp_headers())
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj["data"]["id"], lead_id)
        _, _, got = jreq("GET", path, headers=lp_headers())
        st = got["data"]
        self.assertEqual(st["status"], "Contacted")
        self.assertEqual(st["meta"], {"a": "1", "b": "2"})
        self.assertEqual(st["questionnaire"], [["q1", "a1"], ["q2", "a2"]])
        self.assertEqual(st["first_name"], "Marla")
        for bad in ({"first_name": ""}, {"last_name": "x" * 51}, {"address": "x" * 256},
                    {"postcode": "x" * 256}, {"office_id": 42}, {"gdpr_checkbox": "true"},
                    {"next_action_date": "next tuesday"}, {"meta": {"a": 1}},
                    {"questionnaire": [["one"]]}):
            status, _, obj = jreq("PATCH", path, bad, lp_headers())
            self.assertEqual(status, 422, bad)
            self.assertIn(next(iter(bad)), obj["errors"])
        status, _, _ = jreq("PATCH", path, {"status": "x"}, {"X-API-KEY": "wrong"})
        self.assertEqual(status, 401)
        self.assertEqual(len(leads("leadpro")[0]["updates"]), 1)


def lping(body, headers=None, raw=False):
    if headers is None:
        headers = {"X-Leadping-Source-Id": "test-source", "X-Leadping-Source-Key": "test-source-key"}
    headers = dict({"Content-Type": "application/json"}, **headers)
    if raw:
        return request("POST", "/leadping/leads/intake", body, headers)
    return jreq("POST", "/leadping/leads/intake", body, headers)


class LeadpingTests(Base):
    def assert_problem(self, status, hdrs, obj, want):
        self.assertEqual(status, want, obj)
        self.assertTrue(hdrs["content-type"].startswith("application/problem+json"))
        self.assertEqual(obj["type"], "about:blank")
        self.assertEqual(obj["status"], want)
        self.assertIsInstance(obj["title"], str)
        self.assertIsInstance(obj["detail"], str)

    def assert_invalid(self, body, field):
        status, hdrs, obj = lping(body)
        self.assert_problem(status, hdrs, obj, 400)
        self.assertIn(field, obj["detail"])
        self.assertIn(field, obj["errors"])
        return obj

    def test_auth(self):
        body = {"email": "a@example.com"}
        self.assert_problem(*lping(body, {}), 401)
        self.assert_problem(*lping(body, {"X-Leadping-Source-Id": "test-source"}), 401)
        self.assert_problem(*lping(body, {"X-Leadping-Source-Id": "test-source",
                                          "X-Leadping-Source-Key": "nope"}), 403)
        self.assert_problem(*lping(body, {"Authorization": "Bearer lp_src_wrong"}), 403)
        status, _, obj = lping(body, {"Authorization": "Bearer lp_src_test"})
        self.assertEqual(status, 201)
        self.assertEqual(len(leads("leadping")), 1)

    def test_success_shape(self):
        body = {"firstName": "Tyler", "lastName": "Durden", "email": "t@example.com",
                "phone": "+447700900123", "utmSource": "google", "utmCampaign": "spring",
                "landingPage": "https://example.com/x", "price": "12.50",
                "sourceMetadata": {"form": "valuation"}, "externalId": "sub-1",
                "dateOfBirth": "1990-01-31", "zip": "NG1 1AA"}
        status, hdrs, obj = lping(body)
        self.assertEqual(status, 201, obj)
        self.assertRegex(obj["id"], r"^lp_[0-9a-f]{32}$")
        self.assertEqual(obj["contact"]["firstName"], "Tyler")
        self.assertEqual(obj["contact"]["email"], "t@example.com")
        self.assertEqual(obj["contact"]["phone"]["number"], "+447700900123")
        self.assertEqual(obj["contact"]["streetAddress"]["postalCode"], "NG1 1AA")
        self.assertEqual(obj["metadata"]["utmSource"], "google")
        self.assertEqual(obj["metadata"]["externalId"], "sub-1")
        self.assertEqual(obj["metadata"]["price"], "12.50")
        self.assertEqual(obj["metadata"]["sourceMetadata"], {"form": "valuation"})
        self.assertEqual(obj["customer"]["birthDate"], "1990-01-31")
        self.assertRegex(obj["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        rec = leads("leadping")[0]
        self.assertEqual(rec["id"], obj["id"])
        self.assertEqual(rec["body"], json.dumps(body))
        self.assertEqual(rec["headers"]["x-leadping-source-key"], "***")

    def test_validation(self):
        status, hdrs, obj = lping([1, 2])
        self.assert_problem(status, hdrs, obj, 400)
        status, hdrs, obj = lping("{oops")
        self.assert_problem(status, hdrs, obj, 400)
        status, hdrs, obj = lping('{"email": "a@example.com"}',
                                  {"Authorization": "Bearer lp_src_test",
                                   "Content-Type": "text/plain"})
        self.assert_problem(status, hdrs, obj, 415)
        self.assert_invalid({"email": "a@example.com", "first_name": "x"}, "first_name")
        self.assert_invalid({"email": "a@example.com", "firstName": 5}, "firstName")
        self.assert_invalid({"email": "a@example.com", "dateOfBirth": "31/01/1990"},
                            "dateOfBirth")
        self.assert_invalid({"email": "a@example.com", "birthDate": "2023-02-30"}, "birthDate")
        for bad in ("012", "1e5", "12.", "abc", True, [1]):
            self.assert_invalid({"email": "a@example.com", "price": bad}, "price")
        self.assert_invalid({"email": "a@example.com", "directPostPrice": "-01"},
                            "directPostPrice")
        self.assert_invalid({"email": "a@example.com", "sourceMetadata": {"a": 1}},
                            "sourceMetadata")
        self.assert_invalid({"email": "a@example.com", "sourceMetadata": "x"}, "sourceMetadata")
        self.assert_invalid({"firstName": "Tyler"}, "email")
        self.assert_invalid({"email": "", "phone": None}, "phone")
        self.assertEqual(leads("leadping"), [])
        for good in ({"phone": "1", "price": 12.5}, {"email": "a@b.co", "price": "-0.5"},
                     {"email": "a@b.co", "directPostPrice": 3, "firstName": None}):
            self.assertEqual(lping(good)[0], 201, good)

    def test_idempotent_external_id(self):
        body = {"email": "a@example.com", "externalId": "sub-42"}
        s1, _, a = lping(body)
        s2, _, b = lping(body)
        self.assertEqual((s1, s2), (201, 201))
        self.assertEqual(a["id"], b["id"])
        recs = leads("leadping")
        self.assertEqual(len(recs), 1)
        self.assertEqual(recs[0]["duplicates"], 1)
        _, _, c = lping({"email": "a@example.com", "externalId": "sub-43"})
        self.assertNotEqual(c["id"], a["id"])
        _, _, d = lping({"email": "a@example.com"})
        _, _, e = lping({"email": "a@example.com"})
        self.assertNotEqual(d["id"], e["id"])


def lofty(method, path, body=None, auth="token " + LOFTY_KEY, raw=False):
    headers = {"Authorization": auth} if auth else {}
    headers["Content-Type"] = "application/json"
    fn = request if raw else jreq
    return fn(method, "/lofty/v1.0" + path, body, headers)


class LoftyTests(Base):
    def assert_400(self, body, code="PARAMETER_INVALID", path="/leads", method="POST"):
        status, _, obj = lofty(method, path, body)
        self.assertEqual(status, 400, body)
        self.assertEqual(obj["code"], code, obj)
        self.assertIsInstance(obj["message"], str)
        return obj

    def test_auth(self):
        for auth in (None, "token wrong", "Bearer wrong", LOFTY_KEY, "Basic " + LOFTY_KEY):
            status, _, obj = lofty("POST", "/leads", {"firstName": "Bob"}, auth=auth)
            self.assertEqual(status, 401, auth)
            self.assertEqual(obj["code"], "BAD_CREDENTIALS")
            self.assertIn("message", obj)
        self.assertEqual(lofty("POST", "/leads", {"firstName": "Bob"},
                               auth="Bearer " + LOFTY_BEARER)[0], 200)
        self.assertEqual(lofty("POST", "/leads", {"firstName": "Bob"})[0], 200)

    def test_big_ids(self):
        status, _, text = lofty("POST", "/leads", {"firstName": "Bob"}, raw=True)
        self.assertEqual(status, 200)
        self.assertEqual(re.sub(r"\s", "", text), '{"leadId":9007199254740993}')
        _, _, text = lofty("POST", "/leads", {"firstName": "Al"}, raw=True)
        self.assertEqual(re.sub(r"\s", "", text), '{"leadId":9007199254740995}')
        status, _, obj = lofty("GET", "/leads/9007199254740993")
        self.assertEqual(status, 200)
        self.assertEqual(obj["firstName"], "Bob")
        self.assertEqual(obj["leadId"], BIG)
        # the double nearest 2^53+1 is 2^53: a client that rounds gets a 404
        self.assertEqual(lofty("GET", "/leads/9007199254740992")[0], 404)

    def test_validation(self):
        self.assert_400({"lastName": "Li"})
        self.assert_400({"firstName": ""})
        obj = self.assert_400({"firstName": "x" * 31}, "PARAMETER_TOO_LONG")
        self.assertEqual(obj["message"], "firstName exceeds 30 characters")
        self.assert_400({"firstName": "Bob", "lastName": "x" * 31}, "PARAMETER_TOO_LONG")
        self.assert_400({"firstName": 5})
        self.assert_400({"firstName": "Bob", "emails": "a@example.com"})
        self.assert_400({"firstName": "Bob", "emails": ["not-an-email"]})
        self.assert_400({"firstName": "Bob", "phones": ["+1" * 11]}, "PARAMETER_TOO_LONG")
        self.assert_400({"firstName": "Bob", "phones": [4155551234]})
        self.assert_400({"firstName": "Bob", "leadTypes": [3]})
        self.assert_400({"firstName": "Bob", "leadTypes": ["2"]})
        self.assert_400({"firstName": "Bob", "tags": ["x" * 65]}, "PARAMETER_TOO_LONG")
        self.assert_400({"firstName": "Bob", "tagsAdd": [1]})
        self.assert_400({"firstName": "Bob", "segments": ["x" * 31]}, "PARAMETER_TOO_LONG")
        self.assert_400({"firstName": "Bob", "stage": "x" * 20}, "PARAMETER_TOO_LONG")
        self.assert_400({"firstName": "Bob", "customAttributeList": [{"value": "x"}]})
        self.assert_400({"firstName": "Bob", "customAttributeList": {"attributeName": "a"}})
        self.assert_400({"firstName": "Bob", "property": {"bedrooms": "3"}})
        self.assert_400({"firstName": "Bob", "property": {"rooms": 3}})
        self.assert_400({"firstName": "Bob", "property": "22 Regnart Rd"})
        self.assert_400({"firstName": "Bob", "cannotCall": "false"})
        self.assert_400({"firstName": "Bob", "assignedUserId": "10000000514"})
        self.assert_400({"firstName": "Bob", "first_name": "Bob"})
        status, _, obj = lofty("POST", "/leads", "{x")
        self.assertEqual(status, 400)
        status, _, obj = jreq("POST", "/lofty/v1.0/leads", "firstName=Bob",
                              {"Authorization": "token " + LOFTY_KEY,
                               "Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 415)
        self.assertEqual(obj["code"], "UNSUPPORTED_MEDIA_TYPE")
        self.assertEqual(leads("lofty"), [])
        good = {"firstName": "x" * 30, "lastName": "Li", "emails": ["jane.doe@example.com"],
                "phones": ["+14155551234"], "leadTypes": [-1, 2, 9], "tags": ["x" * 64],
                "segments": ["y" * 30], "stage": "x" * 19, "source": "Website",
                "customAttributeList": [{"attributeName": "utm_source", "value": "google"}],
                "property": {"price": 100000, "city": "Derby", "bedrooms": 3, "lotSize": 26.33,
                             "mailAddress": True, "zipCode": "DE1 1JX"},
                "birthday": "Jun 5, 2001", "cannotCall": False}
        status, _, obj = lofty("POST", "/leads", good)
        self.assertEqual(status, 200, obj)
        self.assertEqual(leads("lofty")[0]["json"], good)

    def test_update(self):
        status, _, obj = lofty("PUT", "/leads/9007199254740993", {"lastName": "Li"})
        self.assertEqual(status, 404)
        self.assertEqual(obj["code"], "LEAD_NOT_EXIST")
        _, _, obj = lofty("POST", "/leads", {"firstName": "Bob", "tags": ["a"],
                                             "property": {"city": "Derby"}})
        lead_id = obj["leadId"]
        status, _, obj = lofty("PUT", "/leads/%d" % lead_id,
                               {"lastName": "Li", "tagsAdd": ["b"], "property": {"bedrooms": 2}})
        self.assertEqual(status, 200, obj)
        self.assertEqual(obj["leadId"], lead_id)
        _, _, got = lofty("GET", "/leads/%d" % lead_id)
        self.assertEqual(got["firstName"], "Bob")
        self.assertEqual(got["lastName"], "Li")
        self.assertEqual(got["tags"], ["a", "b"])
        self.assertEqual(got["property"], {"city": "Derby", "bedrooms": 2})
        self.assert_400({"lastName": "x" * 31}, "PARAMETER_TOO_LONG", "/leads/%d" % lead_id,
                        "PUT")
        self.assertEqual(lofty("GET", "/leads/%d" % lead_id, auth=None)[0], 401)


def sign(wid, ts, body, key=WEBHOOK_KEY):
    mac = hmac.new(key, wid.encode() + b"." + str(ts).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def hook(body, wid="msg_1", ts=None, sig=None, name="crm"):
    data = json.dumps(body).encode()
    ts = int(time.time()) if ts is None else ts
    headers = {"Content-Type": "application/json", "webhook-id": wid,
               "webhook-timestamp": str(ts),
               "webhook-signature": sig if sig is not None else sign(wid, ts, data)}
    return jreq("POST", "/webhook/" + name, data, headers)


class WebhookTests(Base):
    def test_good(self):
        status, _, obj = hook({"lead": {"email": "a@example.com"}})
        self.assertEqual((status, obj), (200, {"ok": True}))
        rec = leads("webhook")[0]
        self.assertEqual(rec["json"], {"lead": {"email": "a@example.com"}})
        self.assertEqual(rec["name"], "crm")
        self.assertEqual(rec["id"], "msg_1")
        ts = int(time.time())
        body = json.dumps({"a": 1}).encode()
        multi = "v1,AAAA " + sign("msg_2", ts, body)
        self.assertEqual(hook({"a": 1}, "msg_2", ts, multi)[0], 200)
        self.assertEqual(hook({"a": 1}, "msg_2", ts, multi)[0], 200)
        self.assertEqual(leads("webhook")[1]["duplicates"], 1)

    def test_bad(self):
        ts = int(time.time())
        body = json.dumps({"a": 1}).encode()
        for sig in ("v1,AAAA", sign("msg_1", ts, body, key=b"other"), "",
                    sign("msg_1", ts, b'{"a": 2}'), sign("msg_1", ts, body).replace("v1,", "v2,")):
            status, _, obj = hook({"a": 1}, "msg_1", ts, sig)
            self.assertEqual(status, 401, sig)
            self.assertIsInstance(obj["error"], str)
        old = ts - 301
        status, _, obj = hook({"a": 1}, "msg_1", old, sign("msg_1", old, body))
        self.assertEqual(status, 401)
        status, _, obj = jreq("POST", "/webhook/crm", body, {"Content-Type": "application/json"})
        self.assertEqual(status, 401)
        self.assertEqual(leads("webhook"), [])


class ModeTests(Base):
    def test_error500_count(self):
        set_mode("leadpro", "error500", count=2)
        for _ in range(2):
            status, _, text = request("POST", LEADPRO + "/leads", lp_lead(), lp_headers())
            self.assertEqual(status, 500)
            self.assertTrue(text)
        self.assertEqual(lp_post(lp_lead())[0], 200)
        self.assertEqual(len(leads("leadpro")), 1)
        statuses = [r["status"] for r in requests_of("leadpro")]
        self.assertEqual(statuses, [500, 500, 200])

    def test_unavailable(self):
        set_mode("lofty", "unavailable")
        for _ in range(3):
            status, _, obj = lofty("POST", "/leads", {"firstName": "Bob"})
            self.assertEqual(status, 503)
            self.assertIn("code", obj)
        set_mode("lofty", "ok")
        self.assertEqual(lofty("POST", "/leads", {"firstName": "Bob"})[0], 200)

    def test_ratelimit(self):
        set_mode("leadpro", "ratelimit", retry_after=3, count=1)
        status, hdrs, _ = lp_post(lp_lead())
        self.assertEqual(status, 429)
        self.assertEqual(hdrs["retry-after"], "3")
        set_mode("leadping", "ratelimit", retry_after=4, count=1)
        status, hdrs, obj = lping({"email": "a@example.com"})
        self.assertEqual(status, 429)
        self.assertEqual(hdrs["retry-after"], "4")
        self.assertTrue(hdrs["content-type"].startswith("application/problem+json"))
        self.assertEqual(obj["status"], 429)
        set_mode("lofty", "ratelimit", retry_after=5, count=1)
        status, hdrs, obj = lofty("POST", "/leads", {"firstName": "Bob"})
        self.assertEqual(status, 429)
        self.assertEqual(obj["code"], "TOO_MANY_REQUESTS")
        self.assertAlmostEqual(int(hdrs["x-ratelimit-reset"]), time.time() + 5, delta=2)
        self.assertEqual(lofty("POST", "/leads", {"firstName": "Bob"})[0], 200)

    def test_slow(self):
        set_mode("leadping", "slow", delay=0.4, count=1)
        t0 = time.monotonic()
        self.assertEqual(lping({"email": "a@example.com"})[0], 201)
        self.assertGreaterEqual(time.monotonic() - t0, 0.4)
        t0 = time.monotonic()
        self.assertEqual(lping({"email": "a@example.com"})[0], 201)
        self.assertLess(time.monotonic() - t0, 0.4)

    def test_hang_until_reset(self):
        set_mode("lofty", "hang")
        with self.assertRaises((socket.timeout, TimeoutError)):
            request("POST", "/lofty/v1.0/leads", {"firstName": "Bob"},
                    {"Authorization": "token " + LOFTY_KEY}, timeout=0.5)
        reqs = requests_of("lofty")
        self.assertEqual(len(reqs), 1)
        self.assertIsNone(reqs[0]["status"])
        control("POST", "/reset")
        self.assertEqual(lofty("POST", "/leads", {"firstName": "Bob"})[0], 200)

    def test_close(self):
        set_mode("webhook", "close", count=1)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            hook({"a": 1})
        self.assertEqual(hook({"a": 1})[0], 200)
        self.assertEqual(requests_of("webhook")[0].get("outcome"), "closed")

    def test_bad_mode_requests(self):
        for body in ({"api": "leadpro", "mode": "explode"}, {"api": "nope", "mode": "ok"},
                     {"api": "lofty", "mode": "valuation_failed"},
                     {"api": "leadpro", "mode": "error500", "count": 0}):
            self.assertEqual(jreq("POST", "/_control/mode", body)[0], 400, body)
        self.assertEqual(jreq("GET", "/_control/leads?api=nope")[0], 400)

    def test_all_apis(self):
        set_mode("all", "error500", count=1)
        self.assertEqual(lp_post(lp_lead())[0], 500)
        self.assertEqual(lping({"email": "a@example.com"})[0], 500)
        self.assertEqual(lp_post(lp_lead())[0], 200)


class ControlTests(Base):
    def test_requests_recorded_and_redacted(self):
        lp_post(lp_lead(), headers={"X-API-KEY": "wrong-secret-value"})
        lp_post(lp_lead())
        lofty("POST", "/leads", {"firstName": "Bob"})
        reqs = requests_of("leadpro")
        self.assertEqual([r["status"] for r in reqs], [401, 200])
        self.assertEqual(reqs[0]["method"], "POST")
        self.assertEqual(reqs[0]["path"], LEADPRO + "/leads")
        self.assertEqual(reqs[1]["headers"]["x-api-key"], "***")
        self.assertEqual(requests_of("lofty")[0]["headers"]["authorization"], "token ***")
        _, _, text = request("GET", "/_control/requests")
        for secret in ("wrong-secret-value", LEADPRO_KEY, LOFTY_KEY):
            self.assertNotIn(secret, text)

    def test_keep_alive_and_chunked(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        try:
            for _ in range(3):
                status, hdrs, _ = request("POST", LEADPRO + "/leads", lp_lead(), lp_headers(),
                                          conn=conn)
                self.assertEqual(status, 200)
                self.assertIn("content-length", hdrs)
            sock = conn.sock
            request("GET", LEADPRO + "/offices", None, lp_headers(), conn=conn)
            self.assertIs(conn.sock, sock)
            conn.request("POST", "/leadping/leads/intake",
                         body=iter([b'{"email":', b'"c@example.com"}']),
                         headers={"Content-Type": "application/json",
                                  "Authorization": "Bearer lp_src_test"},
                         encode_chunked=True)
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 201)
        finally:
            conn.close()

    def test_unknown_paths(self):
        self.assertEqual(request("GET", "/nothing")[0], 404)
        self.assertEqual(jreq("GET", LEADPRO + "/nothing", headers=lp_headers())[0], 404)
        self.assertEqual(lofty("GET", "/leads/abc")[0], 400)
        self.assertEqual(jreq("GET", "/webhook/crm")[0], 405)

    def test_log_has_no_personal_data(self):
        lp_post(lp_lead(email="secret.person@example.org", first_name="Zebedee"))
        lping({"email": "secret.person@example.org", "firstName": "Zebedee"})
        time.sleep(0.1)
        LOG.seek(0)
        log = LOG.read().decode("utf-8", "replace")
        self.assertIn("leadpro POST %s/leads 200" % LEADPRO, log)
        self.assertNotIn("secret.person", log)
        self.assertNotIn("Zebedee", log)
        self.assertNotIn(LEADPRO_KEY, log)


if __name__ == "__main__":
    unittest.main()
