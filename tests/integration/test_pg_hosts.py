"""test_pg_hosts.py: two web hosts, one PostgreSQL outbox (issue 14).

Each "host" is its own bridge process on its own unix socket behind its own nginx; both use
one database ("outbox": {"store": "postgresql", ...}, migrated once) and one stand-in API.

- A lead posted on host A and repeated on host B (the page's retry landing on the other host,
  with and without an Idempotency-Key) is one lead, and B answers what A answered; an
  Idempotency-Key reused on B with another body is 409; `queue list` on B sees A's job.
- Host A killed with SIGKILL again and again under load while the API is down; then the API is
  back, A stays down, and host B's retry worker delivers everything: lost 0, duplicated 0.
- The database restarted (as after a crash) under load on both hosts: posts while it is down
  are answered 503 and none of them is delivered later (nothing half-accepted); once it is
  back every acknowledged lead is delivered.
The figures are printed on stderr.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest
import uuid

import harness
from harness import Stack
from pgcluster import PgCluster
from test_outbox_pg import migrate
import test_outbox as base


SITE = "https://www.example.com"


def token():
    return uuid.uuid4().hex[:12]


def ping_lead(t):
    return {"first_name": "Host", "last_name": "T" + t, "email": "h.%s@example.com" % t,
            "phone": "07700 900456", "message": "two hosts " + t}


def by_token(st):
    """{token: [leads]} of the stand-in's Leadping leads from ping_lead."""
    out = {}
    for rec in st.standin_leads("leadping"):
        email = rec["json"].get("email", "")
        if email.startswith("h.") and email.endswith("@example.com"):
            out.setdefault(email[2:-len("@example.com")], []).append(rec)
    return out


def stop_hosts(cls):
    """Stops hosts cls.b and cls.a (those that were started); each must stop cleanly on SIGTERM,
    with no sanitizer report in its log. Returns what went wrong."""
    problems = []
    for name in ("b", "a"):
        st = getattr(cls, name, None)
        if st is not None:
            try:
                st.stop(check=True)
            except AssertionError as e:
                problems.append("host %s: %s" % (name.upper(), e))
    return problems


