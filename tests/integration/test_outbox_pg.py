"""test_outbox_pg.py: the outbox's behaviour tests (test_outbox.py, the same code) on the
PostgreSQL store: "outbox": {"store": "postgresql", "dsn": ...} against a real, temporary
PostgreSQL server (pgcluster.py), one database per test class, migrated with
`leadbridge db migrate` before the bridge starts.

Only where a test looks inside the store does it differ: a job's place is its row's state, and
"every stored job parses" reads the rows instead of spool files.

QueueStats: `queue stats` (and so the health and metrics endpoints) on PostgreSQL counts with
aggregate queries: the numbers are right, and the server's statement log shows no job read.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import harness
import test_outbox as base
from pgcluster import PgCluster

PG = None


def setUpModule():
    global PG
    t0 = time.monotonic()
    PG = PgCluster().start()
    print("pg: cluster started in %.1f s" % (time.monotonic() - t0))


def tearDownModule():
    if PG is not None:
        PG.stop()


def migrate(dsn):
    """Runs `leadbridge db migrate` for dsn with a config of its own; raises on failure."""
    d = tempfile.mkdtemp(prefix="leadbridge-pgmig-")
    try:
        conf = os.path.join(d, "migrate.json")
        with open(conf, "w") as f:
            json.dump({"secret": "m" * 32, "outbox": {"store": "postgresql", "dsn": dsn},
                       "targets": {}, "forms": {"e": {"path": "/e", "action": "echo"}}}, f)
        p = subprocess.run([harness.find_binary(), "-c", conf, "db", "migrate"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=harness.base_env(), timeout=60)
        if p.returncode != 0:
            raise RuntimeError("db migrate failed: %s" % p.stderr.decode())
    finally:
        shutil.rmtree(d, ignore_errors=True)


class PgStore:
    """One database for one test class; rewrites a config to use it."""

    PLACES = {"queued": "queue", "done": "done", "dead": "dead"}

    def __init__(self, name):
        self.db = name.lower()
        self.dsn = PG.create_database(self.db)
        migrate(self.dsn)
        self.tmp = tempfile.mkdtemp(prefix="leadbridge-pgconf-")

    def config(self, config):
        src = config if os.path.isabs(config) else os.path.join(harness.HERE, "conf", config)
        with open(src) as f:
            conf = json.load(f)
        conf.setdefault("outbox", {}).update({"store": "postgresql", "dsn": self.dsn})
        path = os.path.join(self.tmp, os.path.basename(src))
        with open(path, "w") as f:
            json.dump(conf, f, indent=2)
        return path

    def state_of(self, jid):
        state = PG.scalar(self.db, "SELECT state FROM leadbridge_outbox_jobs WHERE id = '%s'"
                          % jid.replace("'", ""))
        return self.PLACES.get(state) if state else None

    def jobs(self, states):
        """{"<place>/<id>": JSON text} of the jobs in states."""
        rows = PG.sql(self.db, "SELECT state, id, job::text FROM leadbridge_outbox_jobs WHERE "
                      "state IN (%s)" % ", ".join("'%s'" % s for s in states))
        return {"%s/%s" % (self.PLACES[r[0]], r[1]): "|".join(r[2:]) for r in rows}

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class PgMixin:
    @classmethod
    def setUpClass(cls):
        cls.store = PgStore(cls.__name__)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.store.close()


class OutageOnPg(PgMixin, base.Outage):
    pass


class QueueOnPg(PgMixin, base.Queue):
    pass


class CrashOnPg(PgMixin, base.Crash):
    pass


class KilledMidDeliveryOnPg(PgMixin, base.KilledMidDelivery):
    scenario = None


class CrashLeadProOnPg(PgMixin, base.CrashLeadPro):
    pass


class TookTheLeadThenDiedOnPg(PgMixin, base.TookTheLeadThenDied):
    pass


class QueueStats(unittest.TestCase):
    def setUp(self):
        self.db = "queue_stats"
        self.dsn = PG.create_database(self.db)
        migrate(self.dsn)
        self.tmp = tempfile.mkdtemp(prefix="leadbridge-pgstats-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.conf = os.path.join(self.tmp, "stats.json")
        with open(self.conf, "w") as f:
            json.dump({"secret": "q" * 32, "spool": os.path.join(self.tmp, "spool"),
                       "outbox": {"store": "postgresql", "dsn": self.dsn},
                       "targets": {}, "forms": {"e": {"path": "/e", "action": "echo"}}}, f)

    def test_counts_without_reading_jobs(self):
        now = int(time.time())
        rows = [("queued", now - 500), ("queued", now - 90), ("queued", now - 10),
                ("done", now - 400), ("done", now - 300), ("dead", now - 200)]
        PG.sql(self.db, "".join(
            "INSERT INTO leadbridge_outbox_jobs (id, form, state, created, next_attempt, "
            "finished, job) VALUES ('%032x', 'e', '%s', %d, %d, %s, '{\"created\": %d}');\n"
            % (i + 1, state, created, created, "NULL" if state == "queued" else created,
               created)
            for i, (state, created) in enumerate(rows)))
        PG.sql(self.db, "ALTER DATABASE %s SET log_statement = 'all'" % self.db)
        self.addCleanup(PG.sql, self.db, "ALTER DATABASE %s RESET log_statement" % self.db)
        with open(PG.log, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            start = f.tell()
        p = subprocess.run([harness.find_binary(), "-c", self.conf, "queue", "stats", "--json",
                            "--now", str(now)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=harness.base_env(), timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        q = json.loads(p.stdout)["queue"]
        self.assertEqual((q["queued"], q["done"], q["dead"]), (3, 2, 1), q)
        self.assertGreaterEqual(q["oldest_age"], 500)
        self.assertLess(q["oldest_age"], 560)
        with open(PG.log, errors="replace") as f:
            f.seek(start)
            logged = f.read()
        self.assertIn("leadbridge_schema", logged, "the statement log is on")
        self.assertNotIn("job::text", logged, "queue stats read no job")
