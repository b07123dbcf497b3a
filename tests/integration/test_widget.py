"""test_widget.py: the bridge's side of the visitor's widget (issue 10), end to end through nginx
with the shipped sample config (conf/leadbridge.json) and the stand-in LeadPro.

- per-field errors under the submitted inputs they came from ("inputs"), consent refused
  locally with its own message;
- without JavaScript: a rejected post is kept behind a random token (recall), the URL holds only
  the token, the code and field names; the page reads values and messages back as text;
- consent and marketing opt-in go with the lead (meta), with the time;
- every click id reaches the lead; first touch from the cookie; the site's own pages are no
  referrer;
- answers carry our words, not the API's; Referrer-Policy on answers carrying a lead reference;
- formatted numbers for the no-JavaScript result page; GET <form>/settings for the widget.
"""

import json
import os
import re
import stat
import time
import unittest
import urllib.parse
import uuid

from harness import Stack, srcdir

EMBED = "http://127.0.0.1:1"     # the cross-origin embed's origin in these tests (never dialled)
CLICK_IDS = ("gclid", "gbraid", "wbraid", "dclid", "fbclid", "msclkid", "ttclid", "li_fat_id",
             "twclid")


def token():
    return uuid.uuid4().hex[:10]


def valuation(t, **extra):
    d = {"purpose": "sell", "address": "12 Example Street %s, Derby" % t, "postcode": "DE1 1JX",
         "bedrooms": "3", "property_type": "Detached", "name": "Marla Singer%s" % t,
         "email": "marla.%s@example.com" % t, "phone": "07986 000000", "consent": "yes"}
    d.update(extra)
    return {k: v for k, v in d.items() if v is not None}


