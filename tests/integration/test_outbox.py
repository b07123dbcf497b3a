"""test_outbox.py: the durable outbox end to end (issue 6): no lead lost, none duplicated.

conf/outbox.json has a LeadPro form (/lead/create) and a Leadping form (/lead/ping; Leadping
answers the same id for a repeated externalId), a spool under the stack's directory and a short
retry schedule (1, 2, 4 s). The operator commands run as `leadbridge -c CONFIG queue ... --json`,
with `--now EPOCH` as the clock the tests control.

- Outage: a simulated 72-hour outage (the API answers 503) with the real schedule: every post is
  202 "queued", retried on the schedule by `queue run` passes at each next due time, and
  delivered once, in submission order, when the API is back.
- Rate limit: 429 with Retry-After 120 is honoured over a 1 s schedule.
- Permanent refusal: 422 "rejected", a dead letter at once with the API's reason; retry; purge.
- Duplicates: Idempotency-Key repeated (same body: the same answer; different body: 409) and 50
  identical submissions in parallel: one lead.
- Crash safety: 8 client threads posting unique leads through nginx while the bridge (and a
  cron-style `queue run`) are killed with SIGKILL at random moments; afterwards nothing answered
  2xx is lost, no spool file is half-written and no submission is two leads. The figures are
  printed on stderr.

- A bridge killed mid-delivery: the job is not lost and is delivered once; the page's repeat of
  that submission should be answered at once (it is not: see the expected failure below).

Helpers here (not in harness.py): queue() runs a queue command; restart_bridge() kills and starts
the bridge alone on the same FastCGI address with the stack's config and environment.
"""

import glob
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

import harness
from harness import Stack

HOUR = 3600
OUTAGE = 72 * HOUR


def token():
    return uuid.uuid4().hex[:12]


def lead(t, **over):
    """A LeadPro-form submission whose last name and email carry the token t."""
    d = {"first_name": "Ada", "last_name": "F" + t, "email": "f.%s@example.com" % t,
         "phone": "07700 900789", "enquiry": "Buying", "property_postcode": "DE1 1JX",
         "message": "Call me %s" % t}
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


def queue(st, *args, now=None, expect_rc=0):
    """Runs `leadbridge -c CONFIG queue ARGS --json [--now NOW]`; returns the parsed JSON."""
    argv = ["-c", st.config, "queue"] + list(args) + ["--json"]
    if now is not None:
        argv += ["--now", str(int(now))]
    p = st.run_bin(argv, timeout=60)
    if p.returncode != expect_rc:
        raise AssertionError("queue %s exited %d (expected %d): %s %s"
                             % (" ".join(args), p.returncode, expect_rc, p.stdout, p.stderr))
    if expect_rc != 0:
        return None
    try:
        return json.loads(p.stdout)
    except ValueError:
        raise AssertionError("queue %s printed no JSON: %r" % (" ".join(args), p.stdout[:500]))


def requests_for(st, api):
    status, obj = st.standin_get("/_control/requests?api=" + api)
    if status != 200:
        raise RuntimeError("stand-in /_control/requests answered %d" % status)
    return obj["requests"]


def leads_with(st, api, t):
    """The stand-in's accepted leads for api whose body holds the token t."""
    return [x for x in st.standin_leads(api) if t in x.get("body", "")]


def find_job(st, t):
    """The `queue show` of the one job whose lead holds the token t (or None)."""
    found = []
    for item in queue(st, "list"):
        job = queue(st, "show", item["id"])
        if t in json.dumps(job):
            found.append(job)
    if len(found) > 1:
        raise AssertionError("more than one job holds %s: %r" % (t, [j["id"] for j in found]))
    return found[0] if found else None


def spool_dir(st):
    return os.path.join(st.dir, "spool")


def expected_attempts(schedule, jitter, span):
    """(least, most) attempts made in span seconds: the first at 0, then after each delay of the
    schedule (its last entry repeating), each multiplied by 1 +- jitter (and +-1 s rounding)."""
    def count(factor, slack):
        n, t, i = 1, 0.0, 0
        while True:
            t += schedule[min(i, len(schedule) - 1)] * factor + slack
            if t > span:
                return n
            n += 1
            i += 1
    return count(1 + jitter, 1), count(1 - jitter, -1)


