"""test_hermetic.py: the tests never read the caller's configuration environment (issue 9).

Whoever runs the suite (likely on a deployed host) may have LEADBRIDGE_SECRET, the API URLs and
keys the configs expand, the stand-in's LEADAPI_* options or our own LB_TEST_* set in their shell.
None of it may reach a process the tests start: the harness builds every child's environment from
scratch (harness.base_env), and make check runs each test program through tests/hermetic, which
does the same for the unit tests.

CallerEnvironment sets such variables in this process (as a caller's shell would), then starts a
stack with the shipped sample config and checks that the bridge's and the stand-in's environments
hold the harness's values, that a reference the test signs with the test secret and lets expire
is answered 410 (not 403: the caller's secret would make it "forbidden"), and that a lead reaches
the stand-in with the test key. Wrapper runs tests/hermetic with the same variables set.
"""

import os
import subprocess
import time
import unittest
import uuid

import harness
from harness import Stack
from test_leadpro import find_lead, ref_parts, sign_ref

# What a deployed host's shell might hold: every name here is one a config expands or the
# stand-in reads.
CALLER = {
    "LEADBRIDGE_SECRET": "a-deployed-hosts-own-secret-0123456789",
    "LEADBRIDGE_SPOOL": "/nonexistent/caller-spool",
    "LEADBRIDGE_SITE": "https://www.caller.invalid",
    "LEADBRIDGE_CONFIG": "/nonexistent/caller.json",
    "LEADPRO_URL": "http://192.0.2.1/leadpro",
    "LEADPRO_API_KEY": "caller-leadpro-key",
    "LOFTY_API_KEY": "caller-lofty-key",
    "WEBHOOK_SECRET": "whsec_Y2FsbGVyLXNlY3JldA==",
    "LEADAPI_LEADPRO_KEY": "caller-standin-key",
    "LB_TEST_SECRET": "caller-lb-test-secret",
    "LB_TEST_WEB": "http://caller.invalid",
}


def proc_environ(pid):
    """The environment process pid started with, as a dict."""
    with open("/proc/%d/environ" % pid, "rb") as f:
        raw = f.read()
    out = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


class CallerEnvironment(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.saved = {k: os.environ.get(k) for k in CALLER}
        os.environ.update(CALLER)
        try:
            cls.st = Stack(os.path.join(harness.srcdir(), "conf", "leadbridge.json"),
                           person=True).start()
        except BaseException:
            cls._restore()
            raise

    @classmethod
    def _restore(cls):
        for k, v in cls.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    @classmethod
    def tearDownClass(cls):
        try:
            cls.st.stop()
        finally:
            cls._restore()

    def assertNoCallerValue(self, env, who):
        leaked = sorted(k for k, v in CALLER.items() if env.get(k) == v)
        self.assertEqual(leaked, [], "%s got the caller's %s" % (who, ", ".join(leaked)))

    def test_children_get_the_harness_values_only(self):
        bridge = proc_environ(self.st.procs["bridge"].pid)
        self.assertNoCallerValue(bridge, "the bridge")
        self.assertEqual(bridge.get("LEADBRIDGE_SECRET"), harness.TEST_SECRET)
        self.assertNotIn("LEADBRIDGE_CONFIG", bridge)
        self.assertNoCallerValue(proc_environ(self.st.procs["standin"].pid), "the stand-in")
        self.assertNoCallerValue(proc_environ(self.st.procs["nginx"].pid), "nginx")
        # The binary run directly (--check, plain CGI) gets the same environment.
        p = self.st.run_bin(["--check", "-c", self.st.config])
        self.assertEqual(p.returncode, 0, p.stderr)
        for k in CALLER:
            self.assertNotIn(CALLER[k], p.stdout + p.stderr)

    def test_expired_reference_signed_with_the_test_secret_is_gone(self):
        t = uuid.uuid4().hex[:10]
        data = {"name": "Ada Hermetic", "email": "ada.%s@example.com" % t,
                "phone": "07700 900456", "address": "1 Hermetic Street, Derby DE1 1JX",
                "bedrooms": "4", "property_type": "Detached", "purpose": "sell",
                "consent": "yes"}   # the sample valuation form requires consent
        h = {"Origin": self.st.web}
        r = self.st.post("/lead/valuation", data, headers=h)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(find_lead(self.st, t)), 1, "the lead did not reach the stand-in")
        target, lead_id, _ = ref_parts(r.json()["lead"]["ref"])
        expired = sign_ref(target, lead_id, int(time.time()) - 5)
        r = self.st.post("/lead/valuation/details", {"lb_ref": expired, "appointment": "x"},
                         headers=h)
        self.assertEqual(r.status, 410, r)
        self.assertEqual(r.json()["error"]["code"], "gone", r)


class Wrapper(unittest.TestCase):
    """tests/hermetic, which make check runs every test program through."""

    def test_wrapper_starts_from_scratch(self):
        wrapper = os.path.join(harness.srcdir(), "tests", "hermetic")
        env = dict(os.environ, **CALLER)
        env.update({"ASAN_OPTIONS": "detect_leaks=1", "LB_KEEP_TMP": "1", "LEADBRIDGE_BIN": "/b"})
        p = subprocess.run(["/bin/sh", wrapper, "env"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=10, universal_newlines=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        got = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        leaked = sorted(k for k in CALLER if k in got)
        self.assertEqual(leaked, [], "tests/hermetic passed on " + ", ".join(leaked))
        # What the tests themselves need is kept.
        self.assertEqual(got.get("ASAN_OPTIONS"), "detect_leaks=1")
        self.assertEqual(got.get("LB_KEEP_TMP"), "1")
        self.assertEqual(got.get("LEADBRIDGE_BIN"), "/b")
        self.assertIn("PATH", got)


if __name__ == "__main__":
    unittest.main()
