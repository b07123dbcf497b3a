"""test_pg_db.py: `leadbridge db migrate|status` against a real, temporary PostgreSQL server.

- migrate creates the schema (jobs, keys, the targets' rate buckets, the version table) and says
  so; a second migrate changes nothing; status exits 0 only when the version is this build's.
- A database left at version 1 (its unused per-window rate table) is migrated to this version.
- Four hosts migrating at once: one migrates, the others find nothing to do (advisory lock).
- A database newer than the program is refused, and so is an unreachable one (exit 1, a clear
  message, no password in it); a spool config has no database to migrate (exit 2).
"""

import json
import os
import subprocess
import tempfile
import threading
import time
import unittest

import harness
from pgcluster import PgCluster

SCHEMA = 3  # DB_SCHEMA_VERSION (src/db.h)


def run(args, config, timeout=60):
    # Hermetic: only what the program needs, never the caller's LEADBRIDGE_* or PG* variables.
    env = harness.base_env(LC_ALL="C")
    p = subprocess.run([harness.find_binary(), "-c", config] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def write_config(dir, outbox):
    path = os.path.join(dir, "leadbridge.json")
    with open(path, "w") as f:
        json.dump({"secret": "s" * 32, "spool": os.path.join(dir, "spool"), "outbox": outbox,
                   "targets": {}, "forms": {"e": {"path": "/e", "action": "echo"}}}, f)
    return path


class DbMigrate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        t0 = time.monotonic()
        cls.pg = PgCluster().start()
        cls.dir = tempfile.mkdtemp(prefix="leadbridge-pgdb-")
        print("pg: cluster started in %.1f s" % (time.monotonic() - t0))

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()
        subprocess.run(["rm", "-rf", cls.dir])

    def config_for(self, db):
        dsn = self.pg.create_database(db)
        d = os.path.join(self.dir, db)
        os.makedirs(d, exist_ok=True)
        return write_config(d, {"store": "postgresql", "dsn": dsn})

    def test_migrate_creates_schema_once(self):
        conf = self.config_for("migrate_once")
        rc, out, err = run(["db", "status"], conf)
        self.assertEqual(rc, 1, err)
        self.assertIn("schema version 0", out)
        self.assertIn("leadbridge db migrate", err)
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual((rc, out.strip()), (0, "schema migrated from version 0 to %d" % SCHEMA),
                         err)
        self.assertEqual(err, "")
        tables = {r[0] for r in self.pg.sql(
            "migrate_once", "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        self.assertEqual(tables, {"leadbridge_schema", "leadbridge_outbox_jobs",
                                  "leadbridge_outbox_keys", "leadbridge_target_rate",
                                  "leadbridge_spam"})
        # The duplicate keys are unique by their hash.
        idx = self.pg.scalar("migrate_once", "SELECT indexdef FROM pg_indexes WHERE "
                             "tablename = 'leadbridge_outbox_keys' AND indexdef LIKE '%UNIQUE%'")
        self.assertIn("key_hash", idx)
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual((rc, out.strip(), err),
                         (0, "schema is at version %d: nothing to do" % SCHEMA, ""))
        rc, out, err = run(["db", "status"], conf)
        self.assertEqual((rc, out.strip()),
                         (0, "schema version %d (this leadbridge needs %d)" % (SCHEMA, SCHEMA)))
        self.assertEqual(self.pg.scalar("migrate_once",
                                        "SELECT string_agg(version::text, ',' ORDER BY version)"
                                        " FROM leadbridge_schema"),
                         ",".join(str(v) for v in range(1, SCHEMA + 1)))

    def test_migrate_from_version_1(self):
        conf = self.config_for("migrate_v1")
        self.assertEqual(run(["db", "migrate"], conf)[0], 0)
        # Back to what version 1 made: its per-window rate table, unused, and no quarantine.
        self.pg.sql("migrate_v1", "DELETE FROM leadbridge_schema WHERE version > 1")
        self.pg.sql("migrate_v1", "DROP TABLE leadbridge_target_rate, leadbridge_spam")
        self.pg.sql("migrate_v1", "CREATE TABLE leadbridge_target_rate (target text NOT NULL,"
                    " window_start bigint NOT NULL, sent integer NOT NULL DEFAULT 0,"
                    " PRIMARY KEY (target, window_start))")
        rc, out, err = run(["db", "status"], conf)
        self.assertEqual(rc, 1, out)
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual((rc, out.strip()),
                         (0, "schema migrated from version 1 to %d" % SCHEMA), err)
        cols = {r[0] for r in self.pg.sql(
            "migrate_v1", "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'leadbridge_target_rate'")}
        self.assertEqual(cols, {"target", "tat", "not_before"})
        self.assertEqual(self.pg.scalar("migrate_v1", "SELECT to_regclass('leadbridge_spam')"),
                         "leadbridge_spam")

    def test_concurrent_migrations(self):
        conf = self.config_for("migrate_race")
        results = []

        def one():
            results.append(run(["db", "migrate"], conf))
        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r[0] for r in results], [0] * 4, results)
        outs = sorted(r[1].strip() for r in results)
        self.assertEqual(outs, ["schema is at version %d: nothing to do" % SCHEMA] * 3
                         + ["schema migrated from version 0 to %d" % SCHEMA])

    def test_newer_database_refused(self):
        conf = self.config_for("migrate_newer")
        self.assertEqual(run(["db", "migrate"], conf)[0], 0)
        self.pg.sql("migrate_newer", "INSERT INTO leadbridge_schema (version) VALUES (99)")
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual(rc, 1)
        self.assertIn("newer than this leadbridge", err)
        rc, out, err = run(["db", "status"], conf)
        self.assertEqual(rc, 1)
        self.assertIn("schema version 99", out)

    def test_unreachable_database(self):
        port = harness.free_port()
        conf = write_config(self.dir, {"store": "postgresql", "dsn":
                                       "host=127.0.0.1 port=%d dbname=x user=u "
                                       "password=hunter2secret" % port})
        t0 = time.monotonic()
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual(rc, 1)
        self.assertIn("the database is unreachable", err)
        self.assertNotIn("hunter2secret", err + out)
        self.assertLess(time.monotonic() - t0, 10)

    def test_not_for_a_spool(self):
        conf = write_config(self.dir, {})
        rc, out, err = run(["db", "migrate"], conf)
        self.assertEqual(rc, 2)
        self.assertIn("spool directory", err)

    def test_config_checks(self):
        conf = write_config(self.dir, {"store": "postgresql"})
        rc, out, err = run(["--check"], conf)
        self.assertEqual(rc, 1)
        self.assertIn('outbox: missing required key "dsn"', err)
        conf = write_config(self.dir, {"store": "mysql", "dsn": "x"})
        rc, out, err = run(["--check"], conf)
        self.assertEqual(rc, 1)
        self.assertIn("outbox.store: must be", err)
        conf = write_config(self.dir, {"dsn": "host=x"})
        rc, out, err = run(["--check"], conf)
        self.assertEqual(rc, 1)
        self.assertIn("outbox.dsn: only with", err)


if __name__ == "__main__":
    unittest.main()
