"""test_rules.py: configurable field rules end to end (issue 3), through nginx to the real bridge.

Forms of conf/rules.json map urlencoded, Elementor-style and Typeform-style posts by rules; the
echo action answers with the exact lead. Invalid fields are answered 422 to scripts and with a
303 to the error page (field names only) to plain posts. `--check` names file:line:col and the
JSON path of a bad regex; `--dry-run` prints the lead and the exact target payload and sends
nothing.

Helper added here (not in harness.py): dry_run() runs the binary with --dry-run, a CGI
environment and a body on stdin (Stack.run_bin gives no stdin, Stack.run_cgi no arguments).
"""

import json
import os
import random
import re
import shutil
import string
import subprocess
import tempfile
import unittest
import urllib.parse
import uuid

import harness
from harness import Stack


def token():
    """A short unique value, so each assertion checks this test's own data."""
    return uuid.uuid4().hex[:10]


def word():
    """A unique lower-case word (letters only, so case rules give one obvious answer)."""
    return "".join(random.choice(string.ascii_lowercase) for _ in range(8))


def dry_run(st, path, body, content_type="application/x-www-form-urlencoded", headers=None):
    """Runs `leadbridge --dry-run -c CONFIG` as CGI for one POST. Returns (rc, Response, stderr)."""
    env = st.bridge_env()
    env["LEADBRIDGE_CONFIG"] = st.config
    h = {"Accept": "application/json", "Origin": st.web}
    h.update(headers or {})
    env.update(harness.cgi_params("POST", path, body=body, content_type=content_type, headers=h))
    p = subprocess.run([st.bin, "--dry-run", "-c", st.config], input=body,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       timeout=harness.REQUEST_TIMEOUT)
    return (p.returncode, harness.Response(*harness.parse_cgi(p.stdout)),
            p.stderr.decode("utf-8", errors="replace"))