def restart_bridge(st, sig=signal.SIGKILL):
    """Kills st's bridge with sig (if running) and starts it again, alone, on the same FastCGI
    address with the stack's config and environment; waits until it accepts."""
    p = st.procs.get("bridge")
    if p is not None and p.poll() is None:
        p.send_signal(sig)
        p.wait(timeout=harness.STOP_TIMEOUT)
    st._spawn("bridge", [st.bin, "-c", st.config, "-s", st.fcgi_addr, "-t", str(st.threads)],
              env=st.bridge_env())
    st.bridge_rc = None
    st._wait_accepting("bridge", st.fcgi_addr)


def post_with_timeout(st, path, data, timeout):
    """POSTs the form data through nginx as a script client, giving up after timeout seconds
    (socket.timeout then)."""
    conn = http.client.HTTPConnection("127.0.0.1", st.web_port, timeout=timeout)
    try:
        conn.request("POST", path, body=urllib.parse.urlencode(data),
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              "Accept": "application/json", "Origin": st.web})
        r = conn.getresponse()
        return harness.Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read())
    finally:
        conn.close()


class OutboxCase(unittest.TestCase):
    """store None: the config's spool directory. test_outbox_pg runs the same classes with a
    store object there (PostgreSQL), which rewrites the config and looks at its own tables."""
    config = "outbox.json"
    store = None

    @classmethod
    def setUpClass(cls):
        config = cls.config if cls.store is None else cls.store.config(cls.config)
        cls.st = Stack(config).start()

    def stored(self, jid):
        """Where job jid is stored: "queue", "done", "dead" or None; never in two places."""
        if self.store is not None:
            return self.store.state_of(jid)
        found = [sub for sub in ("queue", "done", "dead")
                 if os.path.exists(os.path.join(spool_dir(self.st), sub, jid + ".json"))]
        self.assertLessEqual(len(found), 1, found)
        return found[0] if found else None

    def stored_jobs(self):
        """Every stored job: (unreadable, set aside as corrupt, {place: JSON text} of the queued
        and dead ones, dead places, temporary leftovers)."""
        if self.store is not None:
            texts = self.store.jobs(("queued", "dead"))
            return [], [], texts, [k for k in texts if k.startswith("dead/")], 0
        spool = spool_dir(self.st)
        bad, corrupt, texts = [], [], {}
        for sub in ("queue", "done", "dead", "keys"):
            for path in glob.glob(os.path.join(spool, sub, "*")):
                if path.endswith(".corrupt"):
                    corrupt.append(path)
                    continue
                try:
                    with open(path) as f:
                        obj = json.load(f)
                except (OSError, ValueError) as e:
                    bad.append("%s: %s" % (path, e))
                    continue
                if sub in ("queue", "dead"):
                    texts[path] = json.dumps(obj)
        dead = [p for p in texts if os.sep + "dead" + os.sep in p]
        return bad, corrupt, texts, dead, len(os.listdir(os.path.join(spool, "tmp")))

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def post(self, path, data, headers=None, script=True):
        h = {"Origin": self.st.web}
        h.update(headers or {})
        return self.st.post(path, data, headers=h, script=script)


# ---------------------------------------------------------------------------------------------

