"""test_leadpro.py: the LeadPro target end to end (issue 4): nginx → bridge → stand-in LeadPro.

Sample: the shipped conf/leadbridge.json and www/ pages: a contact lead with its UTMs and host, a
valuation with the numbers back to scripts and (through nginx SSI) on the result page, the
two-step update landing on the same lead, refused references (tampered 403, expired 410) and
local validation, none of which reach the API.
Failures: conf/leadpro.json (1 s target timeout, outbox retries after 1 s): each transient
upstream failure class answered 202 "queued" (never "created"), Retry-After honoured by the
outbox, a queued lead delivered later with the same submission id, API refusals passed on as 422
without the API key, the authenticated server-to-server update.
IdShapes: every LeadPro id shape, the 64-bit id exact through the reference into the PATCH.

Helpers added here (not in harness.py): sign_ref()/ref_parts() for lead references in the
bridge's documented format, requests_for() for the stand-in's /_control/requests record,
spool_job() to read a queued job (format in src/outbox.h).
"""

import base64
import hashlib
import hmac
import json
import signal
import os
import random
import re
import string
import time
import unittest
import urllib.parse
import uuid

import harness
from harness import Stack

API_KEY = "test-leadpro-key"
LEADPRO = "/leadpro/api/v103"
BIG_ID = 9007199254740993


def token():
    """A unique value, so each assertion checks this test's own lead."""
    return uuid.uuid4().hex[:10]


def word():
    """A unique lower-case word (letters only)."""
    return "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign_ref(target, lead_id, expires, secret=harness.TEST_SECRET):
    """A lead reference as leadref.c makes it: b64url(target\\nid\\nexpiry).b64url(HMAC)."""
    payload = ("%s\n%s\n%d" % (target, lead_id, expires)).encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return b64url(payload) + "." + b64url(mac)


def ref_parts(ref):
    """(target, lead id, expiry) from a reference (its signature is not checked here)."""
    target, lead_id, expiry = unb64url(ref.split(".")[0]).decode().split("\n")
    return target, lead_id, int(expiry)


def update_json(update):
    """The JSON of one recorded PATCH, with the bridge's own leadbridge_update_id checked and
    taken out of meta (and meta dropped when nothing else is left)."""
    j = json.loads(json.dumps(update["json"]))
    meta = j.get("meta", {})
    uid = meta.pop("leadbridge_update_id", None)
    if uid is not None and not re.fullmatch(r"[0-9a-f]{32}", uid):
        raise AssertionError("leadbridge_update_id %r is not 32 hex digits" % uid)
    if "meta" in j and not meta:
        del j["meta"]
    return j


def requests_for(st, api="leadpro"):
    """Every request the stand-in received for api, refused ones too."""
    status, obj = st.standin_get("/_control/requests?api=" + api)
    if status != 200:
        raise RuntimeError("stand-in /_control/requests answered %d" % status)
    return obj["requests"]


def log_eventually(st, needle, timeout=3.0):
    """The bridge's log once it holds needle (the request's line is written after the answer),
    or as it is after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        log = "\n".join(st.log_lines())
        if needle in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def spool_job(st, needle):
    """The queued outbox job (src/outbox.h's file format) whose text holds needle, or None."""
    qdir = os.path.join(st.dir, "spool", "queue")
    for name in sorted(os.listdir(qdir)) if os.path.isdir(qdir) else []:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(qdir, name)) as f:
                text = f.read()
        except OSError:
            continue
        if needle in text:
            return json.loads(text)
    return None


def find_lead(st, needle, api="leadpro"):
    """The stand-in's records of api whose raw body holds needle."""
    return [x for x in st.standin_leads(api) if needle in x.get("body", "")]


