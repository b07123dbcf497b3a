"""test_targets.py: Leadping, Lofty, the signed webhook and fan-out end to end (issue 5).

conf/targets.json points the same rules at Leadping (source key and bearer auth), Lofty (token
and bearer auth; attribution as tags and as custom attributes), a Standard Webhooks target and
one form that delivers to LeadPro + Leadping + Lofty + webhook. Each test posts through nginx and
checks what the stand-in recorded: the mapping, the auth header used, the stable submission id,
Lofty's exact 64-bit leadId through the reference into a PUT, the webhook signature (the
stand-in only records correctly signed deliveries), the per-target outcomes and local refusals.

Transient failures are answered 202 "queued" (the outbox keeps them), never "created".

Helpers added here (not in harness.py): ref_parts() reads a lead reference's target and id;
requests_for() reads the stand-in's /_control/requests record; spool_job() a queued job.
"""

import base64
import json
import os
import random
import re
import string
import time
import unittest
import urllib.parse
import uuid

from harness import Stack

BIG_ID = 9007199254740993      # 2^53 + 1: the stand-in Lofty's first id; a double would break it
SECRETS = ("test-leadpro-key", "test-source-key", "lp_src_test", "test-lofty-key",
           "test-lofty-oauth", "whsec_dGVzdC13ZWJob29rLXNlY3JldC0zMi1ieXRlcyEhISE=")


def token():
    return uuid.uuid4().hex[:10]


def word():
    return "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def ref_parts(ref):
    """(target, lead id, expiry) of a lead reference (signature not checked)."""
    payload = ref.split(".")[0]
    target, lead_id, expiry = base64.urlsafe_b64decode(
        payload + "=" * (-len(payload) % 4)).decode().split("\n")
    return target, lead_id, int(expiry)


def spool_job(st, needle):
    """The queued outbox job (file format in src/outbox.h) whose text holds needle."""
    qdir = os.path.join(st.dir, "spool", "queue")
    for name in sorted(os.listdir(qdir)) if os.path.isdir(qdir) else []:
        if name.endswith(".json"):
            with open(os.path.join(qdir, name)) as f:
                text = f.read()
            if needle in text:
                return json.loads(text)
    raise AssertionError("no queued job holds %r" % needle)


def requests_for(st, api):
    status, obj = st.standin_get("/_control/requests?api=" + api)
    if status != 200:
        raise RuntimeError("stand-in /_control/requests answered %d" % status)
    return obj["requests"]


class TargetsBase(unittest.TestCase):
    """One stack with conf/targets.json per class; helpers, no tests."""

    @classmethod
    def setUpClass(cls):
        cls.st = Stack("targets.json").start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def tearDown(self):
        self.st.standin_mode({"api": "all", "mode": "ok"})

    # -- helpers -------------------------------------------------------------------------------

    def data(self, t, w, **over):
        d = {"name": "Marla %s" % w.capitalize(), "email": "Marla.%s@Example.com" % t,
             "phone": "07700 900123", "enquiry": "Selling", "street": "1 High St %s" % t,
             "town": "Derby", "zip": "de11jx", "message": "Call after six %s" % t, "beds": "3",
             "colour": "blue-%s" % t}
        d.update(over)
        return {k: v for k, v in d.items() if v is not None}

    def referer(self, t):
        return (self.st.web + "/contact.html?utm_source=src%s&utm_campaign=camp%s&gclid=GC%s"
                % (t, t, t))

    def post(self, path, data, t=None, script=True):
        h = {"Origin": self.st.web}
        if t is not None:
            h["Referer"] = self.referer(t)
        r = self.st.post(path, data, headers=h, script=script)
        text = r.body.decode("utf-8", "replace") + json.dumps(r.headers)
        for s in SECRETS:
            self.assertNotIn(s, text)
        return r

    def created(self, r, targets):
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertIs(body.get("ok"), True, body)
        self.assertEqual(body.get("targets"), {n: "created" for n in targets}, body)
        return body

    def assertQueued(self, r, target, reason):
        """202 "queued" as README.md documents a transient failure; never "created"."""
        body = r.json()
        self.assertNotEqual(body.get("status"), "created", body)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(body.get("status"), "queued", body)
        # our word to the page; the API's reason is kept in the job (leadbridge queue show)
        self.assertEqual(body["targets"][target], "queued", body)
        self.assertNotIn(reason, json.dumps(body))
        errors = [v.get("last_error", "") for v in self.queued_job(r)["targets"].values()]
        self.assertTrue(any(reason in e for e in errors), errors)
        return body

    def queued_job(self, r):
        """The newest queued job in the spool (the one r was answered for)."""
        qdir = os.path.join(self.st.dir, "spool", "queue")
        names = [n for n in os.listdir(qdir) if n.endswith(".json")]
        names.sort(key=lambda n: os.path.getmtime(os.path.join(qdir, n)))
        with open(os.path.join(qdir, names[-1])) as f:
            return json.load(f)

    def record(self, api, needle):
        recs = [x for x in self.st.standin_leads(api) if needle in x.get("body", "")]
        self.assertEqual(len(recs), 1, "%s records holding %s: %r" % (api, needle, recs))
        return recs[0]

    def none_for(self, api, needle):
        self.assertEqual([x for x in self.st.standin_leads(api) if needle in x.get("body", "")],
                         [])
        self.assertEqual([x for x in requests_for(self.st, api) if needle in (x["body"] or "")],
                         [])



