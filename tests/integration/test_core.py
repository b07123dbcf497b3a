"""test_core.py: the core under hostile connections and a hostile spool (issue 9).

- Read timeout: FastCGI clients that connect and send nothing, or send their params and then
  stall the body, hold a worker for at most the config's read_timeout. A 2-thread bridge with
  6 such clients still answers a normal request through nginx, and a stalled body is answered
  408 request_timeout in the JSON error shape.
- Spool robustness: a FIFO (and a symlink) named like a job in queue/ blocks neither
  `queue list`, `queue run` nor the server's retry thread: they are moved to aside/, listed,
  and the real job is delivered.
"""

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import unittest

import harness
from harness import Stack

READ_TIMEOUT = 2


def derived_config(name, edit=None, **changes):
    """A copy of conf/<name> with top-level keys changed (and edit(conf) applied), in a temp
    dir. Returns (dir, path)."""
    tmp = tempfile.mkdtemp(prefix="leadbridge-core-conf-")
    with open(os.path.join(harness.HERE, "conf", name)) as f:
        conf = json.load(f)
    conf.update(changes)
    if edit is not None:
        edit(conf)
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(conf, f, indent=2)
    return tmp, path


class ReadTimeout(unittest.TestCase):
    """A bridge with 2 worker threads and read_timeout 2 s."""

    @classmethod
    def setUpClass(cls):
        cls.tmp, config = derived_config("foundation.json", read_timeout=READ_TIMEOUT)
        cls.st = Stack(config, threads=2).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.st.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def echo_params(self, length):
        p = harness.cgi_params("POST", "/lead/echo", content_type="application/x-www-form-urlencoded",
                               headers={"Origin": self.st.web, "Accept": "application/json"})
        p["CONTENT_LENGTH"] = str(length)
        return p

    def test_silent_and_stalled_clients_do_not_hold_the_workers(self):
        st = self.st
        silent = [harness.fcgi_connect(st.fcgi_addr, timeout=30) for _ in range(4)]
        stalled = []
        for _ in range(2):
            s = harness.fcgi_connect(st.fcgi_addr, timeout=30)
            harness.fcgi_begin(s, self.echo_params(100))
            harness.fcgi_send_stdin(s, b"first_name=Sta")   # 14 of 100 bytes, then nothing
            stalled.append(s)
        try:
            t0 = time.monotonic()
            r = st.post("/lead/echo", {"first_name": "Ada"},
                        headers={"Origin": st.web})
            took = time.monotonic() - t0
            self.assertEqual(r.status, 200, r)
            self.assertLess(took, 4 * READ_TIMEOUT + 5,
                            "a normal request waited %.1f s behind stalled clients" % took)
            for s in stalled:
                out, _, _ = harness.fcgi_read(s)
                r = harness.Response(*harness.parse_cgi(out))
                self.assertEqual(r.status, 408, r)
                self.assertEqual(r.json()["error"]["code"], "request_timeout", r.json())
            for s in silent:
                s.settimeout(4 * READ_TIMEOUT + 5)
                self.assertEqual(s.recv(1), b"", "a silent connection is closed, not kept")
        finally:
            for s in silent + stalled:
                s.close()

    def test_a_slow_but_steady_body_within_the_timeout_is_fine(self):
        st = self.st
        body = b"first_name=Slow&message=" + b"x" * 40
        with harness.fcgi_connect(st.fcgi_addr, timeout=30) as s:
            harness.fcgi_begin(s, self.echo_params(len(body)))
            for i in range(0, len(body), 16):
                harness.fcgi_send_stdin(s, body[i:i + 16])
                time.sleep(READ_TIMEOUT / 4)
            harness.fcgi_send_stdin(s, b"", end=True)
            out, _, _ = harness.fcgi_read(s)
        r = harness.Response(*harness.parse_cgi(out))
        self.assertEqual(r.status, 200, r)