class Rules(unittest.TestCase):
    """One stack (nginx + bridge + stand-in) with conf/rules.json for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.st = Stack("rules.json").start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def post(self, path, data, content_type="application/x-www-form-urlencoded", headers=None,
             script=True):
        h = {"Origin": self.st.web, "User-Agent": "RulesE2E/1.0"}
        h.update(headers or {})
        return self.st.post(path, data, content_type, h, script)

    def echo_lead(self, path, data, content_type="application/x-www-form-urlencoded",
                  headers=None):
        r = self.post(path, data, content_type, headers)
        self.assertEqual(r.status, 200, r)
        body = r.json()
        self.assertIs(body.get("ok"), True, body)
        self.assertIsInstance(body.get("lead"), dict, body)
        return body["lead"]

    def leadpro_requests(self):
        status, obj = self.st.standin_get("/_control/requests?api=leadpro")
        self.assertEqual(status, 200)
        return obj["requests"]

    # -- mapping -----------------------------------------------------------------------------

    def test_urlencoded_post_mapped_exactly(self):
        t = token()
        w = word()
        page = self.st.web + "/contact.html"
        referer = page + "?utm_source=src%s&utm_medium=cpc&utm_campaign=camp%s&gclid=G%s" % (
            t, t, t)
        data = [("full_name", "marla SINGER-%s" % w.upper()), ("email", "Marla.%s@Example.COM" % t),
                ("telephone", "07700 900%s" % t[:3].translate(str.maketrans("abcdef", "123456"))),
                ("address", "1 High St, Derby de11jx"), ("intent", "Buying"),
                ("listing", "https://homes.example/l/%s" % t), ("beds", "Studio"),
                ("consent", "on"), ("colour", "blue-%s" % t), ("hobbies", "sail"),
                ("hobbies", "chess"), ("lb_ref", "not-gathered"), ("_hp", ""),
                ("utm_term", "term%s" % t)]
        phone = data[2][1]
        lead = self.echo_lead("/lead/mapped", urllib.parse.urlencode(data),
                              headers={"Referer": referer})
        expected = {
            "first_name": "Marla",
            "last_name": "Singer-%s" % w.capitalize(),
            "email": "Marla.%s@example.com" % t,
            "phone": phone,
            "postcode": "DE1 1JX",
            "type": "sale",
            "advert_url": "https://homes.example/l/%s" % t,
            "property_bedrooms": 0,
            "gdpr_checkbox": True,
            "meta": {"colour": "blue-%s" % t, "hobbies": "sail, chess"},
            "utm_source": "src" + t,
            "utm_medium": "cpc",
            "utm_campaign": "camp" + t,
            "utm_term": "term" + t,
            "gclid": "G" + t,
            "host": self.st.web,
            "landing_page": page,
            "ip": "127.0.0.1",
            "user_agent": "RulesE2E/1.0",
        }
        self.assertEqual(lead, expected)

    def test_value_table_default_and_condition_off(self):
        # "Selling" maps to vendor; an unknown value takes map_default; the listing rule only
        # applies to buyers and renters, so for these the listing goes to meta instead.
        t = token()
        base = {"full_name": "Ada", "email": "ada.%s@example.com" % t,
                "listing": "https://homes.example/%s" % t, "postcode": "sw1a 1aa"}
        lead = self.echo_lead("/lead/mapped", dict(base, intent="Selling"))
        self.assertEqual(lead["type"], "vendor")
        self.assertNotIn("advert_url", lead)
        # a field a rule names in "from" is never gathered into meta, even when its "when" fails
        self.assertNotIn("listing", lead.get("meta", {}))
        self.assertEqual(lead["postcode"], "SW1A 1AA")
        self.assertEqual(lead["first_name"], "Ada")
        self.assertNotIn("last_name", lead)
        self.assertIs(lead["gdpr_checkbox"], False)
        lead = self.echo_lead("/lead/mapped", dict(base, intent="Just looking %s" % t))
        self.assertEqual(lead["type"], "sale")
        self.assertNotIn("advert_url", lead)
        lead = self.echo_lead("/lead/mapped", dict(base, intent="renting"))
        self.assertEqual(lead["type"], "let")
        self.assertEqual(lead["advert_url"], base["listing"])
        self.assertNotIn("listing", lead.get("meta", {}))

    def test_elementor_fields_value_post(self):
        t = token()
        w = word()
        data = urllib.parse.urlencode([
            ("fields[name][value]", "grace HOPPER%s" % w),
            ("fields[email][value]", "grace.%s@Navy.MIL" % t),
            ("fields[message][value]", "Call me %s" % t),
            ("form_id", "f%s" % t)])
        lead = self.echo_lead("/lead/elementor", data)
        self.assertEqual(lead, {"first_name": "Grace", "last_name": "Hopper" + w,
                                "email": "grace.%s@navy.mil" % t, "message": "Call me %s" % t,
                                "meta": {"form_id": "f" + t}})

    def test_typeform_json_webhook(self):
        t = token()
        w = word()
        doc = {"event_id": "ev" + t, "event_type": "form_response", "form_response": {
            "form_id": "lT4Z3j",
            "hidden": {"utm_source": "tf" + t, "utm_campaign": "spring"},
            "answers": [
                {"type": "choice", "choice": {"label": "Letting"},
                 "field": {"id": "a1", "type": "multiple_choice", "ref": "intent"}},
                {"type": "email", "email": "tf.%s@example.org" % t,
                 "field": {"id": "a2", "type": "email", "ref": "email"}},
                {"type": "text", "text": "ALAN %s" % w.upper(),
                 "field": {"id": "a3", "type": "short_text", "ref": "first"}},
            ]}}
        r = self.st.post_json("/lead/typeform", doc)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["lead"], {
            "first_name": "Alan " + w.capitalize(), "email": "tf.%s@example.org" % t,
            "type": "landlord", "utm_source": "tf" + t, "utm_campaign": "spring"})

    # -- errors --------------------------------------------------------------------------------

    def test_invalid_fields_422_for_script_client(self):
        t = token()
        r = self.post("/lead/mapped", {"full_name": "Ada", "email": "ada-%s@" % t,
                                       "mobile": "12", "beds": "lots"})
        self.assertEqual(r.status, 422, r)
        err = r.json()["error"]
        self.assertEqual(err["code"], "invalid_fields")
        self.assertEqual(err["fields"], {"email": "not a valid email address",
                                         "phone": "not a valid phone number",
                                         "property_bedrooms": "must be a whole number"})
        self.assertNotIn(t, r.body.decode())

    def test_invalid_fields_plain_post_redirects_without_personal_data(self):
        t = token()
        email = "visitor-%s@" % t
        r = self.post("/lead/mapped", {"email": email, "mobile": "12", "colour": "red" + t},
                      script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/contact.html?"), loc)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertEqual(q["error"], ["invalid_fields"])
        self.assertEqual(sorted(q["fields"][0].split(",")), ["email", "first_name", "phone"])
        # lb_error: the random token the page reads the values and messages back with (issue 10)
        self.assertEqual(set(q), {"error", "fields", "lb_error"})
        self.assertRegex(q["lb_error"][0], r"^[0-9a-f]{32}$")
        for s in (loc, urllib.parse.unquote(loc)):
            self.assertNotIn(email, s)
            self.assertNotIn(t, s)
        # the error page itself says something is wrong (nginx SSI) and nothing personal: the
        # token is for another form (mapped), so nothing is read back
        page = self.st.request("GET", loc[len(self.st.web):])
        self.assertEqual(page.status, 200, page)
        self.assertIn(b"There is a problem", page.body)
        self.assertNotIn(t.encode(), page.body)
        self.assertNotIn(t.encode(), page.body)

    def test_plain_post_success_redirects_to_success_page(self):
        t = token()
        r = self.post("/lead/mapped", {"full_name": "Ada %s" % t, "email": "a%s@example.com" % t},
                      script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertTrue(loc.startswith(self.st.web + "/thanks.html"), loc)
        self.assertNotIn(t, urllib.parse.unquote(loc))

    # -- dry run -------------------------------------------------------------------------------

    def test_dry_run_prints_lead_and_exact_payload_and_sends_nothing(self):
        t = token()
        before = len(self.leadpro_requests())
        body = urllib.parse.urlencode({"full_name": "ada LOVELACE", "email": "ada.%s@example.com" % t,
                                       "phone": "07700 900123", "postcode": "sw1a1aa",
                                       "tag": "T" + t, "ignored": "x"}).encode()
        rc, r, err = dry_run(self.st, "/lead/dry", body)
        self.assertEqual(rc, 0, err)
        self.assertEqual(r.status, 200, r)
        out = r.json()
        self.assertIs(out.get("dry_run"), True, out)
        lead = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada.%s@example.com" % t,
                "phone": "07700 900123", "type": "sale", "advert_postcode": "SW1A 1AA",
                "meta": {"Dry run tag": "T" + t}}
        self.assertEqual(out["lead"], lead)
        p = out["payloads"]["leadpro"]
        self.assertEqual(p["method"], "POST")
        self.assertEqual(p["url"], self.st.standin_url + "/leadpro/api/v103/leads")
        sent = p["body"]
        meta = dict(sent["meta"])
        self.assertRegex(meta.pop("leadbridge_id"), r"^[0-9a-f]{32}$")
        self.assertEqual(meta, {"Dry run tag": "T" + t})
        self.assertEqual({k: v for k, v in sent.items() if k != "meta"},
                         dict({k: v for k, v in lead.items() if k != "meta"}, source="homepage"))
        text = r.body.decode() + err
        self.assertNotIn("test-leadpro-key", text)
        self.assertNotIn(t, err)
        self.assertEqual(len(self.leadpro_requests()), before)
        self.assertEqual([x for x in self.st.standin_leads("leadpro")
                          if t in json.dumps(x)], [])

    def test_dry_run_reports_invalid_fields(self):
        body = b"full_name=Ada&email=nope"
        rc, r, err = dry_run(self.st, "/lead/dry", body)
        self.assertEqual(r.status, 422, r)
        self.assertEqual(set(r.json()["error"]["fields"]),
                         {"email", "phone", "advert_postcode", "first_name"})


class Check(unittest.TestCase):
    """--check on bad configs: file:line:col and the JSON path, non-zero exit."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="leadbridge-rules-check-")
        self.st = Stack("rules.json", nginx=False, standin=False)
        self.st.dir = self.tmp

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_good_rules_config(self):
        self.st.config = os.path.join(harness.HERE, "conf", "rules.json")
        p = self.st.run_bin(["--check", "-c", self.st.config])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_bad_regex_names_file_line_column_and_path(self):
        text = ('{\n'
                '    "secret": "0123456789abcdef0123",\n'
                '    "forms": {\n'
                '        "x": {\n'
                '            "path": "/lead/x",\n'
                '            "action": "echo",\n'
                '            "rules": [\n'
                '                {"field": "email", "format": "email"},\n'
                '                {"field": "postcode", "match": "([A-Z]+"}\n'
                '            ]\n'
                '        }\n'
                '    }\n'
                '}\n')
        path = self.write("bad-regex.json", text)
        line = 9
        col = text.splitlines()[line - 1].index('"([A-Z]+"') + 1
        p = self.st.run_bin(["--check", "-c", path])
        self.assertNotEqual(p.returncode, 0)
        out = p.stdout + p.stderr
        self.assertIn("%s:%d:%d: forms.x.rules[1].match:" % (path, line, col), out)
        self.assertIn("regular expression", out)

    def test_bad_rule_key_and_unknown_target(self):
        text = ('{\n'
                '  "secret": "0123456789abcdef0123",\n'
                '  "forms": {\n'
                '    "y": {"path": "/lead/y", "action": "create", "targets": ["nowhere"],\n'
                '          "rules": [{"field": "email", "fromm": "mail"},\n'
                '                    {"field": "phone", "format": "fax"}]}\n'
                '  }\n'
                '}\n')
        path = self.write("bad-keys.json", text)
        p = self.st.run_bin(["--check", "-c", path])
        self.assertNotEqual(p.returncode, 0)
        out = p.stdout + p.stderr
        self.assertRegex(out, r"%s:5:\d+: forms\.y\.rules\[0\]\.fromm" % path)
        self.assertRegex(out, r"%s:6:\d+: forms\.y\.rules\[1\]\.format" % path)
        self.assertRegex(out, r"%s:4:\d+: forms\.y\.targets\[0\]" % path)
        self.assertIn("nowhere", out)


if __name__ == "__main__":
    unittest.main()