class Targets(TargetsBase):
    """Each target on its own, and the fan-out form."""

    # -- Leadping ------------------------------------------------------------------------------

    def check_leadping(self, path, target, t, w):
        r = self.post(path, self.data(t, w), t)
        body = self.created(r, [target])
        rec = self.record("leadping", t)
        self.assertEqual(rec["path"], "/leadping/leads/intake")
        j = rec["json"]
        ext = j.pop("externalId")
        self.assertRegex(ext, r"^[0-9a-f]{32}$")
        page = self.st.web + "/contact.html"
        self.assertEqual(j, {
            "firstName": "Marla", "lastName": w.capitalize(),
            "email": "marla.%s@example.com" % t, "phone": "07700 900123",
            "address1": "1 High St %s" % t, "city": "Derby", "zip": "DE1 1JX",
            "postalCode": "DE1 1JX", "utmSource": "src" + t, "utmCampaign": "camp" + t,
            "landingPage": page,
            "sourceMetadata": {"host": self.st.web, "gclid": "GC" + t, "type": "vendor",
                               "message": "Call after six %s" % t,
                               "meta.colour": "blue-%s" % t}})
        for k, v in j["sourceMetadata"].items():
            self.assertIsInstance(v, str, k)
        self.assertEqual(ref_parts(body["lead"]["ref"])[:2], (target, rec["id"]))
        return rec, ext

    def test_leadping_source_key(self):
        t, w = token(), word()
        rec, _ = self.check_leadping("/lead/to/leadping", "leadping", t, w)
        self.assertEqual(rec["headers"].get("x-leadping-source-id"), "test-source")
        self.assertEqual(rec["headers"].get("x-leadping-source-key"), "***")
        self.assertNotIn("authorization", rec["headers"])

    def test_leadping_bearer(self):
        t, w = token(), word()
        rec, _ = self.check_leadping("/lead/to/leadping-bearer", "leadping_bearer", t, w)
        self.assertEqual(rec["headers"].get("authorization"), "Bearer ***")
        self.assertNotIn("x-leadping-source-key", rec["headers"])

    def test_leadping_external_id_differs_per_submission(self):
        t1, t2 = token(), token()
        _, e1 = self.check_leadping("/lead/to/leadping", "leadping", t1, word())
        _, e2 = self.check_leadping("/lead/to/leadping", "leadping", t2, word())
        self.assertNotEqual(e1, e2)

    def test_leadping_ratelimit_is_queued_after_retry_after(self):
        t = token()
        self.st.standin_mode({"api": "leadping", "mode": "ratelimit", "retry_after": 9})
        r = self.post("/lead/to/leadping", self.data(t, word()), t)
        self.assertQueued(r, "leadping", "Too Many")
        job = spool_job(self.st, t)["targets"]["leadping"]
        self.assertEqual((job["last_status"], job["retry_after"]), (429, 9), job)
        self.assertEqual([x for x in self.st.standin_leads("leadping") if t in x["body"]], [])

    # -- Lofty ---------------------------------------------------------------------------------

    def test_lofty_token_mapping(self):
        t, w = token(), word()
        body = self.created(self.post("/lead/to/lofty", self.data(t, w), t), ["lofty"])
        rec = self.record("lofty", t)
        self.assertEqual(rec["path"], "/lofty/v1.0/leads")
        self.assertEqual(rec["headers"].get("authorization"), "token ***")
        j = rec["json"]
        content = j.pop("content")
        # in tags mode the values too long for a 64-character tag travel whole in the note
        m = re.fullmatch(r"Call after six %s\n\ngclid: GC%s\nlanding_page: %s/contact.html\n"
                         r"leadbridge id: ([0-9a-f]{32})"
                         % (t, t, re.escape(self.st.web)), content)
        self.assertIsNotNone(m, content)
        # the static tag first, then attribution tags
        tags = j.pop("tags")
        self.assertEqual(tags[0], "Website")
        for tag in ("utm_source:src" + t, "utm_campaign:camp" + t,
                    "host:" + self.st.web[len("http://"):]):
            self.assertIn(tag, tags)
        self.assertEqual(j, {
            "firstName": "Marla", "lastName": w.capitalize(),
            "emails": ["marla.%s@example.com" % t], "phones": ["07700 900123"],
            "leadTypes": [1], "source": "Example Estates site",
            "property": {"streetAddress": "1 High St %s" % t, "zipCode": "DE1 1JX",
                         "city": "Derby", "bedrooms": 3}})
        target, lead_id, _ = ref_parts(body["lead"]["ref"])
        self.assertEqual((target, lead_id), ("lofty", str(rec["id"])))
        self.assertGreaterEqual(rec["id"], BIG_ID)

    def test_lofty_lead_types_from_type(self):
        want = {"Buying": 2, "Renting": 5, "Selling": 1, "Letting": 9, "Mortgage": -1}
        for enquiry, lead_type in want.items():
            with self.subTest(enquiry):
                t = token()
                self.created(self.post("/lead/to/lofty", self.data(t, word(), enquiry=enquiry)),
                             ["lofty"])
                self.assertEqual(self.record("lofty", t)["json"]["leadTypes"], [lead_type])

    def test_lofty_bearer_custom_attributes(self):
        t, w = token(), word()
        self.created(self.post("/lead/to/lofty-bearer", self.data(t, w), t), ["lofty_bearer"])
        rec = self.record("lofty", t)
        self.assertEqual(rec["headers"].get("authorization"), "Bearer ***")
        j = rec["json"]
        self.assertEqual(j["source"], "leadbridge")
        self.assertNotIn("tags", j)
        attrs = {a["attributeName"]: a["value"] for a in j["customAttributeList"]}
        self.assertTrue(all(a["attributeType"] == "text" for a in j["customAttributeList"]))
        self.assertEqual(attrs["utm_source"], "src" + t)
        self.assertEqual(attrs["utm_campaign"], "camp" + t)
        self.assertEqual(attrs["gclid"], "GC" + t)
        self.assertEqual(attrs["host"], self.st.web)
        self.assertIn("leadbridge id: %s" % attrs["leadbridge_id"], j["content"])

    def test_lofty_31_character_first_name_refused_locally(self):
        t = token()
        long_name = "A" * 31
        r = self.post("/lead/to/lofty", self.data(t, word(), name=long_name + " Smith"))
        self.assertEqual(r.status, 422, r)
        err = r.json()["error"]
        self.assertEqual(err["code"], "invalid_fields")
        self.assertEqual(list(err["fields"]), ["first_name"])
        self.none_for("lofty", t)
        ok = self.post("/lead/to/lofty", self.data(t, word(), name="A" * 30 + " Smith"))
        self.created(ok, ["lofty"])
        self.assertEqual(self.record("lofty", t)["json"]["firstName"], "A" * 30)

    def test_lofty_ratelimit_reset_becomes_retry_after(self):
        t = token()
        self.st.standin_mode({"api": "lofty", "mode": "ratelimit", "retry_after": 30})
        r = self.post("/lead/to/lofty", self.data(t, word()))
        self.assertQueued(r, "lofty", "TOO_MANY_REQUESTS")
        job = spool_job(self.st, t)["targets"]["lofty"]
        self.assertEqual(job["last_status"], 429, job)
        self.assertTrue(27 <= job["retry_after"] <= 31, job)     # from X-RateLimit-Reset

    # -- webhook -------------------------------------------------------------------------------

    def test_webhook_signed_delivery(self):
        t, w = token(), word()
        body = self.created(self.post("/lead/to/webhook", self.data(t, w), t), ["webhook"])
        rec = self.record("webhook", t)        # recorded only when the signature verified
        self.assertEqual(rec["path"], "/webhook/test")
        j = rec["json"]
        self.assertEqual(j["type"], "lead.created")
        self.assertRegex(j["submission_id"], r"^[0-9a-f]{32}$")
        self.assertEqual(rec["id"], "msg_" + j["submission_id"])
        self.assertRegex(rec["headers"]["webhook-timestamp"], r"^\d+$")
        self.assertLess(abs(int(rec["headers"]["webhook-timestamp"]) - time.time()), 60)
        lead = j["lead"]
        self.assertEqual(lead["first_name"], "Marla")
        self.assertEqual(lead["last_name"], w.capitalize())
        self.assertEqual(lead["email"], "marla.%s@example.com" % t)
        self.assertEqual(lead["postcode"], "DE1 1JX")
        self.assertEqual(lead["property_bedrooms"], 3)
        self.assertEqual(lead["meta"], {"colour": "blue-%s" % t})
        self.assertEqual(lead["utm_source"], "src" + t)
        self.assertEqual(ref_parts(body["lead"]["ref"])[:2], ("webhook", j["submission_id"]))
        hooks = [x for x in requests_for(self.st, "webhook") if t in (x["body"] or "")]
        self.assertEqual([x["status"] for x in hooks], [200])

    def test_webhook_wrong_secret_is_refused_by_receiver(self):
        t = token()
        r = self.post("/lead/to/webhook-wrong-secret", {"email": "w.%s@example.com" % t})
        self.assertEqual(r.status, 422, r)
        body = r.json()
        self.assertEqual(body["error"]["code"], "rejected")
        self.assertEqual(body["targets"]["webhook_wrong_secret"], "failed")   # our word
        self.assertNotIn("signature", json.dumps(body))
        hooks = [x for x in requests_for(self.st, "webhook") if t in (x["body"] or "")]
        self.assertEqual([x["status"] for x in hooks], [401])
        self.assertEqual([x for x in self.st.standin_leads("webhook") if t in x["body"]], [])

    # -- fan-out -------------------------------------------------------------------------------

    def test_fan_out_to_all_four(self):
        t, w = token(), word()
        r = self.post("/lead/to/all", self.data(t, w, enquiry="Buying"), t)
        body = self.created(r, ["leadpro", "leadping", "lofty", "webhook"])
        lp = self.record("leadpro", t)
        ping = self.record("leadping", t)
        lofty = self.record("lofty", t)
        hook = self.record("webhook", t)
        # one submission, one id everywhere
        sid = hook["json"]["submission_id"]
        self.assertEqual(lp["json"]["meta"]["leadbridge_id"], sid)
        self.assertEqual(ping["json"]["externalId"], sid)
        self.assertIn("leadbridge id: " + sid, lofty["json"]["content"])
        # the same rules, each API's own shape
        self.assertEqual(lp["json"]["type"], "sale")
        self.assertEqual(lp["json"]["advert_postcode"], "DE1 1JX")
        self.assertEqual(lp["json"]["utm_source"], "src" + t)
        self.assertEqual(ping["json"]["sourceMetadata"]["type"], "sale")
        self.assertEqual(lofty["json"]["leadTypes"], [2])
        self.assertEqual(lofty["json"]["emails"], ["marla.%s@example.com" % t])
        self.assertEqual(hook["json"]["lead"]["type"], "sale")
        refs = body["lead"]["refs"]
        self.assertEqual(sorted(refs), ["leadping", "leadpro", "lofty", "webhook"])
        self.assertEqual(body["lead"]["ref"], refs["leadpro"])
        self.assertEqual(ref_parts(refs["leadpro"])[1], str(lp["id"]))
        self.assertEqual(ref_parts(refs["leadping"])[1], ping["id"])
        self.assertEqual(ref_parts(refs["lofty"])[1], str(lofty["id"]))

    def test_fan_out_one_target_failing(self):
        t, w = token(), word()
        self.st.standin_mode({"api": "lofty", "mode": "error500"})
        r = self.post("/lead/to/all", self.data(t, w, enquiry="Buying"), t)
        self.assertEqual(r.status, 200, r)
        body = r.json()
        targets = body["targets"]
        self.assertEqual({k: v for k, v in targets.items() if k != "lofty"},
                         {"leadpro": "created", "leadping": "created", "webhook": "created"})
        self.assertEqual(targets["lofty"], "queued", targets)   # retried later
        self.assertIn("Server Error", spool_job(self.st, t)["targets"]["lofty"]["last_error"])
        self.assertNotIn("lofty", body["lead"].get("refs", {}))
        for api in ("leadpro", "leadping", "webhook"):
            self.record(api, t)
        self.assertEqual([x for x in self.st.standin_leads("lofty") if t in x["body"]], [])

    def test_fan_out_all_failing_is_queued_not_created(self):
        t, w = token(), word()
        self.st.standin_mode({"api": "all", "mode": "error500"})
        r = self.post("/lead/to/all", self.data(t, w, enquiry="Buying"), t)
        body = r.json()
        self.assertNotEqual(body.get("status"), "created", body)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(body["status"], "queued", body)
        self.assertEqual(sorted(body["targets"]), ["leadping", "leadpro", "lofty", "webhook"])
        for v in body["targets"].values():
            self.assertEqual(v, "queued", body)
        job = spool_job(self.st, t)
        self.assertEqual({k: v["status"] for k, v in job["targets"].items()},
                         {k: "pending" for k in ("leadpro", "leadping", "lofty", "webhook")})

    def test_fan_out_plain_post(self):
        t, w = token(), word()
        r = self.post("/lead/to/all", self.data(t, w, enquiry="Buying"), t, script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/thanks.html?"), loc)
        self.assertNotIn(t, urllib.parse.unquote(loc))
        for api in ("leadpro", "leadping", "lofty", "webhook"):
            self.record(api, t)

    def test_fan_out_long_first_name_refused_by_lofty_only(self):
        # one target's documented limit does not stop the others
        t = token()
        r = self.post("/lead/to/all", self.data(t, word(), enquiry="Buying",
                                                name="A" * 31 + " Smith"))
        self.assertEqual(r.status, 200, r)
        targets = r.json()["targets"]
        self.assertTrue(targets["lofty"].startswith("failed: invalid fields (first_name:"),
                        targets)
        for api in ("leadpro", "leadping", "webhook"):
            self.assertEqual(targets[api], "created", targets)
        self.none_for("lofty", t)

    def test_lofty_only_form_refuses_long_first_name_locally(self):
        t = token()
        r = self.post("/lead/to/lofty", self.data(t, word(), name="A" * 31 + " Smith"))
        self.assertEqual(r.status, 422, r)
        self.assertIn("first_name", r.json()["error"]["fields"])
        self.none_for("lofty", t)

    def test_bridge_log_holds_no_secrets_or_personal_data(self):
        t = token()
        self.post("/lead/to/all", self.data(t, word(), enquiry="Buying"), t)
        log = "\n".join(self.st.log_lines())
        for s in SECRETS + (t,):
            self.assertNotIn(s, log)



class LoftyBigId(TargetsBase):
    """A stack of its own, so this lead is the stand-in Lofty's first: id 2^53 + 1 exactly."""

    def test_lofty_update_reaches_exact_64bit_lead_id(self):
        t, w = token(), word()
        body = self.created(self.post("/lead/to/lofty", self.data(t, w), t), ["lofty"])
        rec = self.record("lofty", t)
        self.assertEqual(rec["id"], BIG_ID)
        ref = body["lead"]["ref"]
        self.assertEqual(ref_parts(ref)[:2], ("lofty", str(BIG_ID)))
        r = self.post("/lead/lofty/update", {"lb_ref": ref, "note": "Second visit %s" % t,
                                             "interests": "Garden, Garage"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["targets"], {"lofty": "updated"}, r.json())
        puts = [x for x in requests_for(self.st, "lofty") if x["method"] == "PUT"]
        self.assertEqual([(x["path"], x["status"]) for x in puts],
                         [("/lofty/v1.0/leads/%d" % BIG_ID, 200)])
        rec = self.record("lofty", "1 High St %s" % t)
        self.assertEqual(len(rec["updates"]), 1, rec)
        upd = dict(rec["updates"][0]["json"])
        self.assertRegex(upd.pop("content"),
                         r"^Second visit %s\n\nleadbridge id: [0-9a-f]{32}$" % t)
        self.assertEqual(upd, {"tagsAdd": ["Garden", "Garage"]})     # only what changed
        self.assertEqual(rec["state"]["tags"][:1], ["Website"])
        self.assertIn("Garden", rec["state"]["tags"])


if __name__ == "__main__":
    unittest.main()