class LeadProCase(unittest.TestCase):
    config = None

    @classmethod
    def setUpClass(cls):
        # The shipped config requires the form token: post as a person's browser does.
        cls.st = Stack(cls.config, person=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def tearDown(self):
        self.st.standin_mode({"api": "all", "mode": "ok"})
        self.st._standin("POST", "/_control/id_shape", {"shape": "data"})

    def post(self, path, data, script=True, headers=None, referer=None):
        h = {"Origin": self.st.web, "User-Agent": "LeadProE2E/1.0"}
        if referer:
            h["Referer"] = referer
        h.update(headers or {})
        r = self.st.post(path, data, headers=h, script=script)
        self.assertNoSecret(r)
        return r

    def assertNoSecret(self, r):
        text = r.body.decode("utf-8", "replace") + json.dumps(r.headers)
        self.assertNotIn(API_KEY, text, r)

    def assertCreated(self, r, word_="created"):
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertIs(body.get("ok"), True, body)
        self.assertEqual(body.get("status"), word_, body)
        self.assertEqual(body.get("targets"), {"leadpro": word_}, body)
        self.assertIsInstance(body.get("lead", {}).get("ref"), str, body)
        return body

    def assertQueued(self, r, reason):
        """A transient upstream failure as README.md documents it since the outbox: 202
        "queued", and a reference to the queued job (not to a lead: there is none yet), for a
        step 2 to wait behind it. Never a 2xx "created"."""
        body = r.json()
        self.assertNotEqual(body.get("status"), "created", body)
        self.assertEqual(r.status, 202, r)
        self.assertIs(body.get("ok"), True, body)
        self.assertEqual(body.get("status"), "queued", body)
        # the page gets our word; the API's reason stays in the log and the job (issue 10)
        self.assertEqual(body["targets"]["leadpro"], "queued", body)
        self.assertNotIn(reason, json.dumps(body))
        self.assertIn(reason, log_eventually(self.st, reason))
        self.assertTrue(ref_parts(body["lead"]["ref"])[1].startswith("lbjob-"), body)
        return body

    def count_requests(self):
        return len(requests_for(self.st))

    def lead(self, t, **over):
        data = {"first_name": "Ada", "last_name": "F" + t, "email": "f.%s@example.com" % t,
                "phone": "07700 900789", "property_postcode": "DE1 1JX"}
        data.update(over)
        return {k: v for k, v in data.items() if v is not None}


class Sample(LeadProCase):
    """The shipped sample config and pages."""

    config = os.path.join(harness.srcdir(), "conf", "leadbridge.json")

    def contact(self, t, w, **over):
        data = {"name": "Marla %s" % w.capitalize(), "email": "marla.%s@example.com" % t,
                "phone": "07700 900123", "enquiry": "Buying",
                "property": "12 Example Street %s" % t, "property_postcode": "de1 1jx",
                "message": "Viewing please %s" % t, "consent": "yes"}
        data.update(over)
        return {k: v for k, v in data.items() if v is not None}

    def valuation_data(self, t, w, **over):
        data = {"name": "Ada %s" % w.capitalize(), "email": "ada.%s@example.com" % t,
                "phone": "07700 900456", "address": "1 %s Street, Derby DE1 1JX" % w.capitalize(),
                "bedrooms": "4", "property_type": "Detached", "purpose": "sell",
                "consent": "yes"}   # the sample valuation form requires consent (issue 10)
        data.update(over)
        return data

    def test_contact_create_with_utms_and_host(self):
        t, w = token(), word()
        page = self.st.web + "/contact.html"
        ref = page + "?utm_source=news%s&utm_medium=email&utm_campaign=spring%s" % (t, t)
        r = self.post("/lead/contact", self.contact(t, w), referer=ref)
        self.assertCreated(r)
        recs = find_lead(self.st, "marla.%s@example.com" % t)
        self.assertEqual(len(recs), 1, recs)
        rec = recs[0]
        self.assertEqual((rec["method"], rec["path"]), ("POST", LEADPRO + "/leads"))
        self.assertEqual(rec["headers"].get("x-api-key"), "***", rec["headers"])
        j = rec["json"]
        self.assertEqual(j["first_name"], "Marla")
        self.assertEqual(j["last_name"], w.capitalize())
        self.assertEqual(j["type"], "sale")
        self.assertEqual(j["advert_postcode"], "DE1 1JX")
        self.assertEqual(j["advert_address"], "12 Example Street %s" % t)
        self.assertEqual(j["message"], "Viewing please %s" % t)
        self.assertIs(j["gdpr_checkbox"], True)
        self.assertEqual(j["utm_source"], "news" + t)
        self.assertEqual(j["utm_medium"], "email")
        self.assertEqual(j["utm_campaign"], "spring" + t)
        self.assertEqual(j["host"], self.st.web)
        self.assertEqual(rec["ignored_fields"], [], rec)
        # the reference names this very lead
        target, lead_id, expiry = ref_parts(r.json()["lead"]["ref"])
        self.assertEqual((target, lead_id), ("leadpro", str(rec["id"])))
        self.assertAlmostEqual(expiry, time.time() + 86400, delta=120)

    def test_contact_selling_makes_a_vendor_lead_with_its_address(self):
        # A seller's own property is the lead's address and postcode (LeadPro refuses advert
        # fields on vendor leads and needs the postcode); without the postcode the visitor is
        # told under the input they can fix.
        t, w = token(), word()
        r = self.post("/lead/contact", self.contact(t, w, enquiry="Selling"))
        self.assertCreated(r)
        recs = find_lead(self.st, "marla.%s@example.com" % t)
        self.assertEqual(len(recs), 1, recs)
        j = recs[0]["json"]
        self.assertEqual(j["type"], "vendor")
        self.assertEqual((j.get("address"), j.get("postcode")),
                         ("12 Example Street %s" % t, "DE1 1JX"))
        self.assertNotIn("advert_address", j)
        self.assertNotIn("advert_postcode", j)
        t2 = token()
        r = self.post("/lead/contact", self.contact(t2, w, enquiry="Letting",
                                                    property_postcode=None))
        self.assertEqual(r.status, 422, r)
        errs = r.json()["error"]
        self.assertIn("property_postcode", json.dumps(errs), errs)
        self.assertEqual(find_lead(self.st, "marla.%s@example.com" % t2), [])

    def test_the_shipped_forms_require_the_form_token(self):
        # A bot that posts the form without the page's token learns nothing from the answer,
        # and the lead waits in quarantine for a person instead of reaching the API.
        t, w = token(), word()
        r = self.post("/lead/contact", dict(self.contact(t, w), lb_token=None))
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json().get("status"), "queued", r)
        self.assertEqual(find_lead(self.st, "marla.%s@example.com" % t), [])
        p = self.st.run_bin(["-c", self.st.config, "queue", "spam", "list", "--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        spam = [x for x in json.loads(p.stdout) if x.get("form") == "contact"]
        self.assertTrue(any("token" in json.dumps(x) for x in spam), spam)

    def test_contact_plain_post_redirects_to_thanks(self):
        t, w = token(), word()
        r = self.post("/lead/contact", self.contact(t, w), script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/thanks.html?"), loc)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertEqual(q["status"], ["created"])
        self.assertNotIn(t, urllib.parse.unquote(loc))
        self.assertNotIn(w, urllib.parse.unquote(loc).lower())
        self.assertEqual(len(find_lead(self.st, t)), 1)

    def test_valuation_numbers_for_script_client(self):
        t, w = token(), word()
        r = self.post("/lead/valuation", self.valuation_data(t, w))
        body = self.assertCreated(r)
        rec = find_lead(self.st, "ada.%s@example.com" % t)[0]
        self.assertEqual(rec["path"], LEADPRO + "/leads/valuation")
        self.assertEqual(rec["json"]["type"], "vendor")
        self.assertEqual(rec["json"]["postcode"], "DE1 1JX")
        self.assertEqual(rec["json"]["property_bedrooms"], 4)
        self.assertEqual(rec["json"]["property_type"], "detached")
        v = rec["valuation"]
        self.assertEqual(body["valuation"], {
            "status": "Success",
            "sale": {"min": v["minimum_sale_estimation"], "avg": v["average_sale_estimation"],
                     "max": v["maximum_sale_estimation"]},
            "rent": {"min": v["minimum_rent_estimation"], "avg": v["average_rent_estimation"],
                     "max": v["maximum_rent_estimation"]}})

    def test_repeat_after_a_queued_valuation_is_delivered_answers_the_numbers(self):
        """Step 1 while LeadPro is down is answered 202 "queued"; the outbox delivers it soon
        after. Trying again (the same form, within the duplicate window) is answered from what
        happened since: created, with the estimate and a reference, not the stale "queued"."""
        t, w = token(), word()
        self.st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        data = self.valuation_data(t, w)
        r = self.post("/lead/valuation", data)
        self.assertEqual(r.status, 202, r)
        deadline = time.monotonic() + 20
        while not find_lead(self.st, "ada.%s@example.com" % t) and time.monotonic() < deadline:
            time.sleep(0.2)
        recs = find_lead(self.st, "ada.%s@example.com" % t)
        self.assertEqual(len(recs), 1, "the queued valuation was not delivered within 20 s")
        deadline = time.monotonic() + 10
        while True:     # the done record is filed right after the delivery
            r = self.post("/lead/valuation", data)
            if r.status != 202 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        body = self.assertCreated(r)
        v = recs[0]["valuation"]
        self.assertEqual(body["valuation"]["sale"]["avg"], v["average_sale_estimation"], body)
        self.assertEqual(len(find_lead(self.st, "ada.%s@example.com" % t)), 1,
                         "the repeat made a second lead")

    def test_valuation_plain_post_numbers_on_page_then_step_two_updates_same_lead(self):
        t, w = token(), word()
        r = self.post("/lead/valuation", self.valuation_data(t, w, bedrooms="2"), script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/valuation-result.html?"), loc)
        self.assertNotIn(t, urllib.parse.unquote(loc))
        self.assertNotIn("ada.", urllib.parse.unquote(loc))
        rec = find_lead(self.st, "ada.%s@example.com" % t)[0]
        v = rec["valuation"]
        q = {k: vs[0] for k, vs in urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query).items()}
        want = {"status": "created", "valuation": "Success",
                "sale_min": v["minimum_sale_estimation"], "sale_avg": v["average_sale_estimation"],
                "sale_max": v["maximum_sale_estimation"], "rent_min": v["minimum_rent_estimation"],
                "rent_avg": v["average_rent_estimation"], "rent_max": v["maximum_rent_estimation"]}
        self.assertEqual({k: q.get(k) for k in want}, {k: str(x) for k, x in want.items()})
        self.assertEqual(ref_parts(q["lb_ref"])[:2], ("leadpro", str(rec["id"])))

        # the page, through nginx SSI, prints the numbers (formatted: issue 10) and the reference
        page = self.st.request("GET", loc[len(self.st.web):])
        self.assertEqual(page.status, 200, page)
        html = page.body.decode()
        for block in ("sale", "rent"):
            nums = re.findall("<dd>\u00a3([0-9,]+)</dd>",
                              html.split('id="%s"' % block, 1)[1].split("</dl>")[0])
            self.assertEqual(nums, ["{:,}".format(int(q[block + k])) for k in ("_min", "_avg", "_max")])
        self.assertNotIn('id="no-estimate"', html)
        hidden = re.search(r'name="lb_ref" value="([^"]*)"', html)
        self.assertEqual(hidden.group(1), q["lb_ref"])

        # step two, as the page's own form posts it: lands on the SAME lead
        step2 = {"lb_ref": hidden.group(1), "appointment": "Weekend %s" % t,
                 "answers[When are you hoping to move?]": "Within 3 months",
                 "message": "Gate code %s" % t}
        before = len(self.st.standin_leads("leadpro"))
        r2 = self.post("/lead/valuation/details", step2, script=False)
        self.assertEqual(r2.status, 303, r2)
        self.assertTrue(r2.header("location").startswith(self.st.web + "/thanks.html"), r2)
        self.assertEqual(len(self.st.standin_leads("leadpro")), before)
        rec = [x for x in self.st.standin_leads("leadpro") if x["id"] == rec["id"]][0]
        self.assertEqual(len(rec["updates"]), 1, rec)
        upd = update_json(rec["updates"][0])
        self.assertEqual(upd["meta"], {"Preferred appointment": "Weekend %s" % t,
                                       "Message": "Gate code %s" % t})
        self.assertEqual(upd["questionnaire"],
                         [["When are you hoping to move?", "Within 3 months"]])
        self.assertEqual(rec["state"]["meta"]["Preferred appointment"], "Weekend %s" % t)
        self.assertEqual(rec["state"]["email"], "ada.%s@example.com" % t)
        patches = [x for x in requests_for(self.st) if x["method"] == "PATCH" and t in x["body"]]
        self.assertEqual([x["path"] for x in patches], [LEADPRO + "/leads/%d" % rec["id"]])

    def test_step_two_after_a_queued_step_one_waits_behind_it_across_a_restart(self):
        """LeadPro is down at step 1 (202 queued): the answer still carries a reference. Step 2
        with it is accepted (202) and waits in the outbox behind the create, across a restart
        of the bridge, and is applied to the lead id the create gets once LeadPro is back."""
        t, w = token(), word()
        st = self.st
        st.standin_mode({"api": "leadpro", "mode": "unavailable"})
        r = self.post("/lead/valuation", self.valuation_data(t, w))
        self.assertEqual(r.status, 202, r)
        ref = r.json()["lead"]["ref"]
        self.assertTrue(ref_parts(ref)[1].startswith("lbjob-"), ref_parts(ref))
        r2 = self.post("/lead/valuation/details", {"lb_ref": ref, "appointment": "Noon " + t})
        self.assertEqual(r2.status, 202, r2)
        self.assertEqual(r2.json()["status"], "queued", r2.json())
        self.assertEqual(find_lead(st, "ada.%s@example.com" % t), [])
        # a restart: both jobs are on disk, the update still behind the create
        p = st.procs["bridge"]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        st._spawn("bridge", [st.bin, "-c", st.config, "-s", st.fcgi_addr, "-t", str(st.threads)],
                  env=st.bridge_env())
        st.bridge_rc = None
        st._wait_accepting("bridge", st.fcgi_addr)
        st.standin_mode({"api": "leadpro", "mode": "ok"})
        deadline = time.monotonic() + 40
        rec = None
        while time.monotonic() < deadline:
            recs = find_lead(st, "ada.%s@example.com" % t)
            if recs and recs[0]["updates"]:
                rec = recs[0]
                break
            time.sleep(0.3)
        self.assertIsNotNone(rec, "the queued create and its update were not both delivered")
        self.assertEqual(len(find_lead(st, "ada.%s@example.com" % t)), 1)
        patches = [x for x in requests_for(st) if x["method"] == "PATCH" and t in x["body"]]
        self.assertEqual([x["path"] for x in patches], [LEADPRO + "/leads/%d" % rec["id"]])
        self.assertEqual(update_json(rec["updates"][0])["meta"].get("Preferred appointment"),
                         "Noon " + t)

    def test_step_two_script_client(self):
        t, w = token(), word()
        ref = self.assertCreated(self.post("/lead/valuation", self.valuation_data(t, w)))
        ref = ref["lead"]["ref"]
        lead_id = int(ref_parts(ref)[1])
        r = self.post("/lead/valuation/details", {"lb_ref": ref, "appointment": "Eve " + t})
        self.assertCreated(r, "updated")
        rec = [x for x in self.st.standin_leads("leadpro") if x["id"] == lead_id][0]
        self.assertIn(t, rec["email"] if "email" in rec else rec["state"]["email"])
        self.assertEqual(update_json(rec["updates"][-1])["meta"],
                         {"Preferred appointment": "Eve " + t})

    def test_tampered_and_expired_references_never_reach_the_api(self):
        t, w = token(), word()
        ref = self.assertCreated(self.post("/lead/valuation", self.valuation_data(t, w)))
        ref = ref["lead"]["ref"]
        target, lead_id, expiry = ref_parts(ref)
        payload, mac = ref.split(".")
        flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
        other_id = b64url(("leadpro\n%d\n%d" % (int(lead_id) + 1, expiry)).encode())
        bad = {
            "tampered signature": (payload + "." + flipped, 403, "forbidden"),
            "other lead, same signature": (other_id + "." + mac, 403, "forbidden"),
            "wrong secret": (sign_ref("leadpro", lead_id, expiry, "another-secret-0123456789"),
                             403, "forbidden"),
            "garbage": ("not-a-ref", 403, "forbidden"),
            "other target": (sign_ref("lofty", lead_id, expiry), 403, "forbidden"),
            "expired": (sign_ref("leadpro", lead_id, int(time.time()) - 5), 410, "gone"),
        }
        before = self.count_requests()
        for name, (bad_ref, status, code) in bad.items():
            with self.subTest(name):
                r = self.post("/lead/valuation/details",
                              {"lb_ref": bad_ref, "appointment": "Never " + t})
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.json()["error"]["code"], code, r)
        # a plain post with an expired reference goes back to the page with the code only
        r = self.post("/lead/valuation/details",
                      {"lb_ref": bad["expired"][0], "appointment": "Never " + t}, script=False)
        self.assertEqual(r.status, 303, r)
        self.assertIn("error=gone", r.header("location"))
        self.assertEqual(self.count_requests(), before)
        self.assertNotIn(t, json.dumps(requests_for(self.st)).replace(
            "ada.%s@example.com" % t, ""))
        # and the valid one still works (the checks above were about the reference alone)
        self.assertCreated(self.post("/lead/valuation/details",
                                     {"lb_ref": ref, "appointment": "Fine"}), "updated")

    def test_local_validation_sale_without_advert_fields(self):
        t, w = token(), word()
        before = self.count_requests()
        r = self.post("/lead/contact", self.contact(t, w, property=None, property_postcode=None))
        self.assertEqual(r.status, 422, r)
        err = r.json()["error"]
        self.assertEqual(err["code"], "invalid_fields")
        self.assertIn("advert_postcode", err["fields"])
        self.assertEqual(self.count_requests(), before)

    def test_local_validation_long_first_name(self):
        t = token()
        before = self.count_requests()
        r = self.post("/lead/contact", self.contact(t, "x", name="A" * 51 + " Smith"))
        self.assertEqual(r.status, 422, r)
        self.assertEqual(list(r.json()["error"]["fields"]), ["first_name"])
        ok = self.post("/lead/contact", self.contact(t, "x", name="A" * 50 + " Smith"))
        self.assertCreated(ok)
        self.assertEqual(self.count_requests(), before + 1)

    def test_valuation_failed_said_plainly(self):
        t, w = token(), word()
        self.st.standin_mode({"api": "leadpro", "mode": "valuation_failed", "count": 2})
        r = self.post("/lead/valuation", self.valuation_data(t, w))
        body = self.assertCreated(r)
        val = body["valuation"]
        self.assertNotIn("sale", val)
        self.assertNotIn("rent", val)
        self.assertNotEqual(val.get("status"), "Success", val)
        self.assertTrue(val.get("status"), val)
        self.assertNotIn(": 0", json.dumps(val))
        r = self.post("/lead/valuation", self.valuation_data(t + "b", w), script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertNotEqual(q.get("valuation"), ["Success"], loc)
        self.assertFalse([k for k in q if k.startswith(("sale_", "rent_"))], loc)
        html = self.st.request("GET", loc[len(self.st.web):]).body.decode()
        self.assertIn('id="no-estimate"', html)
        self.assertNotIn('id="sale"', html)
        self.assertNotIn('id="rent"', html)


class Failures(LeadProCase):
    """conf/leadpro.json: upstream failure classes (queued by the outbox), API refusals."""

    config = "leadpro.json"

    def create_failing(self, mode, reason, **mode_args):
        # No count: every request fails until tearDown, so libcurl's own retry of a request on a
        # kept-alive connection that died (mode "close") meets the failure too.
        t = token()
        self.st.standin_mode(dict({"api": "leadpro", "mode": mode}, **mode_args))
        start = time.monotonic()
        r = self.post("/lead/create", self.lead(t))
        elapsed = time.monotonic() - start
        body = self.assertQueued(r, reason)
        self.assertEqual(find_lead(self.st, t), [])
        tried = [x for x in requests_for(self.st) if t in (x["body"] or "")]
        self.assertGreaterEqual(len(tried), 1)
        return t, body, elapsed

    def test_error500_is_queued(self):
        self.create_failing("error500", "HTTP 500")

    def test_unavailable_is_queued(self):
        self.create_failing("unavailable", "HTTP 503")

    def test_ratelimit_is_queued_and_retry_after_honoured(self):
        t, _, _ = self.create_failing("ratelimit", "HTTP 429", retry_after=7)
        job = spool_job(self.st, t)
        self.assertIsNotNone(job, "no queued job holds this lead")
        target = job["targets"]["leadpro"]
        self.assertEqual(target["status"], "pending", job)
        self.assertEqual(target.get("last_status"), 429, job)
        self.assertEqual(target.get("retry_after"), 7, job)
        self.assertGreaterEqual(job["next_attempt"], job["created"] + 7, job)

    def test_slow_beyond_timeout_is_queued(self):
        _, _, elapsed = self.create_failing("slow", "timed out", delay=3)
        self.assertLess(elapsed, 2.9)

    def test_hang_is_queued(self):
        _, _, elapsed = self.create_failing("hang", "timed out")
        self.assertLess(elapsed, 2.9)
        self.st.standin_reset()     # releases the hung request

    def test_close_is_queued(self):
        self.create_failing("close", "closed the connection without answering")

    def test_queued_lead_is_delivered_later_with_the_same_submission_id(self):
        # conf/leadpro.json retries after 1 s
        t, _, _ = self.create_failing("error500", "HTTP 500")
        first = [x for x in requests_for(self.st) if t in (x["body"] or "")][0]
        sid = json.loads(first["body"])["meta"]["leadbridge_id"]
        self.st.standin_mode({"api": "leadpro", "mode": "ok"})
        deadline = time.monotonic() + 15
        while not find_lead(self.st, t) and time.monotonic() < deadline:
            time.sleep(0.2)
        recs = find_lead(self.st, t)
        self.assertEqual(len(recs), 1, "the queued lead was not delivered within 15 s")
        self.assertEqual(recs[0]["json"]["meta"]["leadbridge_id"], sid)
        self.assertEqual(recs[0]["json"]["last_name"], "F" + t)

    def test_slow_within_timeout_is_created(self):
        t = token()
        self.st.standin_mode({"api": "leadpro", "mode": "slow", "delay": 0.3, "count": 1})
        self.assertCreated(self.post("/lead/create", self.lead(t)))
        self.assertEqual(len(find_lead(self.st, t)), 1)

    def test_api_refusal_is_422_with_reason_and_no_secret(self):
        t = token()
        r = self.post("/lead/create", self.lead(t, office="99"))
        self.assertEqual(r.status, 422, r)
        body = r.json()
        self.assertEqual(body["error"]["code"], "rejected", body)
        self.assertNotIn("office id is invalid", json.dumps(body))    # our words to the page
        self.assertEqual(body["targets"]["leadpro"], "failed", body)
        self.assertIn("office id is invalid", log_eventually(self.st, "office id is invalid"))
        refused = [x for x in requests_for(self.st) if t in x["body"]]
        self.assertEqual([x["status"] for x in refused], [422])
        self.assertEqual(find_lead(self.st, t), [])
        # a plain post goes back to the form's error page with the code, nothing personal
        r = self.post("/lead/create", self.lead(t, office="99"), script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/contact.html?"), loc)
        self.assertIn("error=rejected", loc)
        self.assertNotIn(t, loc)

    def test_unknown_lead_update_is_refused_by_api(self):
        t = token()
        ref = sign_ref("leadpro", "424242", int(time.time()) + 600)
        r = self.post("/lead/update", {"lb_ref": ref, "note": "n" + t})
        self.assertEqual(r.status, 422, r)
        self.assertEqual(r.json()["error"]["code"], "rejected")
        self.assertIn("not found", log_eventually(self.st, "not found").lower())
        patches = [x for x in requests_for(self.st) if t in x["body"]]
        self.assertEqual([(x["method"], x["path"], x["status"]) for x in patches],
                         [("PATCH", LEADPRO + "/leads/424242", 404)])

    def test_long_first_name_refused_by_target_validation(self):
        # no max_length rule in this form: the LeadPro target's own check refuses it
        t = token()
        before = self.count_requests()
        r = self.post("/lead/create", self.lead(t, first_name="B" * 51))
        self.assertEqual(r.status, 422, r)
        self.assertEqual(r.json()["error"]["code"], "invalid_fields")
        self.assertEqual(list(r.json()["error"]["fields"]), ["first_name"])
        r = self.post("/lead/create", self.lead(t, enquiry="Selling", property_postcode=None))
        self.assertEqual(r.status, 422, r)
        self.assertIn("postcode", r.json()["error"]["fields"])
        self.assertEqual(self.count_requests(), before)

    def test_server_to_server_update_with_shared_secret(self):
        t = token()
        self.assertCreated(self.post("/lead/create", self.lead(t)))
        lead_id = find_lead(self.st, t)[0]["id"]
        before = self.count_requests()
        bad = self.post("/lead/update", {"lb_lead_id": str(lead_id), "note": "x" + t},
                        headers={"Authorization": "Bearer wrong-secret"})
        self.assertEqual(bad.status, 403, bad)
        self.assertEqual(self.count_requests(), before)
        ok = self.post("/lead/update", {"lb_lead_id": str(lead_id), "note": "s2s" + t},
                       headers={"Authorization": "Bearer " + harness.TEST_SECRET})
        self.assertCreated(ok, "updated")
        rec = find_lead(self.st, t)[0]
        self.assertEqual(update_json(rec["updates"][-1])["meta"], {"Note": "s2s" + t})

    def test_bridge_log_holds_no_key_and_no_personal_data(self):
        t = token()
        self.st.standin_mode({"api": "leadpro", "mode": "error500", "count": 1})
        self.post("/lead/create", self.lead(t))
        self.post("/lead/create", self.lead(t, office="99"))
        self.post("/lead/create", self.lead(t))
        log = "\n".join(self.st.log_lines())
        self.assertNotIn(API_KEY, log)
        self.assertNotIn(t, log)
        self.assertNotIn("f.%s@example.com" % t, log)



class IdShapes(LeadProCase):
    """Every documented LeadPro id shape through create → reference → PATCH, on a stack of its
    own (no queued retries from failure tests can take the stand-in's first id)."""

    config = "leadpro.json"

    def check_shape(self, shape, first_id=None):
        t = token()
        self.st.standin_reset()
        status, _ = self.st._standin("POST", "/_control/id_shape", {"shape": shape})
        self.assertEqual(status, 200)
        body = self.assertCreated(self.post("/lead/create", self.lead(t)))
        rec = find_lead(self.st, t)[0]
        if first_id is not None:
            self.assertEqual(rec["id"], first_id)
        self.assertEqual(ref_parts(body["lead"]["ref"])[:2], ("leadpro", str(rec["id"])))
        r = self.post("/lead/update", {"lb_ref": body["lead"]["ref"], "note": "u" + t,
                                       "answers[Beds?]": "3"})
        self.assertCreated(r, "updated")
        patches = [x for x in requests_for(self.st) if x["method"] == "PATCH"]
        self.assertEqual([(x["path"], x["status"]) for x in patches],
                         [(LEADPRO + "/leads/%d" % rec["id"], 200)])
        rec = find_lead(self.st, t)[0]
        self.assertEqual(update_json(rec["updates"][0]),
                         {"meta": {"Note": "u" + t}, "questionnaire": [["Beds?", "3"]]})

    def test_id_shape_data(self):
        self.check_shape("data")

    def test_id_shape_top(self):
        self.check_shape("top")

    def test_id_shape_string(self):
        self.check_shape("string")

    def test_id_shape_big_exact(self):
        self.check_shape("big", BIG_ID)


if __name__ == "__main__":
    unittest.main()