class Outage(OutboxCase):
    """A 72-hour outage on the outbox's own clock, with a production-like schedule. The bridge is
    stopped once the posts are queued: the passes are `queue run --now T` (the cron path), so the
    background thread's real-time retries do not muddle the count."""

    SCHEDULE = [5, 60, 300, 1800, 7200, 18000, 36000]
    JITTER = 0.1

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="leadbridge-outbox-conf-")
        with open(os.path.join(harness.HERE, "conf", "outbox.json")) as f:
            conf = json.load(f)
        conf["outbox"]["retry_schedule"] = cls.SCHEDULE
        conf["outbox"]["jitter"] = cls.JITTER
        cls.config = os.path.join(cls.tmp, "outbox-outage.json")
        with open(cls.config, "w") as f:
            json.dump(conf, f, indent=2)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_72_hour_outage_loses_nothing_and_delivers_once_in_order(self):
        st = self.st
        st.standin_mode({"api": "leadpro", "mode": "unavailable"})
        tokens = [token() for _ in range(3)]
        t0 = int(time.time())
        for i, t in enumerate(tokens):
            if i > 0:
                time.sleep(1.05)    # distinct "created" seconds: the queue's order is by second
            r = self.post("/lead/create", lead(t))
            self.assertEqual(r.status, 202, r)
            body = r.json()
            self.assertIs(body.get("ok"), True, body)
            self.assertEqual(body.get("status"), "queued", body)
            self.assertEqual(body["targets"]["leadpro"], "queued", body)   # our words only
            self.assertNotIn("503", json.dumps(body))

        listed = queue(st, "list")
        self.assertEqual(len(listed), 3, listed)
        for item in listed:
            self.assertEqual(item["state"], "queued", item)
            self.assertEqual(item["attempts"], 1, item)
            self.assertEqual(item["targets"]["leadpro"]["last_status"], 503, item)
        self.assertEqual(st.stop_bridge(), 0)

        jobs = [find_job(st, t) for t in tokens]
        ids = [j["id"] for j in jobs]
        self.assertEqual([x["id"] for x in listed], ids, "list is oldest first")
        created = {j["id"]: j["created"] for j in jobs}
        self.assertEqual(sorted(created.values()), [created[i] for i in ids])
        self.assertEqual(len(set(created.values())), 3)
        self.assertEqual(st.standin_leads("leadpro"), [])

        # The outage: a pass at each next due time until 72 hours have gone by.
        end = t0 + OUTAGE
        passes = 0
        state = {x["id"]: x for x in listed}
        while True:
            due = min(x["next_attempt"] for x in state.values())
            if due > end:
                break
            passes += 1
            self.assertLess(passes, 200, "the schedule never reached 72 hours")
            stats = queue(st, "run", now=due)
            self.assertEqual(stats["delivered"], 0, stats)
            self.assertEqual(stats["dead"], 0, stats)
            self.assertGreaterEqual(stats["retried"], 1, stats)
            after = {x["id"]: x for x in queue(st, "list")}
            self.assertEqual(set(after), set(ids))
            for jid, x in after.items():
                self.assertEqual(x["state"], "queued", x)
                before = state[jid]
                if before["next_attempt"] <= due:       # this pass retried it
                    self.assertEqual(x["attempts"], before["attempts"] + 1, x)
                    delay = self.SCHEDULE[min(x["attempts"] - 1, len(self.SCHEDULE) - 1)]
                    self.assertGreaterEqual(x["next_attempt"] - due,
                                            int(delay * (1 - self.JITTER)) - 1, (x, delay))
                    self.assertLessEqual(x["next_attempt"] - due,
                                         int(delay * (1 + self.JITTER)) + 1, (x, delay))
                else:
                    self.assertEqual(x["attempts"], before["attempts"], x)
                    self.assertEqual(x["next_attempt"], before["next_attempt"], x)
            state = after

        least, most = expected_attempts(self.SCHEDULE, self.JITTER, OUTAGE)
        attempts = {jid: x["attempts"] for jid, x in state.items()}
        for jid in ids:
            self.assertGreaterEqual(attempts[jid], least, attempts)
            self.assertLessEqual(attempts[jid], most, attempts)
        # every attempt reached the API, and none got through
        sent = [x for x in requests_for(st, "leadpro") if x.get("path", "").endswith("/leads")]
        self.assertEqual(len(sent), sum(attempts.values()))
        self.assertTrue(all(x["status"] == 503 for x in sent), [x["status"] for x in sent])
        for t in tokens:
            self.assertEqual(leads_with(st, "leadpro", t), [])
        sys.stderr.write("\noutage: %d passes over 72 h; attempts per job %s (schedule allows "
                         "%d..%d)\n" % (passes, sorted(attempts.values()), least, most))

        # The API is back: one pass once every job is due delivers all of them, oldest first.
        st.standin_mode({"api": "leadpro", "mode": "ok"})
        final = max(end + 1, max(x["next_attempt"] for x in state.values()))
        self.assertLess(final, min(created.values()) + 5 * 86400, "past max_age")
        stats = queue(st, "run", now=final)
        self.assertEqual((stats["delivered"], stats["done"], stats["dead"]), (3, 3, 0), stats)
        got = [x for x in st.standin_leads("leadpro") if x["json"]["last_name"][1:] in tokens]
        self.assertEqual([x["json"]["meta"]["leadbridge_id"] for x in got], ids,
                         "each job once, in submission order")
        for item in queue(st, "list", now=final):
            self.assertEqual(item["state"], "done", item)
            # the job's "attempts" counts the failed ones; the target's every try
            self.assertEqual(item["attempts"], attempts[item["id"]], item)
            self.assertEqual(item["targets"]["leadpro"]["attempts"], attempts[item["id"]] + 1,
                             item)
            self.assertEqual(item["targets"]["leadpro"]["status"], "delivered", item)
        # nothing is left to deliver twice
        stats = queue(st, "run", now=final + 7 * HOUR)
        self.assertEqual(stats["delivered"], 0, stats)
        self.assertEqual(len(st.standin_leads("leadpro")), 3)
        self.assertEqual([self.stored(j) for j in ids], ["done"] * 3)