class WidgetBridge(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.st = Stack(os.path.join(srcdir(), "conf", "leadbridge.json"),
                       extra_env={"LEADBRIDGE_EMBED_SITE": EMBED}, person=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def setUp(self):
        self.st.standin_reset()

    def leads(self, t):
        return [x for x in self.st.standin_leads("leadpro") if t in (x.get("body") or "")]

    def origin(self):
        return {"Origin": self.st.web, "Referer": self.st.web + "/valuation.html"}

    # -- errors a person can fix -----------------------------------------------------------------

    def test_errors_are_reported_under_the_inputs_they_came_from(self):
        t = token()
        r = self.st.post("/lead/valuation", valuation(t, name="Marla", email="nope",
                                                      consent=None), headers=self.origin())
        self.assertEqual(r.status, 422, r)
        err = r.json()["error"]
        self.assertEqual(err["code"], "invalid_fields")
        # canonical names stay for API clients; inputs name the boxes the visitor filled in
        self.assertIn("last_name", err["fields"])
        self.assertEqual(set(err["inputs"]), {"name", "email", "consent"}, err)
        self.assertEqual(err["inputs"]["name"], "please give your full name")
        self.assertIn("privacy policy", err["inputs"]["consent"])
        self.assertEqual(self.leads(t), [])

    def test_without_javascript_a_rejected_post_is_recalled_behind_a_token(self):
        t = token()
        r = self.st.post("/lead/valuation", valuation(t, email="not-an-email" + t),
                         headers=self.origin(), script=False)
        self.assertEqual(r.status, 303, r)
        self.assertEqual(r.header("referrer-policy"), "same-origin")
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/valuation.html?"), loc)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertEqual(q["error"], ["invalid_fields"])
        self.assertEqual(q["fields"], ["email"])
        tok = q["lb_error"][0]
        self.assertRegex(tok, r"^[0-9a-f]{32}$")
        self.assertNotIn(t, loc)
        # the record is private to the bridge
        path = os.path.join(self.st.dir, "spool", "recall", tok + ".json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        base = "/lead/valuation/recall?t=" + tok
        for name, want in (("address", "12 Example Street %s, Derby" % t),
                           ("email", "not-an-email" + t), ("name", "Marla Singer" + t)):
            got = self.st.request("GET", base + "&v=" + name)
            self.assertEqual(got.status, 200, got)
            self.assertEqual(got.body.decode(), want)
            self.assertTrue(got.header("content-type").startswith("text/plain"))
        self.assertEqual(self.st.request("GET", base + "&e=email").body.decode(),
                         "not a valid email address")
        self.assertEqual(self.st.request("GET", base + "&e=address").body.decode(), "")
        # unknown, malformed, another form's, expired: nothing
        self.assertEqual(self.st.request("GET", "/lead/valuation/recall?t=" + "0" * 32
                                         + "&v=email").status, 404)
        self.assertEqual(self.st.request("GET", "/lead/valuation/recall?t=../x&v=a").status, 404)
        self.assertEqual(self.st.request("GET", "/lead/contact/recall?t=%s&v=email"
                                         % tok).status, 404)
        with open(path) as f:
            rec = json.load(f)
        rec["created"] -= 3600
        with open(path, "w") as f:
            json.dump(rec, f)
        self.assertEqual(self.st.request("GET", base + "&v=email").status, 404)
        self.assertFalse(os.path.exists(path), "an expired record is removed")
        log = "\n".join(self.st.log_lines())
        self.assertNotIn(t, log)

    def test_the_sample_page_shows_the_form_again_with_values_and_messages(self):
        t = token()
        r = self.st.post("/lead/valuation", valuation(t, email="bad" + t, consent=None),
                         headers=self.origin(), script=False)
        loc = r.header("location")
        page = self.st.request("GET", loc[len(self.st.web):])
        self.assertEqual(page.status, 200, page)
        html = page.body.decode()
        self.assertIn('value="12 Example Street %s, Derby"' % t, html)
        self.assertIn('value="bad%s"' % t, html)
        self.assertIn("not a valid email address", html)
        self.assertIn('aria-invalid="true"', html)
        self.assertIn('href="#lb-valuation-email"', html)
        self.assertIn("privacy policy", html)
        self.assertNotIn("an error occurred", html)     # nginx SSI understood every directive
        self.assertEqual(page.header("referrer-policy"), "same-origin")

    # -- consent -----------------------------------------------------------------------------------

    def test_consent_and_marketing_go_with_the_lead(self):
        t = token()
        before = int(time.time())
        r = self.st.post("/lead/valuation", valuation(t, marketing="yes"), headers=self.origin())
        self.assertEqual(r.status, 200, r)
        lead = self.leads(t)[0]["json"]
        self.assertIs(lead["gdpr_checkbox"], True)
        m = re.fullmatch(r"privacy policy (\S+) agreed (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)",
                         lead["meta"]["consent"])
        self.assertIsNotNone(m, lead["meta"])
        self.assertEqual(m.group(1), self.st.web + "/privacy.html")
        when = time.mktime(time.strptime(m.group(2), "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        self.assertLessEqual(abs(when - before), 5)
        self.assertTrue(lead["meta"]["marketing"].startswith("yes 20"), lead["meta"])

        t2 = token()
        self.st.post("/lead/valuation", valuation(t2), headers=self.origin())
        self.assertEqual(self.leads(t2)[0]["json"]["meta"]["marketing"], "no")

    # -- attribution -------------------------------------------------------------------------------

    def test_every_click_id_and_first_touch_reach_the_lead(self):
        t = token()
        q = "&".join("%s=%s-%s" % (k, k.upper(), t) for k in CLICK_IDS)
        h = dict(self.origin(), Cookie="lb_attr=utm_source=ads&utm_medium=cpc; "
                 "lb_attr_first=utm_source%3Dnewsletter%26gclid%3DFIRST")
        r = self.st.post("/lead/valuation?" + q, valuation(t), headers=h)
        self.assertEqual(r.status, 200, r)
        lead = self.leads(t)[0]["json"]
        self.assertEqual(lead["utm_source"], "ads")
        for k in CLICK_IDS:
            if k == "gclid":
                continue    # LeadPro has no create field for it: meta
            self.assertEqual(lead["meta"].get(k), "%s-%s" % (k.upper(), t), (k, lead["meta"]))
        self.assertEqual(lead["meta"]["gclid"], "GCLID-" + t)
        self.assertEqual(lead["meta"]["first_touch"], "utm_source=newsletter&gclid=FIRST")
        # the site's own page is no referrer
        self.assertNotIn("referrer", lead["meta"])

    # -- our words, referrer policy, numbers ---------------------------------------------------------

    def test_answers_say_our_words_not_the_apis(self):
        t = token()
        self.st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        r = self.st.post("/lead/valuation", valuation(t), headers=self.origin())
        self.assertEqual(r.status, 202, r)
        body = r.json()
        self.assertEqual(body["targets"], {"leadpro": "queued"}, body)
        text = json.dumps(body)
        self.assertNotIn("503", text)
        self.assertNotIn("HTTP", text)
        deadline = time.monotonic() + 3
        while "HTTP 503" not in "\n".join(self.st.log_lines()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("HTTP 503", "\n".join(self.st.log_lines()))

    def test_a_lead_reference_comes_with_referrer_policy_same_origin(self):
        t = token()
        r = self.st.post("/lead/valuation", valuation(t), headers=self.origin())
        self.assertEqual(r.status, 200, r)
        self.assertIn("ref", r.json()["lead"])
        self.assertEqual(r.header("referrer-policy"), "same-origin")
        r = self.st.post("/lead/valuation", valuation(token()), headers=self.origin(),
                         script=False)
        self.assertEqual(r.status, 303, r)
        self.assertIn("lb_ref=", r.header("location"))
        self.assertEqual(r.header("referrer-policy"), "same-origin")

    def test_the_no_javascript_result_gets_formatted_numbers(self):
        r = self.st.post("/lead/valuation", valuation(token(), bedrooms="20"),
                         headers=self.origin(), script=False)
        loc = r.header("location")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        avg = int(q["sale_avg"][0])
        self.assertGreater(avg, 999999)
        want = "\u00a3" + "{:,}".format(avg)
        r = self.st.request("GET", "/lead/valuation/settings?k=money&n=%d" % avg)
        self.assertEqual(r.body.decode(), want)
        for bad in ("1e9", "-5", "12a", "1" * 16, ""):
            r = self.st.request("GET", "/lead/valuation/settings?k=money&n=" + bad)
            self.assertEqual((r.status, r.body), (200, b""), bad)
        # the sample result page prints them through SSI, and the disclaimer
        page = self.st.request("GET", loc[len(self.st.web):]).body.decode()
        self.assertIn(want, page)
        self.assertNotIn(">%d<" % avg, page)
        self.assertIn("automated estimate", page)
        self.assertNotIn("an error occurred", page)

    def test_settings_for_the_widget_and_cors_for_the_embed(self):
        st, h = self.st.get_json("/lead/valuation/settings", headers={"Origin": EMBED})
        self.assertEqual(st, 200)
        self.assertEqual(h["locale"], "en-GB")
        self.assertEqual(h["currency"], "GBP")
        self.assertIn("automated estimate", h["disclaimer"])
        self.assertEqual(h["consent"]["privacy_url"], self.st.web + "/privacy.html")
        self.assertEqual(h["consent"]["marketing_field"], "marketing")
        r = self.st.request("GET", "/lead/valuation/settings", headers={"Origin": EMBED})
        self.assertEqual(r.header("access-control-allow-origin"), EMBED)
        r = self.st.request("GET", "/lead/valuation/settings",
                            headers={"Origin": "https://evil.example"})
        self.assertEqual(r.status, 403)
        r = self.st.request("GET", "/lead/valuation/settings?k=disclaimer")
        self.assertTrue(r.body.decode().startswith("This is an automated estimate"))
        self.assertEqual(self.st.request("POST", "/lead/valuation/settings").status, 405)
        self.assertEqual(self.st.request("GET", "/lead/nothing/settings").status, 404)

    def test_a_delivered_lead_answers_the_embed_with_cors(self):
        # The answer of a lead the event loop delivered keeps the CORS header the worker set
        # (without it the page on the other origin cannot read its numbers).
        t = token()
        r = self.st.post("/lead/valuation", valuation(t), headers={"Origin": EMBED})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "created", r)
        self.assertEqual(r.header("access-control-allow-origin"), EMBED, r)


if __name__ == "__main__":
    unittest.main()
