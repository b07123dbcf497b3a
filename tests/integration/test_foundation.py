"""test_foundation.py: the foundation end to end: the real bridge behind a real nginx.

Body parsing (urlencoded, multipart, JSON), attribution, the plain-form redirect, every error
answer with its JSON shape, header safety, log privacy, plain CGI, --check and --version, and a
clean exit on SIGTERM with a request in flight.
"""

import json
import os
import socket
import tempfile
import threading
import time
import unittest
import urllib.parse

import harness
from harness import Stack


class Foundation(unittest.TestCase):
    """One stack for the whole class; each test is one or a few requests."""

    @classmethod
    def setUpClass(cls):
        cls.st = Stack("foundation.json").start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    # -- helpers ---------------------------------------------------------------------------------

    def post(self, path, data, content_type="application/x-www-form-urlencoded", headers=None,
             script=True):
        h = {"Origin": self.st.web}
        h.update(headers or {})
        return self.st.post(path, data, content_type, h, script)

    def echo(self, data, content_type="application/x-www-form-urlencoded", headers=None,
             path="/lead/echo"):
        """POSTs to the echo form as a script client; asserts 200 and returns the JSON answer."""
        r = self.post(path, data, content_type, headers)
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.header("content-type", ""))
        body = r.json()
        self.assertIs(body.get("ok"), True, body)
        self.assertEqual(body.get("form"), "echo")
        return body

    def assertError(self, r, status, code):
        """r is status with the JSON error shape {"error": {"code": code, "message": "..."}}."""
        self.assertEqual(r.status, status, r)
        self.assertIn("application/json", r.header("content-type", ""), r)
        body = r.json()
        self.assertIsInstance(body.get("error"), dict, body)
        self.assertEqual(body["error"].get("code"), code, body)
        self.assertIsInstance(body["error"].get("message"), str, body)
        self.assertTrue(body["error"]["message"], body)
        return body

    # -- bodies ----------------------------------------------------------------------------------

    def test_urlencoded_nesting_repeats_utf8(self):
        data = ("a%5Bb%5D%5Bc%5D=deep&a%5Bb%5D%5Bd%5D=two&x=1&x=2&name="
                + urllib.parse.quote("Zoë Ångström 日本") + "&plus=a+b&empty=")
        f = self.echo(data)["fields"]
        self.assertEqual(f["a"], {"b": {"c": "deep", "d": "two"}})
        self.assertEqual(f["x"], ["1", "2"])
        self.assertEqual(f["name"], "Zoë Ångström 日本")
        self.assertEqual(f["plus"], "a b")
        self.assertEqual(f["empty"], "")

    def test_urlencoded_content_type_with_charset(self):
        f = self.echo("k=v", "application/x-www-form-urlencoded; charset=UTF-8")["fields"]
        self.assertEqual(f, {"k": "v"})

    def test_multipart_text_parts_without_files(self):
        body, ctype = harness.multipart(
            [("first_name", "Ada"), ("note", "line1\r\nline2 é"), ("tags[]", "a"),
             ("tags[]", "b")],
            files=[("upload", "secret.txt", b"FILE-CONTENT-MUST-NOT-APPEAR")])
        res = self.echo(body, ctype)
        f = res["fields"]
        self.assertEqual(f["first_name"], "Ada")
        self.assertEqual(f["note"], "line1\r\nline2 é")
        self.assertNotIn("upload", f)
        self.assertNotIn("FILE-CONTENT-MUST-NOT-APPEAR", json.dumps(res))
        self.assertNotIn("secret.txt", json.dumps(res))

    def test_json_nested(self):
        doc = {"name": "Ada", "address": {"line1": "1 Road", "geo": {"lat": 51.5, "n": [1, 2]}},
               "ok": True, "none": None, "list": [{"a": "b"}]}
        f = self.echo(json.dumps(doc), "application/json")["fields"]
        self.assertEqual(f["name"], "Ada")
        self.assertEqual(f["address"]["line1"], "1 Road")
        self.assertEqual(f["address"]["geo"]["n"], [1, 2])
        self.assertEqual(f["list"], [{"a": "b"}])

    def test_lead_present(self):
        res = self.echo("first_name=Ada&email=ada%40example.com")
        self.assertIsInstance(res.get("lead"), dict, res)
        self.assertIsInstance(res.get("attribution"), dict, res)

    # -- attribution -----------------------------------------------------------------------------

    def test_attribution_from_referer(self):
        page = self.st.web + "/form.html"
        ref = page + "?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=Cj0KabC"
        a = self.echo("email=a%40example.com", headers={"Referer": ref})["attribution"]
        self.assertEqual(a.get("utm_source"), "google", a)
        self.assertEqual(a.get("utm_medium"), "cpc", a)
        self.assertEqual(a.get("utm_campaign"), "spring", a)
        self.assertEqual(a.get("gclid"), "Cj0KabC", a)
        self.assertEqual(a.get("landing_page"), page, a)
        for k in ("landing_page", "referrer"):
            if k in a:
                self.assertNotIn("?", a[k], a)
                self.assertNotIn("gclid", a[k], a)

    def test_attribution_from_query_string(self):
        a = self.echo("x=1", path="/lead/echo?utm_source=newsletter&utm_content=hero"
                      "&fbclid=FB123&msclkid=MS9")["attribution"]
        self.assertEqual(a.get("utm_source"), "newsletter", a)
        self.assertEqual(a.get("utm_content"), "hero", a)
        self.assertEqual(a.get("fbclid"), "FB123", a)
        self.assertEqual(a.get("msclkid"), "MS9", a)

    def test_attribution_fields_win_over_referer(self):
        ref = self.st.web + "/form.html?utm_source=fromref"
        a = self.echo("utm_source=fromfield", headers={"Referer": ref})["attribution"]
        self.assertEqual(a.get("utm_source"), "fromfield", a)

    def test_attribution_host_ip_user_agent(self):
        a = self.echo("x=1", headers={"User-Agent": "IntegTest/1.0"})["attribution"]
        self.assertEqual(a.get("host"), self.st.web, a)      # from the Origin header
        self.assertEqual(a.get("ip"), "127.0.0.1", a)
        self.assertEqual(a.get("user_agent"), "IntegTest/1.0", a)

    def test_attribution_cookie(self):
        cookie = "lb_attr=" + urllib.parse.quote("utm_source=cookiesrc&utm_term=boat")
        a = self.echo("x=1", headers={"Cookie": "other=1; " + cookie})["attribution"]
        self.assertEqual(a.get("utm_source"), "cookiesrc", a)
        self.assertEqual(a.get("utm_term"), "boat", a)

    # -- plain HTML form -------------------------------------------------------------------------

    def test_plain_form_post_redirects_to_success_page(self):
        email = "plain-redirect-%d@example.com" % os.getpid()
        r = self.post("/lead/echo", {"first_name": "Redirecta", "email": email}, script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location")
        self.assertIsNotNone(loc, r)
        self.assertTrue(loc.startswith(self.st.web + "/thanks.html"), loc)
        decoded = urllib.parse.unquote(loc)
        self.assertNotIn(email, decoded)
        self.assertNotIn("Redirecta", decoded)

    def test_xhr_header_means_script_client(self):
        r = self.post("/lead/echo", "x=1", headers={"X-Requested-With": "XMLHttpRequest"},
                      script=False)
        self.assertEqual(r.status, 200, r)
        self.assertIs(r.json().get("ok"), True)

    # -- errors ----------------------------------------------------------------------------------

    def test_413_body_over_form_limit(self):
        self.assertError(self.post("/lead/small", "a=" + "x" * 2000), 413, "body_too_large")
        self.assertError(self.post("/lead/echo", "a=" + "x" * 70000), 413, "body_too_large")

    def test_413_huge_content_length_without_body_fastcgi(self):
        # Straight to the bridge: it must answer from the header without waiting for the body.
        p = harness.cgi_params("POST", "/lead/echo", content_type="application/json",
                               headers={"Accept": "application/json", "Origin": self.st.web})
        p["CONTENT_LENGTH"] = str(10 ** 15)
        with harness.fcgi_connect(self.st.fcgi_addr, timeout=10) as s:
            harness.fcgi_begin(s, p)
            harness.fcgi_send_stdin(s, b'{"a":')
            out, _, _ = harness.fcgi_read(s)
        self.assertError(harness.Response(*harness.parse_cgi(out)), 413, "body_too_large")

    def test_413_huge_content_length_cgi(self):
        env = harness.cgi_params("POST", "/lead/echo", content_type="application/json",
                                 headers={"Accept": "application/json", "Origin": self.st.web})
        env["CONTENT_LENGTH"] = str(10 ** 15)
        r, rc, _ = self.st.run_cgi(env, b"{}")
        self.assertError(r, 413, "body_too_large")
        # beyond any integer type: refused without reading, as too large or as malformed
        env["CONTENT_LENGTH"] = "99999999999999999999999"
        r, rc, _ = self.st.run_cgi(env, b"{}")
        self.assertIn(r.status, (400, 413), r)
        self.assertError(r, r.status, "body_too_large" if r.status == 413 else "malformed_body")

    def test_413_huge_content_length_through_nginx(self):
        # nginx refuses it first (client_max_body_size); only the status is ours to check.
        with socket.create_connection(("127.0.0.1", self.st.web_port), timeout=10) as s:
            s.sendall(b"POST /lead/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n"
                      b"Connection: close\r\n\r\n{\"a\":")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 413"), data[:200])

    def test_415_unsupported_media_type(self):
        self.assertError(self.post("/lead/echo", "<a/>", "application/xml"), 415,
                         "unsupported_media_type")
        self.assertError(self.post("/lead/echo", "hello", "text/plain"), 415,
                         "unsupported_media_type")

    def test_400_bad_percent_encoding(self):
        self.assertError(self.post("/lead/echo", "a=%zz&b=1"), 400, "malformed_body")
        self.assertError(self.post("/lead/echo", "a=%4"), 400, "malformed_body")

    def test_400_invalid_utf8(self):
        self.assertError(self.post("/lead/echo", "a=%ff%fe"), 400, "malformed_body")
        self.assertError(self.post("/lead/echo", b'{"a": "\xc3\x28"}', "application/json"),
                         400, "malformed_body")

    def test_400_truncated_multipart(self):
        body, ctype = harness.multipart([("a", "1"), ("b", "2")])
        self.assertError(self.post("/lead/echo", body[:-30], ctype), 400, "malformed_body")

    def test_400_multipart_without_boundary(self):
        self.assertError(self.post("/lead/echo", "--x\r\n", "multipart/form-data"), 400,
                         "malformed_body")

    def test_400_deep_and_broken_json(self):
        # Refused cleanly: nesting past the form's max_depth is 400 too_deep (413 is only for a
        # body over the size limit).
        deep = '{"a":' * 5000 + "1" + "}" * 5000
        r = self.post("/lead/echo", deep, "application/json")
        self.assertError(r, 400, "too_deep")
        deep = "[" * 100000 + "]" * 100000
        r = self.post("/lead/echo", '{"a":' + deep + "}", "application/json")
        self.assertIn(r.status, (400, 413), r)
        # a few levels are fine
        f = self.echo('{"a":{"b":{"c":{"d":[["x"]]}}}}', "application/json")["fields"]
        self.assertEqual(f["a"]["b"]["c"]["d"], [["x"]])
        self.assertError(self.post("/lead/echo", '{"a": ', "application/json"), 400,
                         "malformed_body")

    def test_405_with_allow(self):
        # A form that creates leads takes POST only.
        r = self.st.request("GET", "/lead/create", headers={"Accept": "application/json"})
        self.assertError(r, 405, "method_not_allowed")
        self.assertIn("POST", r.header("allow", ""), r)
        self.assertNotIn("GET", r.header("allow", ""), r)
        for method in ("PUT", "DELETE", "PATCH"):
            r = self.st.request(method, "/lead/echo", body=b"x=1", headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json"})
            self.assertError(r, 405, "method_not_allowed")
            self.assertIn("POST", r.header("allow", ""), r)

    def test_options_preflight(self):
        r = self.st.request("OPTIONS", "/lead/echo", headers={
            "Origin": self.st.web, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertIn(r.status, (200, 204), r)
        self.assertEqual(r.header("access-control-allow-origin"), self.st.web, r)
        self.assertIn("POST", r.header("access-control-allow-methods", ""), r)

    def test_404_unknown_path(self):
        self.assertError(self.post("/lead/no-such-form", "a=1"), 404, "not_found")

    # -- header safety ---------------------------------------------------------------------------

    def test_crlf_never_reaches_a_header(self):
        evil = "x\r\nSet-Cookie: injected=1\r\nX-Injected: 1"
        q = urllib.parse.urlencode({"utm_source": evil, "utm_campaign": evil})
        r = self.post("/lead/echo?" + q, {"name": evil, "email": "a@example.com"},
                      headers={"Referer": self.st.web + "/form.html?" + q}, script=False)
        self.assertIn(r.status, (303, 200, 400), r)
        names = [k for k, _ in r.headers]
        self.assertNotIn("x-injected", names)
        self.assertNotIn("set-cookie", names)
        for _, v in r.headers:
            self.assertNotIn("\r", v)
            self.assertNotIn("\n", v)
            self.assertNotIn("injected", v.lower())

    def test_crlf_in_cgi_environment(self):
        env = harness.cgi_params("POST", "/lead/echo", body=b"x=1",
                                 content_type="application/x-www-form-urlencoded",
                                 headers={"Origin": self.st.web,
                                          "Referer": self.st.web + "/\r\nX-Injected: 1",
                                          "User-Agent": "UA\r\nX-Injected: 2"},
                                 query="utm_source=a%0d%0aX-Injected:%203")
        r, _, _ = self.st.run_cgi(env, b"x=1")
        self.assertNotIn("x-injected", [k for k, _ in r.headers], r)

    # -- the log ---------------------------------------------------------------------------------

    def test_log_is_json_without_personal_data(self):
        email = "zqx-private-%d@unique-example.org" % os.getpid()
        name = "Quillonette Zephyrinska"
        phone = "07700 900123"
        for script in (True, False):
            self.post("/lead/echo", {"first_name": name, "email": email, "phone": phone},
                      headers={"Referer": self.st.web + "/form.html?utm_source=logtest"},
                      script=script)
        self.post_json_error_for_log(email)
        time.sleep(0.3)
        lines = [ln for ln in self.st.log_lines() if ln.strip()]
        self.assertTrue(lines, "the bridge logged nothing")
        for ln in lines:
            try:
                obj = json.loads(ln)
            except ValueError:
                self.fail("log line is not JSON: %r" % ln)
            self.assertIsInstance(obj, dict, ln)
        text = "\n".join(lines)
        for secret in (email, urllib.parse.quote(email), "Quillonette", "Zephyrinska",
                       "900123", harness.TEST_SECRET, "test-leadpro-key"):
            self.assertNotIn(secret, text)

    def post_json_error_for_log(self, email):
        self.post("/lead/echo", '{"email": "%s", ' % email, "application/json")

    # -- plain CGI -------------------------------------------------------------------------------

    def test_cgi_echo_matches_fastcgi(self):
        body = b"first_name=Ada&a%5Bb%5D=1&x=1&x=2"
        headers = {"Accept": "application/json", "Origin": self.st.web,
                   "Referer": self.st.web + "/form.html?utm_source=cgi"}
        env = harness.cgi_params("POST", "/lead/echo", body=body,
                                 content_type="application/x-www-form-urlencoded",
                                 headers=headers, port=self.st.web_port)
        r, rc, err = self.st.run_cgi(env, body)
        self.assertEqual(rc, 0, err)
        self.assertEqual(r.status, 200, r)
        cgi = r.json()
        web = self.echo(body, headers=headers)
        self.assertEqual(cgi["fields"], web["fields"])
        self.assertEqual(cgi["fields"], {"first_name": "Ada", "a": {"b": "1"}, "x": ["1", "2"]})
        self.assertEqual(cgi["attribution"].get("utm_source"), "cgi")
        self.assertEqual(cgi["lead"], web["lead"])

    def test_cgi_plain_post_redirect(self):
        body = b"first_name=Ada"
        env = harness.cgi_params("POST", "/lead/echo", body=body,
                                 content_type="application/x-www-form-urlencoded",
                                 headers={"Origin": self.st.web, "Accept": "text/html"})
        r, rc, _ = self.st.run_cgi(env, body)
        self.assertEqual(r.status, 303, r)
        self.assertTrue(r.header("location", "").startswith(self.st.web + "/thanks.html"), r)

    def test_cgi_unknown_path(self):
        env = harness.cgi_params("POST", "/lead/none", body=b"a=1",
                                 content_type="application/x-www-form-urlencoded",
                                 headers={"Accept": "application/json"})
        r, _, _ = self.st.run_cgi(env, b"a=1")
        self.assertError(r, 404, "not_found")

    # -- static pages still served ---------------------------------------------------------------

    def test_nginx_serves_www(self):
        www = os.path.join(harness.srcdir(), "www")
        pages = sorted(p for p in os.listdir(www) if p.endswith(".html")) \
            if os.path.isdir(www) else []
        if not pages:
            self.skipTest("no sample pages in www/")
        r = self.st.request("GET", "/" + pages[0])
        self.assertEqual(r.status, 200, r)


class CommandLine(unittest.TestCase):
    """--check and --version, no servers needed."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="leadbridge-cli-")
        self.st = Stack("foundation.json", nginx=False, standin=False)
        self.st.dir = self.tmp
        self.st.config = os.path.join(harness.HERE, "conf", "foundation.json")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_version(self):
        p = self.st.run_bin(["--version"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("leadbridge", p.stdout.lower())
        self.assertRegex(p.stdout, r"\d+\.\d+\.\d+")

    def test_help(self):
        p = self.st.run_bin(["--help"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("--check", p.stdout + p.stderr)

    def test_check_good_config(self):
        p = self.st.run_bin(["--check", "-c", self.st.config])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_config_from_environment(self):
        p = self.st.run_bin(["--check"], env={"LEADBRIDGE_CONFIG": self.st.config})
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_broken_json(self):
        bad = os.path.join(self.tmp, "broken-syntax.json")
        with open(bad, "w") as f:
            f.write('{\n  "secret": "0123456789abcdef0123",\n  "forms": {\n    "a": {,\n')
        p = self.st.run_bin(["--check", "-c", bad])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(bad, p.stdout + p.stderr)

    def test_check_broken_content(self):
        bad = os.path.join(self.tmp, "broken-keys.json")
        with open(bad, "w") as f:
            json.dump({"secret": "short", "forms": {"a": {"path": "/lead/a", "action": "echo",
                                                          "no_such_key": 1}}}, f)
        p = self.st.run_bin(["--check", "-c", bad])
        self.assertNotEqual(p.returncode, 0)
        out = p.stdout + p.stderr
        self.assertIn(bad, out)
        self.assertIn("no_such_key", out)

    def test_check_missing_file(self):
        missing = os.path.join(self.tmp, "nope.json")
        p = self.st.run_bin(["--check", "-c", missing])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(missing, p.stdout + p.stderr)

    def test_check_unset_variable(self):
        p = self.st.run_bin(["--check", "-c", self.st.config],
                            env={"LB_TEST_SECRET": ""})
        # an empty secret is too short: the check must say so and fail
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)


class Shutdown(unittest.TestCase):
    """SIGTERM with a request in flight: the request finishes, then the bridge exits 0."""

    def test_sigterm_idle_exits_promptly(self):
        with Stack("foundation.json", nginx=False, standin=False) as st:
            t0 = time.monotonic()
            self.assertEqual(st.stop_bridge(), 0)
            self.assertLess(time.monotonic() - t0, 5.0)

    def test_sigterm_finishes_request_in_flight(self):
        st = Stack("foundation.json", nginx=False, standin=False)
        with st:
            body = b"first_name=Slow&x=" + b"y" * 200
            p = harness.cgi_params("POST", "/lead/echo", body=body,
                                   content_type="application/x-www-form-urlencoded",
                                   headers={"Accept": "application/json", "Origin": st.web})
            with harness.fcgi_connect(st.fcgi_addr, timeout=15) as s:
                harness.fcgi_begin(s, p)
                harness.fcgi_send_stdin(s, body[:10])
                time.sleep(0.5)                # the worker is now waiting for the rest
                result = {}

                def stop():
                    result["rc"] = st.stop_bridge()

                t = threading.Thread(target=stop)
                t.start()
                time.sleep(0.5)                # SIGTERM delivered while the body is half sent
                harness.fcgi_send_stdin(s, body[10:], end=True)
                out, _, _ = harness.fcgi_read(s)
                t.join(timeout=30)
            r = harness.Response(*harness.parse_cgi(out))
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["fields"]["first_name"], "Slow")
            self.assertFalse(t.is_alive())
            self.assertEqual(result.get("rc"), 0)


if __name__ == "__main__":
    unittest.main()