# ---------------------------------------------------------------------------------------------

class Queue(OutboxCase):
    """Rate limits, permanent refusals, operator commands and duplicates on one stack."""

    def tearDown(self):
        self.st.standin_mode({"api": "all", "mode": "ok"})

    def test_retry_after_is_honoured_over_the_schedule(self):
        st, t = self.st, token()
        st.standin_mode({"api": "leadpro", "mode": "ratelimit", "retry_after": 120, "count": 1})
        before = int(time.time())
        r = self.post("/lead/create", lead(t))
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json()["status"], "queued", r)
        self.assertEqual(r.json()["targets"]["leadpro"], "queued", r)   # the 429 is in the job
        job = find_job(st, t)
        self.assertIsNotNone(job)
        self.assertEqual(job["state"], "queued", job)
        entry = job["targets"]["leadpro"]
        self.assertEqual(entry["last_status"], 429, job)
        # the schedule says 1 s; the API said 120
        self.assertGreaterEqual(job["next_attempt"], before + 120, job)
        self.assertGreaterEqual(job["next_attempt"], entry["last_attempt"] + 120, job)
        self.assertLessEqual(job["next_attempt"], int(time.time()) + 121, job)

        stats = queue(st, "run", now=before + 10)
        self.assertEqual(stats["delivered"], 0, stats)
        self.assertEqual(queue(st, "show", job["id"])["state"], "queued")
        self.assertEqual(queue(st, "show", job["id"])["attempts"], 1)
        self.assertEqual(leads_with(st, "leadpro", t), [])
        self.assertEqual(len([x for x in requests_for(st, "leadpro") if t in x["body"]]), 1)

        stats = queue(st, "run", now=before + 130)
        self.assertGreaterEqual(stats["delivered"], 1, stats)
        got = leads_with(st, "leadpro", t)
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["json"]["meta"]["leadbridge_id"], job["id"])
        shown = queue(st, "show", job["id"])
        self.assertEqual(shown["state"], "done", shown)
        self.assertEqual(shown["targets"]["leadpro"]["lead_id"], str(got[0]["id"]), shown)

    def test_permanent_refusal_is_a_dead_letter_at_once_then_retry_and_purge(self):
        st, t = self.st, token()
        r = self.post("/lead/create", lead(t, office="99"))
        self.assertEqual(r.status, 422, r)
        body = r.json()
        self.assertEqual(body["error"]["code"], "rejected", body)
        self.assertNotIn("office id is invalid", json.dumps(body))    # kept in the job
        job = find_job(st, t)
        self.assertIsNotNone(job, "the refused lead is kept as a dead letter")
        jid = job["id"]
        self.assertEqual(job["state"], "dead", job)
        self.assertIn("office id is invalid", job["dead_reason"])
        self.assertEqual(self.stored(jid), "dead")
        item = [x for x in queue(st, "list") if x["id"] == jid][0]
        self.assertEqual(item["state"], "dead", item)
        self.assertEqual(item["targets"]["leadpro"]["status"], "dead", item)
        self.assertEqual(item["targets"]["leadpro"]["last_status"], 422, item)
        self.assertIn("office id is invalid", item["targets"]["leadpro"]["last_error"])
        self.assertNotIn(t, json.dumps(item), "queue list holds no lead data")
        sent = [x for x in requests_for(st, "leadpro") if t in x["body"]]
        self.assertEqual([x["status"] for x in sent], [422], "no retry of a permanent refusal")

        # retry: back in the queue (due at the clock given), delivered again with the same id
        later = int(time.time()) + HOUR
        self.assertEqual(queue(st, "retry", jid, now=later), {"retried": 1})
        shown = queue(st, "show", jid)
        self.assertEqual(shown["state"], "queued", shown)
        self.assertEqual(shown["next_attempt"], later, shown)
        self.assertEqual(shown["targets"]["leadpro"]["status"], "pending", shown)
        self.assertEqual(self.stored(jid), "queue")
        stats = queue(st, "run", now=later)
        self.assertEqual(stats["dead"], 1, stats)
        sent = [x for x in requests_for(st, "leadpro") if t in x["body"]]
        self.assertEqual([x["status"] for x in sent], [422, 422])
        self.assertEqual({json.loads(x["body"])["meta"]["leadbridge_id"] for x in sent}, {jid})
        self.assertEqual(queue(st, "show", jid)["state"], "dead")

        # purge: dead letters finished before the clock go
        purged = queue(st, "purge", "--dead", "--older-than", "0", now=later + 1)
        self.assertGreaterEqual(purged["purged"], 1, purged)
        queue(st, "show", jid, expect_rc=1)
        self.assertIsNone(self.stored(jid))
        self.assertEqual([x for x in queue(st, "list") if x["state"] == "dead"], [])

    def test_idempotency_key_repeat_answers_the_same_and_makes_one_lead(self):
        st, t, key = self.st, token(), "key-" + token()
        r1 = self.post("/lead/create", lead(t), headers={"Idempotency-Key": key})
        self.assertEqual(r1.status, 200, r1)
        self.assertEqual(r1.json()["status"], "created", r1)
        self.assertIsInstance(r1.json()["lead"]["ref"], str, r1)
        r2 = self.post("/lead/create", lead(t), headers={"Idempotency-Key": key})
        self.assertEqual(r2.status, r1.status, r2)
        self.assertEqual(r2.json(), r1.json())
        self.assertEqual(len(leads_with(st, "leadpro", t)), 1)
        self.assertEqual(len([x for x in requests_for(st, "leadpro") if t in x["body"]]), 1)

    def test_idempotency_key_with_another_body_is_409(self):
        st, t, t2, key = self.st, token(), token(), "key-" + token()
        r1 = self.post("/lead/create", lead(t), headers={"Idempotency-Key": key})
        self.assertEqual(r1.status, 200, r1)
        r2 = self.post("/lead/create", lead(t2), headers={"Idempotency-Key": key})
        self.assertEqual(r2.status, 409, r2)
        self.assertIn("error", r2.json())
        self.assertEqual(leads_with(st, "leadpro", t2), [])
        self.assertEqual(len(leads_with(st, "leadpro", t)), 1)
        # the key is not spoiled by the refusal: the first body still replays
        r3 = self.post("/lead/create", lead(t), headers={"Idempotency-Key": key})
        self.assertEqual((r3.status, r3.json()), (r1.status, r1.json()))

    def test_50_identical_submissions_in_parallel_make_one_lead(self):
        st, t, n = self.st, token(), 50
        data = lead(t)
        barrier = threading.Barrier(n)
        answers = [None] * n

        def one(i):
            try:
                barrier.wait(timeout=20)
                answers[i] = self.post("/lead/create", data)
            except Exception as e:         # recorded, asserted below
                answers[i] = e

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        errors = [a for a in answers if not isinstance(a, harness.Response)]
        self.assertEqual(errors, [])
        statuses = sorted(a.status for a in answers)
        self.assertTrue(all(200 <= s < 300 for s in statuses), statuses)
        bodies = [a.json() for a in answers]
        self.assertEqual(bodies[0]["status"], "created", bodies[0])
        refs = {b["lead"]["ref"] for b in bodies}
        self.assertEqual(len(refs), 1, refs)
        self.assertTrue(all(b == bodies[0] for b in bodies))
        self.assertEqual(len(leads_with(st, "leadpro", t)), 1)
        self.assertEqual(len([x for x in requests_for(st, "leadpro") if t in x["body"]]), 1)