class SpoolFifo(unittest.TestCase):
    """Non-regular files in the spool are set aside, never opened or waited on."""

    @classmethod
    def setUpClass(cls):
        cls.st = Stack("outbox.json").start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def queue(self, *args, timeout=20):
        p = self.st.run_bin(["-c", self.st.config, "queue"] + list(args) + ["--json"],
                            timeout=timeout)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_a_fifo_in_queue_blocks_nothing_and_is_listed(self):
        st = self.st
        spool = os.path.join(st.dir, "spool")
        fifo = os.path.join(spool, "queue", "0123456789abcdef0123456789abcdef.json")
        os.mkfifo(fifo)
        link = os.path.join(spool, "queue", "fedcba9876543210fedcba9876543210.json")
        os.symlink("/dev/zero", link)
        st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        r = st.post("/lead/create", {"first_name": "Fi", "last_name": "Fo",
                                     "email": "fifo@example.com", "phone": "07700 900111",
                                     "property_postcode": "DE1 1JX"},
                    headers={"Origin": st.web})
        self.assertEqual(r.status, 202, r)
        listed = self.queue("list")              # would hang on the FIFO before
        aside = [x for x in listed if x["state"] == "aside"]
        self.assertEqual(len(aside), 2, listed)
        self.assertFalse(os.path.lexists(fifo))
        self.assertFalse(os.path.lexists(link))
        stats = self.queue("run", "--now", str(int(time.time()) + 3600))
        self.assertEqual(stats["done"], 1, stats)
        # The server's own retry thread also keeps working with a FIFO planted again.
        os.mkfifo(fifo)
        st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        r = st.post("/lead/create", {"first_name": "Fi", "last_name": "Fum",
                                     "email": "fifo2@example.com", "phone": "07700 900112",
                                     "property_postcode": "DE1 1JX"},
                    headers={"Origin": st.web})
        self.assertEqual(r.status, 202, r)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if [x for x in st.standin_leads("leadpro") if "fifo2@" in x.get("body", "")]:
                break
            time.sleep(0.5)
        else:
            self.fail("the retry thread did not deliver past the FIFO")
        self.assertFalse(os.path.lexists(fifo))


if __name__ == "__main__":
    unittest.main()


class WaitingOffThreads(unittest.TestCase):
    """Requests waiting on a lead API wait in the event loop, not on worker threads: with 2
    workers, 8 posts are at a hanging API at the same time (2 would be, if each held a worker),
    the bridge still answers other requests meanwhile, and answers the 8 when their calls time
    out (or the API lets go)."""

    @classmethod
    def setUpClass(cls):
        def patient(conf):      # the API may take 30 s: a held worker would be held that long
            for t in conf["targets"].values():
                t["timeout"] = 30
        cls.tmp, config = derived_config("leadpro.json", edit=patient)
        cls.st = Stack(config, threads=2).start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.st.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_eight_held_requests_do_not_hold_two_workers(self):
        st = self.st
        st.standin_mode({"api": "leadpro", "mode": "hang"})
        answers, lock = [], threading.Lock()

        def post(i):
            data = {"first_name": "Ada", "last_name": "Held%d" % i,
                    "email": "held%d.%d@example.com" % (i, os.getpid()),
                    "phone": "07700 900789", "property_postcode": "DE1 1JX"}
            try:
                r = st.post("/lead/create", data, headers={"Origin": st.web})
                status = r.status
            except Exception as e:   # noqa: BLE001 - any failure is an answer we check
                status = type(e).__name__
            with lock:
                answers.append(status)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while True:
            status, obj = st.standin_get("/_control/requests?api=leadpro")
            held = [x for x in obj["requests"] if x.get("status") is None]
            if len(held) >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(held), 8, "the 8 posts did not all reach the API at once: "
                         "they waited for the 2 workers")
        # A post that fails the form's rules is answered by a worker alone (no API call).
        r = st.post("/lead/create", {"first_name": "Free"}, headers={"Origin": st.web})
        self.assertEqual(r.status, 422, "a worker was free while 8 requests waited: %r" % (r,))
        with lock:
            self.assertEqual(answers, [], "nothing is answered while the API holds them")
        st.standin_reset()           # the API lets go (closes them): each is queued
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(answers), [202] * 8, answers)
