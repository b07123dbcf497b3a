"""A real, temporary PostgreSQL server for the tests (Debian's `postgresql` package).

PgCluster runs `initdb` into a fresh temp directory and `pg_ctl start` on a free loopback port
(and a unix socket in the same directory), as an unprivileged user: the caller when it is not
root, else the `postgres` system user the package creates (or `nobody`). Authentication is
`trust` on loopback and the socket only; nothing listens beyond 127.0.0.1. stop() removes the
directory (kept with LB_KEEP_TMP=1 or after a failure). Plain standard library: queries go
through `psql -At`.

    with PgCluster() as pg:
        dsn = pg.create_database("t1")       # "host=127.0.0.1 port=... dbname=t1 user=..."
        pg.sql("t1", "SELECT count(*) FROM outbox_jobs")
        pg.restart()                          # or pg.stop_server("immediate"); pg.start_server()
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

ADMIN = "lbtest"       # the cluster's superuser (initdb -U)
START_TIMEOUT = 60


def find_bindir():
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and pg_ctl, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and \
                os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            try:
                found.append((int(os.path.basename(os.path.dirname(d))), d))
            except ValueError:
                pass
    return max(found)[1] if found else None


def _free_port():
    import harness
    return harness.free_port()


def _run_as():
    """(uid, gid) to run the server as: ourselves unless root, else postgres or nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    raise RuntimeError("running as root and no postgres or nobody user to run PostgreSQL as")


class PgCluster:
    """One temporary PostgreSQL server; a context manager. fsync=False (the default) keeps
    the tests fast: a server stopped with "immediate" still keeps every committed transaction
    (the operating system's page cache survives); only a power loss would not."""

    def __init__(self, fsync=False, extra_conf=None, keep=None):
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql "
                               "(run scripts/setup-deps: Debian package postgresql)")
        self.fsync = fsync
        self.extra_conf = dict(extra_conf or {})
        self.keep = keep if keep is not None else bool(os.environ.get("LB_KEEP_TMP"))
        self.port = _free_port()
        self.dir = None
        self.failed = False
        self.ids = _run_as()

    # -- helpers --------------------------------------------------------------------------------

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    @property
    def log(self):
        return os.path.join(self.dir, "server.log")

    def _env(self):
        # From scratch: never the caller's PG* variables; everything is passed explicitly.
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "LC_ALL": "C", "TZ": "UTC"}

    def _cmd(self, argv, timeout=START_TIMEOUT, check=True, input_text=None):
        kw = {}
        if self.ids is not None:
            kw = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
        if input_text is not None:
            kw["input"] = input_text.encode()
        else:
            kw["stdin"] = subprocess.DEVNULL
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=self._env(), cwd=self.dir, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (
                os.path.basename(argv[0]), p.returncode, p.stderr.decode(errors="replace"),
                self.tail()))
        return p

    def tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "\n--- server.log ---\n" + "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # -- life cycle -----------------------------------------------------------------------------

    def start(self):
        t0 = time.monotonic()
        self.dir = tempfile.mkdtemp(prefix="leadbridge-pg-")
        try:
            if self.ids is not None:
                os.chown(self.dir, self.ids[0], self.ids[1])
            self._cmd([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", ADMIN,
                       "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            conf = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": "'%s'" % self.dir,
                "fsync": "on" if self.fsync else "off",
                "full_page_writes": "on" if self.fsync else "off",
                "max_connections": "200",
                "shared_buffers": "32MB",
                "log_min_messages": "warning",
                "logging_collector": "off",
            }
            conf.update(self.extra_conf)
            with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
                for k, v in conf.items():
                    f.write("%s = %s\n" % (k, v))
            self.start_server()
        except BaseException:
            self.failed = True
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def start_server(self):
        """pg_ctl start, waiting until it accepts connections."""
        self._cmd([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log,
                   "-w", "-t", str(START_TIMEOUT), "start"])

    def stop_server(self, mode="fast"):
        """pg_ctl stop: "fast" (clients disconnected, clean shutdown) or "immediate" (as if the
        server crashed: recovery replays the WAL at the next start)."""
        if self.dir and os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._cmd([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", mode, "-w",
                       "-t", str(START_TIMEOUT), "stop"], check=False)

    def restart(self, mode="fast"):
        self.stop_server(mode)
        self.start_server()

    def stop(self):
        if self.dir is None:
            return
        self.stop_server("fast")
        if self.failed or self.keep:
            print("pgcluster: keeping %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
        self.stop()
        return False

    # -- using it -------------------------------------------------------------------------------

    def dsn(self, dbname="postgres"):
        """A libpq connection string for dbname over TCP loopback."""
        return "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=5" % (
            self.port, dbname, ADMIN)

    def create_database(self, name):
        """Creates database name (dropping one of that name first); returns its DSN."""
        self.sql("postgres", 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
        self.sql("postgres", 'CREATE DATABASE "%s"' % name)
        return self.dsn(name)

    def sql(self, dbname, query):
        """Runs query (one or more statements) with psql; returns the rows of the last one as
        lists of strings ("|"-separated columns)."""
        p = self._cmd([os.path.join(self.bindir, "psql"), "-X", "-q", "-At", "-v",
                       "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port), "-U", ADMIN,
                       "-d", dbname, "-f", "-"], input_text=query, timeout=60)
        out = p.stdout.decode()
        return [line.split("|") for line in out.splitlines() if line != ""]

    def scalar(self, dbname, query):
        rows = self.sql(dbname, query)
        return rows[0][0] if rows else None
