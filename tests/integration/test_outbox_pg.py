"""test_outbox_pg.py: the outbox's behaviour tests (test_outbox.py, the same code) on the
PostgreSQL store: "outbox": {"store": "postgresql", "dsn": ...} against a real, temporary
PostgreSQL server (pgcluster.py), one database per test class, migrated with
`leadbridge db migrate` before the bridge starts.

Only where a test looks inside the store does it differ: a job's place is its row's state, and
"every stored job parses" reads the rows instead of spool files.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

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