# ---------------------------------------------------------------------------------------------

class Crash(OutboxCase):
    """SIGKILL the bridge (and a cron-style `queue run`) under load, many rounds, posting to a
    form whose API de-duplicates by our id (Leadping's externalId)."""

    ROUNDS = 15
    CLIENTS = 8
    FORM = "/lead/ping"
    API = "leadping"

    def submission(self, t):
        return {"first_name": "Crash", "last_name": "T" + t, "email": "c.%s@example.com" % t,
                "phone": "07700 900321", "message": "crash test " + t}

    def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(self):
        st = self.st
        rnd = random.Random(os.environ.get("LB_CRASH_SEED") or None)
        stop = threading.Event()
        lock = threading.Lock()
        subs = []               # (token, status or exception name)
        kills = {"bridge": 0, "cron": 0}

        def client():
            while not stop.is_set():
                t = token()
                data = self.submission(t)
                try:
                    r = st.post(self.FORM, data, headers={"Origin": st.web})
                    outcome = r.status
                except Exception as e:      # connection reset etc.: not accepted
                    outcome = type(e).__name__
                with lock:
                    subs.append((t, outcome))
                if outcome not in (200, 202):
                    stop.wait(0.05)     # the bridge is down: do not spin on 502s

        def cron():
            # a second worker on the same spool, on a clock a minute ahead (so jobs the
            # request path holds are due for it too), killed at random as well
            env = st.bridge_env()
            env.pop("GATEWAY_INTERFACE", None)
            while not stop.is_set():
                p = subprocess.Popen([st.bin, "-c", st.config, "queue", "run", "--now",
                                      str(int(time.time()) + 60)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                try:
                    p.wait(timeout=rnd.uniform(0.005, 0.15))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
                    with lock:
                        kills["cron"] += 1
                stop.wait(rnd.uniform(0.05, 0.3))

        workers = [threading.Thread(target=client) for _ in range(self.CLIENTS)]
        workers.append(threading.Thread(target=cron))
        for w in workers:
            w.start()
        try:
            for _ in range(self.ROUNDS):
                time.sleep(rnd.uniform(0.3, 1.0))
                restart_bridge(st)
                kills["bridge"] += 1
            time.sleep(0.5)
        finally:
            stop.set()
            for w in workers:
                w.join(30)
        self.assertFalse(any(w.is_alive() for w in workers), "a client thread hung")

        # Drain: a clean bridge, then passes on a clock an hour ahead until nothing is queued.
        restart_bridge(st)
        # Interrupted attempts are looked up only once they can no longer be in flight (a few
        # real seconds each), so the drain may take a while on a loaded machine.
        for _ in range(120):
            queue(st, "run", now=int(time.time()) + HOUR)
            left = [x for x in queue(st, "list") if x["state"] == "queued"]
            if not left:
                break
            time.sleep(0.5)
        self.assertEqual(left, [], "jobs still queued after the drain")

        # Every stored job parses (spool: every file that is not in tmp/).
        bad, corrupt, spool_text, dead, tmp_left = self.stored_jobs()

        # What the API holds: Leadping dedupes a repeated externalId into one lead and counts
        # the repeats; LeadPro does not, so two leads for one submission are two records there.
        by_token = {}
        redeliveries = 0
        for rec in st.standin_leads(self.API):
            email = rec["json"].get("email", "")
            if email.startswith("c.") and email.endswith("@example.com"):
                by_token.setdefault(email[2:-len("@example.com")], []).append(rec)
                redeliveries += rec.get("duplicates", 0)
        ok = [t for t, s in subs if isinstance(s, int) and 200 <= s < 300]
        lost = [t for t in ok if t not in by_token and
                not any(t in text for text in spool_text.values())]
        dups = {t: [r["json"].get("externalId") or r.get("id") for r in recs]
                for t, recs in by_token.items() if len(recs) > 1}
        failed = [(t, s) for t, s in subs if not (isinstance(s, int) and 200 <= s < 300)]
        failed_delivered = sum(1 for t, _ in failed if t in by_token)
        statuses = {}
        for _, s in subs:
            statuses[s] = statuses.get(s, 0) + 1

        sys.stderr.write(
            "\ncrash figures (" + self.API + "): submissions %d, 2xx answers %d (%s), bridge SIGKILLs %d, "
            "cron SIGKILLs %d, lost %d, duplicates %d, re-deliveries absorbed by externalId %d, "
            "non-2xx answers later delivered anyway %d, dead letters %d, corrupt %d, "
            "unparseable %d, tmp/ leftovers %d\n"
            % (len(subs), len(ok), ", ".join("%s: %d" % (k, v) for k, v in sorted(
                statuses.items(), key=lambda kv: str(kv[0]))), kills["bridge"], kills["cron"],
               len(lost), len(dups), redeliveries, failed_delivered, len(dead), len(corrupt),
               len(bad), tmp_left))

        self.assertGreater(len(ok), 100, "too little load to mean anything: %r" % statuses)
        self.assertEqual(kills["bridge"], self.ROUNDS)
        self.assertEqual(bad, [], "half-written spool files")
        self.assertEqual(corrupt, [], "spool files moved aside as corrupt")
        self.assertEqual(lost, [], "answered 2xx but neither at the API nor in the spool")
        self.assertEqual(dups, {}, "one submission, two leads")
        self.assertEqual(dead, [], "dead letters after a crash")
        for t in ok:
            self.assertIn(t, by_token, "answered 2xx and not delivered after the drain")


class CrashLeadPro(Crash):
    """The same, against LeadPro, which makes a second lead for a repeated create: a job whose
    worker died mid-delivery is looked up (GET /person/leads) before it is sent again."""

    FORM = "/lead/create"
    API = "leadpro"

    def submission(self, t):
        return lead(t, email="c.%s@example.com" % t, message="crash test " + t)


class TookTheLeadThenDied(OutboxCase):
    """The API takes the lead, but the bridge is killed before it hears the answer: the outcome
    is unknown. The retry asks the API first (LeadPro: GET /person/leads, Lofty: GET /v1.0/leads,
    matched by our submission id) and makes no second lead."""

    def crash_after_create(self, form, api, data, t):
        st = self.st
        st.standin_mode({"api": api, "mode": "slow", "delay": 1.5, "count": 1})
        first = {}

        def go():
            try:
                first["r"] = self.post(form, data)
            except Exception as e:
                first["r"] = e

        th = threading.Thread(target=go)
        th.start()
        deadline = time.monotonic() + 10
        while not [x for x in requests_for(st, api) if t in x["body"]]:
            self.assertLess(time.monotonic(), deadline, "the lead never reached the API")
            time.sleep(0.02)
        restart_bridge(st)                  # SIGKILL while the API is making the lead
        th.join(20)
        deadline = time.monotonic() + 10
        while not leads_with(st, api, t):   # the slow API finishes the create anyway
            self.assertLess(time.monotonic(), deadline, "the API never made the lead")
            time.sleep(0.05)
        jobs = [x for x in queue(st, "list") if x["state"] == "queued"]
        self.assertEqual(len(jobs), 1, jobs)
        return jobs[0]["id"]

    def run_until_done(self, limit=30):
        """`queue run` passes on a clock far ahead, until the job is done. An interrupted attempt
        is looked up only once it can no longer be in flight (the target's timeout, on the wall
        clock, plus the API's settling time), so this takes a few real seconds."""
        st = self.st
        deadline = time.monotonic() + limit
        step = 1
        while True:
            stats = queue(st, "run", now=int(time.time()) + step * HOUR)
            if stats["done"] > 0 or time.monotonic() > deadline:
                return stats
            step += 1
            time.sleep(0.5)

    def searches(self, api):
        status, obj = self.st.standin_get("/_control/state")
        return obj.get("searches", {}).get(api, 0) if status == 200 else 0

    def test_leadpro_lead_made_before_the_crash_is_found_not_made_again(self):
        st, t = self.st, token()
        jid = self.crash_after_create("/lead/create", "leadpro", lead(t), t)
        before = self.searches("leadpro")
        stats = self.run_until_done()
        self.assertEqual(stats["done"], 1, stats)
        got = leads_with(st, "leadpro", t)
        self.assertEqual(len(got), 1, "one submission, %d LeadPro leads" % len(got))
        self.assertGreater(self.searches("leadpro"), before, "the retry did not ask LeadPro")
        job = queue(st, "show", jid)
        self.assertEqual(job["state"], "done")
        self.assertEqual(str(job["targets"]["leadpro"]["lead_id"]), str(got[0]["id"]))

    def test_lofty_lead_made_before_the_crash_is_found_not_made_again(self):
        st, t = self.st, token()
        data = {"first_name": "Lo", "last_name": "F" + t, "email": "l.%s@example.com" % t,
                "phone": "07700 900456", "message": "Lofty " + t}
        jid = self.crash_after_create("/lead/lofty", "lofty", data, t)
        before = self.searches("lofty")
        stats = self.run_until_done()
        self.assertEqual(stats["done"], 1, stats)
        got = leads_with(st, "lofty", t)
        self.assertEqual(len(got), 1, "one submission, %d Lofty leads" % len(got))
        self.assertGreater(self.searches("lofty"), before, "the retry did not ask Lofty")
        self.assertEqual(str(queue(st, "show", jid)["targets"]["lofty"]["lead_id"]),
                         str(got[0]["id"]))

    def test_a_clean_failure_is_retried_without_a_search(self):
        st, t = self.st, token()
        st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        r = self.post("/lead/create", lead(t))
        self.assertEqual(r.status, 202, r)
        before = self.searches("leadpro")
        stats = queue(st, "run", now=int(time.time()) + 60)
        self.assertEqual(stats["done"], 1, stats)
        self.assertEqual(self.searches("leadpro"), before, "a known 503 needs no search")
        self.assertEqual(len(leads_with(st, "leadpro", t)), 1)


class KilledMidDelivery(OutboxCase):
    """The bridge dies while the API is answering; the visitor's page then sends the same form
    again (it got a 502)."""

    scenario = None

    def crash_mid_delivery(self):
        """Once per class: posts a lead while the API hangs, SIGKILLs the bridge as soon as the
        API has the request, restarts it, and delivers with one `queue run` a minute ahead (past
        the request path's 30 s grace, within the 5-minute duplicate window), once the
        interrupted attempt can no longer be in flight.
        Returns (form data, token, job id, first answer, queue run stats)."""
        if self.__class__.scenario is not None:
            return self.__class__.scenario
        st, t = self.st, token()
        data = lead(t)
        st.standin_mode({"api": "leadpro", "mode": "hang"})
        first = {}

        def go():
            try:
                first["r"] = self.post("/lead/create", data)
            except Exception as e:
                first["r"] = e

        th = threading.Thread(target=go)
        th.start()
        deadline = time.monotonic() + 10
        while not [x for x in requests_for(st, "leadpro") if t in x["body"]]:
            self.assertLess(time.monotonic(), deadline, "the lead never reached the API")
            time.sleep(0.02)
        restart_bridge(st)                  # SIGKILL while the API holds the request
        th.join(20)
        st.standin_reset()
        listed = queue(st, "list")
        self.assertEqual([x["state"] for x in listed], ["queued"], listed)
        jid = listed[0]["id"]
        # The interrupted attempt is looked up (and, not found, sent again) only once it can no
        # longer be in flight: a few real seconds (the target's timeouts + 1).
        # The clock stays a minute ahead: further would expire the content fingerprint that the
        # repeat below relies on.
        deadline = time.monotonic() + 20
        while True:
            stats = queue(st, "run", now=int(time.time()) + 60)
            if stats["delivered"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.__class__.scenario = (data, t, jid, first["r"], stats)
        return self.__class__.scenario

    def test_killed_mid_delivery_job_survives_and_is_delivered_once(self):
        st = self.st
        data, t, jid, first, stats = self.crash_mid_delivery()
        self.assertEqual(first.status, 502, first)
        self.assertEqual(stats["delivered"], 1, stats)
        got = leads_with(st, "leadpro", t)
        self.assertEqual([x["json"]["meta"]["leadbridge_id"] for x in got], [jid])
        self.assertEqual(queue(st, "show", jid)["state"], "done")

    def test_repeat_of_a_crashed_submission_is_answered_at_once(self):
        """The first request died before storing an answer (and the retry worker stores none):
        a repeat of the same content is answered at once from the job's state (queued or
        created), not left waiting for an answer that will never come."""
        st = self.st
        data, t, jid, first, stats = self.crash_mid_delivery()
        try:
            r = post_with_timeout(st, "/lead/create", data, timeout=5)
            self.assertTrue(200 <= r.status < 300, r)
        finally:
            restart_bridge(st)              # frees a worker still waiting in replay()
        self.assertEqual(len(leads_with(st, "leadpro", t)), 1)