class TwoHosts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        t0 = time.monotonic()
        cls.pg = PgCluster().start()
        cls.tmp = tempfile.mkdtemp(prefix="leadbridge-hosts-")
        try:
            dsn = cls.pg.create_database("hosts")
            migrate(dsn)
            with open(os.path.join(harness.HERE, "conf", "outbox.json")) as f:
                conf = json.load(f)
            conf["outbox"].update({"store": "postgresql", "dsn": dsn})
            # Behind one load balancer both hosts serve the same site.
            conf["forms"]["ping"]["origins"].append(SITE)
            cls.config = os.path.join(cls.tmp, "hosts.json")
            with open(cls.config, "w") as f:
                json.dump(conf, f, indent=2)
            cls.a = Stack(cls.config, fcgi="unix:" + os.path.join(cls.tmp, "a.sock")).start()
            cls.b = Stack(cls.config, standin=False, standin_port=cls.a.standin_port,
                          fcgi="unix:" + os.path.join(cls.tmp, "b.sock")).start()
        except BaseException:
            cls.tearDownClass()
            raise
        sys.stderr.write("\nhosts: PostgreSQL + two hosts up in %.1f s\n"
                         % (time.monotonic() - t0))

    @classmethod
    def tearDownClass(cls):
        try:
            problems = stop_hosts(cls)
        finally:
            cls.pg.stop()
            shutil.rmtree(cls.tmp, ignore_errors=True)
        if problems:
            raise AssertionError("; ".join(problems))

    def tearDown(self):
        self.a.standin_mode({"api": "all", "mode": "ok"})
        for st in (self.a, self.b):
            if st.procs["bridge"].poll() is not None:
                base.restart_bridge(st)

    def post(self, st, data, headers=None):
        h = {"Origin": SITE, "Host": "www.example.com"}
        h.update(headers or {})
        return st.post("/lead/ping", data, headers=h)

    def count(self, sql):
        return int(self.pg.scalar("hosts", sql))

    # -------------------------------------------------------------------------------------

    def test_a_lead_on_host_a_and_its_retry_on_host_b_is_one_lead(self):
        t, key = token(), "k-" + token()
        r1 = self.post(self.a, ping_lead(t), {"Idempotency-Key": key})
        self.assertEqual(r1.status, 200, r1)
        self.assertEqual(r1.json()["status"], "created", r1)
        r2 = self.post(self.b, ping_lead(t), {"Idempotency-Key": key})
        self.assertEqual((r2.status, r2.json()), (r1.status, r1.json()))
        # the same key with another body, on B: 409, nothing sent
        t2 = token()
        r3 = self.post(self.b, ping_lead(t2), {"Idempotency-Key": key})
        self.assertEqual(r3.status, 409, r3)
        got = by_token(self.a)
        self.assertEqual(len(got.get(t, [])), 1, got.get(t))
        self.assertEqual(got[t][0].get("duplicates", 0), 0, "B sent nothing")
        self.assertNotIn(t2, got)

        # no key: the same content from the same client within the window, across hosts
        t3 = token()
        r4 = self.post(self.a, ping_lead(t3))
        self.assertEqual(r4.status, 200, r4)
        r5 = self.post(self.b, ping_lead(t3))
        self.assertEqual((r5.status, r5.json()), (r4.status, r4.json()))
        self.assertEqual(len(by_token(self.a).get(t3, [])), 1)
        self.assertEqual(by_token(self.a)[t3][0].get("duplicates", 0), 0)

    def test_queued_on_host_a_is_delivered_by_host_b_and_seen_by_its_queue(self):
        st_a, st_b = self.a, self.b
        st_a.standin_mode({"api": "leadping", "mode": "unavailable"})
        t = token()
        r = self.post(st_a, ping_lead(t))
        self.assertEqual(r.status, 202, r)
        self.assertEqual(st_a.stop_bridge(), 0)     # host A is gone
        jid = self.pg.scalar("hosts", "SELECT id FROM leadbridge_outbox_jobs WHERE "
                             "job::text LIKE '%%%s%%'" % t)
        mine = [x for x in base.queue(st_b, "list") if x["id"] == jid]
        self.assertEqual([x["state"] for x in mine], ["queued"], mine)
        st_a.standin_mode({"api": "leadping", "mode": "ok"})
        deadline = time.monotonic() + 30
        while t not in by_token(st_a):
            self.assertLess(time.monotonic(), deadline, "host B never delivered A's lead")
            time.sleep(0.2)
        self.assertEqual(len(by_token(st_a)[t]), 1)
        self.assertEqual(by_token(st_a)[t][0]["json"]["externalId"], mine[0]["id"])
        deadline = time.monotonic() + 10
        while base.queue(st_b, "show", mine[0]["id"])["state"] != "done":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.2)

    def load(self, hosts, stop, subs, lock, pause=0.02):
        """Client threads posting unique leads to hosts until stop is set."""
        def client(st):
            while not stop.is_set():
                t = token()
                try:
                    outcome = self.post(st, ping_lead(t)).status
                except Exception as e:      # connection reset etc.: not accepted
                    outcome = type(e).__name__
                with lock:
                    subs.append((t, outcome))
                stop.wait(pause if outcome in (200, 202) else 0.05)
        threads = [threading.Thread(target=client, args=(st,)) for st in hosts for _ in range(3)]
        for th in threads:
            th.start()
        return threads

    def drain(self, st, tokens, timeout=90):
        """Waits until every token reached the API; returns the missing ones."""
        deadline = time.monotonic() + timeout
        while True:
            got = by_token(self.a)
            missing = [t for t in tokens if t not in got]
            if not missing or time.monotonic() > deadline:
                return got, missing
            time.sleep(0.5)

    def test_sigkill_host_a_under_load_then_host_b_delivers_everything(self):
        st_a, st_b = self.a, self.b
        rounds = 8
        st_a.standin_mode({"api": "leadping", "mode": "unavailable"})
        stop, lock, subs = threading.Event(), threading.Lock(), []
        t0 = time.monotonic()
        threads = self.load([st_a], stop, subs, lock)
        try:
            for _ in range(rounds):
                time.sleep(0.6)
                base.restart_bridge(st_a)           # SIGKILL, start again
            time.sleep(0.5)
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        st_a.procs["bridge"].kill()                 # and dead for good
        st_a.procs["bridge"].wait(10)
        st_a.standin_mode({"api": "leadping", "mode": "ok"})
        ok = [t for t, s in subs if s in (200, 202)]
        got, missing = self.drain(st_b, ok)
        dups = {t: [r["json"]["externalId"] for r in recs]
                for t, recs in got.items() if t in ok and len(recs) > 1}
        queued = self.count("SELECT count(*) FROM leadbridge_outbox_jobs WHERE state = 'queued'")
        statuses = {}
        for _, s in subs:
            statuses[s] = statuses.get(s, 0) + 1
        sys.stderr.write(
            "\nhost A killed %d times under load (API down), host B delivered: submissions %d, "
            "acknowledged %d (%s), lost %d, duplicated %d, still queued %d, %.1f s\n"
            % (rounds, len(subs), len(ok), ", ".join("%s: %d" % kv for kv in sorted(
                statuses.items(), key=lambda kv: str(kv[0]))), len(missing), len(dups), queued,
               time.monotonic() - t0))
        self.assertGreater(len(ok), 30, statuses)
        self.assertEqual(missing, [], "acknowledged but never delivered")
        self.assertEqual(dups, {}, "one submission, two leads")
        done_by_b = self.count("SELECT count(*) FROM leadbridge_outbox_jobs WHERE state = 'done'")
        self.assertGreaterEqual(done_by_b, len(ok))

    def test_database_restarted_under_load(self):
        st_a, st_b = self.a, self.b
        stop, lock, subs = threading.Event(), threading.Lock(), []
        before = len(by_token(st_a))
        threads = self.load([st_a, st_b], stop, subs, lock)
        try:
            time.sleep(1.5)
            with lock:
                mark_down = len(subs)
            self.pg.stop_server("immediate")        # as if it crashed
            time.sleep(2.0)
            with lock:
                during = subs[mark_down:]
            self.pg.start_server()
            time.sleep(2.5)
        finally:
            stop.set()
            for th in threads:
                th.join(30)
        ok = [t for t, s in subs if s in (200, 202)]
        refused = [t for t, s in subs if s == 503]
        got, missing = self.drain(st_b, ok)
        refused_delivered = [t for t in refused if t in got]
        other = sorted({str(s) for _, s in subs if s not in (200, 202, 503)})
        dups = {t: len(recs) for t, recs in got.items() if t in ok and len(recs) > 1}
        sys.stderr.write(
            "\ndatabase restarted under load (2 hosts): submissions %d, acknowledged %d, "
            "503 %d (%d of them while it was down), other %s, lost %d, 503s delivered %d, "
            "duplicated %d\n" % (len(subs), len(ok), len(refused),
                                 sum(1 for _, s in during if s == 503), other, len(missing),
                                 len(refused_delivered), len(dups)))
        self.assertGreater(len(refused), 0, "no post met the outage")
        self.assertGreater(len(ok), 20)
        self.assertEqual(other, [], "only 2xx and 503")
        self.assertEqual(missing, [], "acknowledged but never delivered")
        self.assertEqual(refused_delivered, [], "answered 503 but delivered: half-accepted")
        self.assertEqual(dups, {})
        self.assertGreaterEqual(len(got), before + len(ok))


if __name__ == "__main__":
    unittest.main()
