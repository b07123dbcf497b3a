"""test_deploy.py: leadbridge deployed the ways README.md and leadbridge(8) describe.

- Apache httpd running the binary as a plain CGI program (mod_cgi, prefork MPM);
- Apache httpd with mod_fcgid starting the binary as a FastCGI application (socket on fd 0);
- spawn-fcgi -F 2 (two processes on one inherited socket) behind nginx: requests spread over
  both, SIGTERM lets a request in flight finish and each process exits 0;
- systemd-style socket activation without systemd: a listening socket on fd 3 with LISTEN_FDS=1
  and LISTEN_PID set to the bridge's own pid.

Each server is our own, on loopback high ports, with its files in the run's temp dir (the
Apache configuration templates are in apache/ beside this file); every wait is bounded. A class
whose web server is not installed is skipped with the reason (scripts/setup-deps installs
apache2, libapache2-mod-fcgid and spawn-fcgi).
"""

import json
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

import harness
from harness import Stack

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "conf", "deploy.json")
APACHE_TEMPLATES = os.path.join(HERE, "apache")
WAIT = 20.0                 # seconds for any one process to start or stop

CREATE_FIELDS = {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
                 "phone": "07986000000", "property": "1 High Street, Derby"}


def find_apache():
    """(apache2 binary, modules directory), or (None, reason)."""
    for name in ("apache2", "httpd"):
        b = shutil.which(name)
        if b is None:
            for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/apache2/bin"):
                if os.access(os.path.join(d, name), os.X_OK):
                    b = os.path.join(d, name)
                    break
        if b is not None:
            break
    if b is None:
        return None, "apache2 is not installed (scripts/setup-deps should install apache2)"
    for d in ("/usr/lib/apache2/modules", "/usr/lib64/httpd/modules", "/usr/lib/httpd/modules",
              "/usr/local/apache2/modules"):
        if os.path.exists(os.path.join(d, "mod_mpm_prefork.so")):
            return (b, d), None
    return None, "apache2 is installed but its modules directory was not found"


APACHE, APACHE_MISSING = find_apache()


def wait_until(pred, timeout=WAIT, step=0.05):
    """Polls pred() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_process(p, sig=signal.SIGTERM):
    """Signals a Popen we started and waits (bounded); SIGKILL if it does not exit. Returns the
    exit status, or "killed"."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            return p.wait(timeout=WAIT)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=WAIT)
            return "killed"
    return p.returncode


def open_for_others(path):
    """Lets the unprivileged user a web server runs scripts as reach path (as root only)."""
    if os.geteuid() == 0:
        os.chmod(path, 0o755)


def deploy_stack(**kw):
    """A Stack with the deployment config: stand-in APIs and the test environment (its own
    FastCGI bridge runs too but these tests talk to the bridges they start themselves)."""
    return Stack(CONFIG, nginx=False, threads=1, **kw)


def bridge_vars(st):
    """The variables the config's ${VAR}s need (those Stack adds to the environment), plus the
    sanitizers' options when set."""
    out = st.config_vars()
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            out[k] = os.environ[k]
    return out


def apache_quote(v):
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# ---------------------------------------------------------------------------------------------
# Apache

class Apache:
    """Our own Apache httpd (prefork) serving /lead with the bridge as CGI ("cgi") or through
    mod_fcgid ("fcgid"), in st.dir/apache. Listens on st.web_port so that the config's origins
    and pages (LB_TEST_WEB) name it."""

    def __init__(self, st, kind):
        self.st = st
        self.kind = kind
        self.bin, self.moddir = APACHE
        self.dir = os.path.join(st.dir, "apache")
        self.port = st.web_port
        self.proc = None

    @property
    def error_log(self):
        return os.path.join(self.dir, "apache-error.log")

    def _modules(self):
        built_in = subprocess.run([self.bin, "-l"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        wanted = [("mpm_prefork_module", "mod_mpm_prefork.so"),
                  ("authz_core_module", "mod_authz_core.so"),
                  ("alias_module", "mod_alias.so"),
                  ("env_module", "mod_env.so"),
                  ("log_config_module", "mod_log_config.so"),
                  ("unixd_module", "mod_unixd.so")]
        wanted.append(("cgi_module", "mod_cgi.so") if self.kind == "cgi"
                      else ("fcgid_module", "mod_fcgid.so"))
        lines = []
        for name, so in wanted:
            if so.replace(".so", ".c") in built_in:
                continue
            path = os.path.join(self.moddir, so)
            if not os.path.exists(path):
                raise unittest.SkipTest("Apache module %s is not installed%s" % (
                    so, " (libapache2-mod-fcgid)" if self.kind == "fcgid" else ""))
            lines.append("LoadModule %s %s" % (name, path))
        return "\n".join(lines)

    def start(self):
        for d in ("", "run", "htdocs", "bin", "fcgid"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        # The scripts run as an unprivileged user: they must reach the binary, the config and
        # the spool; the binary is copied so that its own directory's permissions do not matter.
        binary = os.path.join(self.dir, "bin", "leadbridge")
        shutil.copy2(self.st.bin, binary)
        os.chmod(binary, 0o755)
        for d in (self.st.dir, self.dir, os.path.join(self.dir, "bin")):
            open_for_others(d)
        if os.geteuid() == 0:
            os.chmod(self.st.config, 0o644)
        # The bridges Apache runs have a spool of their own, writable by the user they run as
        # (the spool of the Stack's bridge belongs to the user running the tests).
        spool = os.path.join(self.dir, "spool")
        os.makedirs(spool, exist_ok=True)
        user = ""
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            gid = grp.getgrnam("nogroup").gr_gid if self._has_group("nogroup") else pw.pw_gid
            user = "User nobody\nGroup %s" % grp.getgrgid(gid).gr_name
            for d in (spool, os.path.join(self.dir, "fcgid")):
                os.chown(d, pw.pw_uid, gid)
        variables = bridge_vars(self.st)
        variables.update({"LB_TEST_SPOOL": spool, "LEADBRIDGE_SPOOL": spool})
        directive = "SetEnv" if self.kind == "cgi" else "FcgidInitialEnv"
        env = "\n".join("    %s %s %s" % (directive, k, apache_quote(v))
                        for k, v in sorted(variables.items()))
        with open(os.path.join(APACHE_TEMPLATES, self.kind + ".conf.in")) as f:
            lead = f.read()
        with open(os.path.join(APACHE_TEMPLATES, "httpd.conf.in")) as f:
            text = f.read()
        text = text.replace("@LEAD@", lead)
        for k, v in {"@DIR@": self.dir, "@PORT@": str(self.port), "@MODDIR@": self.moddir,
                     "@USER@": user, "@MODULES@": self._modules(), "@ENV@": env,
                     "@BINDIR@": os.path.join(self.dir, "bin"),
                     "@CONFIG@": self.st.config}.items():
            text = text.replace(k, v)
        conf = os.path.join(self.dir, "httpd.conf")
        with open(conf, "w") as f:
            f.write(text)
        with open(os.path.join(self.dir, "htdocs", "index.html"), "w") as f:
            f.write("<!doctype html><title>leadbridge deploy test</title>\n")
        log = open(os.path.join(self.dir, "apache-stderr.log"), "ab")
        try:
            self.proc = subprocess.Popen([self.bin, "-f", conf, "-DFOREGROUND"],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=harness.base_env(), cwd=self.dir,
                                         start_new_session=True)
        finally:
            log.close()
        if not wait_until(lambda: self.proc.poll() is not None or accepting(self.port)) \
                or self.proc.poll() is not None:
            out = harness.tail(os.path.join(self.dir, "apache-stderr.log")) + \
                harness.tail(self.error_log)
            self.stop()
            raise RuntimeError("Apache did not start (%s):\n%s" % (self.proc.returncode, out))
        return self

    @staticmethod
    def _has_group(name):
        try:
            grp.getgrnam(name)
            return True
        except KeyError:
            return False

    def stop(self):
        """SIGTERM (Apache's immediate stop: children and FastCGI processes are told to stop).
        Returns Apache's exit status."""
        if self.proc is None:
            return None
        rc = stop_process(self.proc)
        # Apache's children and FastCGI processes share its process group: none may outlive it.
        if not wait_until(lambda: not group_alive(self.proc.pid), timeout=5):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return rc

    def log(self):
        return harness.tail(self.error_log, 100000)

    def bridge_pids(self):
        """Pids of the live leadbridge processes Apache started (our copy of the binary)."""
        binary = os.path.join(self.dir, "bin", "leadbridge")
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.readlink("/proc/%s/exe" % d) == binary and pid_alive(int(d)):
                        pids.append(int(d))
                except OSError:
                    pass
        return pids


class ApacheChecks:
    """The same checks through Apache, whichever way it runs the bridge (a mixin)."""

    kind = None

    @classmethod
    def setUpClass(cls):
        if APACHE is None:
            raise unittest.SkipTest(APACHE_MISSING)
        cls.st = deploy_stack().start()
        try:
            cls.apache = Apache(cls.st, cls.kind).start()
        except BaseException:
            cls.st.stop(check=False)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.apache.stop()
        cls.st.stop()
        log = cls.apache.log()      # the bridges' stderr, up to their exit (leak reports)
        for m in SANITIZER_MARKERS:
            if m in log:
                raise AssertionError("sanitizer report in Apache's error log:\n" + log[-5000:])

    def post(self, path, data, content_type="application/x-www-form-urlencoded", headers=None,
             script=True):
        h = {"Origin": self.st.web}
        h.update(headers or {})
        return self.st.post(path, data, content_type, h, script)

    def echo(self, data, content_type="application/x-www-form-urlencoded", headers=None,
             path="/lead/echo"):
        r = self.post(path, data, content_type, headers)
        self.assertEqual(r.status, 200, "%r\n%s" % (r, harness.tail(self.apache.error_log)))
        self.assertIn("application/json", r.header("content-type", ""))
        body = r.json()
        self.assertIs(body.get("ok"), True, body)
        self.assertEqual(body.get("form"), "echo", body)
        return body

    def assertError(self, r, status, code):
        self.assertEqual(r.status, status, r)
        self.assertIn("application/json", r.header("content-type", ""), r)
        body = r.json()
        self.assertEqual(body.get("error", {}).get("code"), code, body)
        self.assertTrue(body["error"].get("message"), body)
        return body

    # -- bodies: the path is SCRIPT_NAME (/lead) + PATH_INFO (/echo) ----------------------------

    def test_urlencoded(self):
        f = self.echo("first_name=Ada&x=1&x=2&a%5Bb%5D=deep&name="
                      + urllib.parse.quote("Zoë Ångström"))["fields"]
        self.assertEqual(f["first_name"], "Ada")
        self.assertEqual(f["x"], ["1", "2"])
        self.assertEqual(f["a"], {"b": "deep"})
        self.assertEqual(f["name"], "Zoë Ångström")

    def test_multipart(self):
        body, ctype = harness.multipart([("first_name", "Ada"), ("note", "two\r\nlines")],
                                        files=[("upload", "cv.txt", b"FILE-BYTES-NOT-ECHOED")])
        res = self.echo(body, ctype)
        self.assertEqual(res["fields"]["first_name"], "Ada")
        self.assertEqual(res["fields"]["note"], "two\r\nlines")
        self.assertNotIn("FILE-BYTES-NOT-ECHOED", json.dumps(res))

    def test_json(self):
        doc = {"name": "Ada", "address": {"line1": "1 Road", "n": [1, 2]}, "ok": True}
        f = self.echo(json.dumps(doc), "application/json")["fields"]
        self.assertEqual(f["name"], "Ada")
        self.assertEqual(f["address"], {"line1": "1 Road", "n": [1, 2]})

    # -- attribution ------------------------------------------------------------------------------

    def test_attribution_from_referer(self):
        page = self.st.web + "/form.html"
        ref = page + "?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=Cj0KabC"
        a = self.echo("email=a%40example.com",
                      headers={"Referer": ref, "User-Agent": "DeployTest/1.0"})["attribution"]
        self.assertEqual(a.get("utm_source"), "google", a)
        self.assertEqual(a.get("utm_medium"), "cpc", a)
        self.assertEqual(a.get("utm_campaign"), "spring", a)
        self.assertEqual(a.get("gclid"), "Cj0KabC", a)
        self.assertEqual(a.get("landing_page"), page, a)
        self.assertIn("127.0.0.1:%d" % self.st.web_port, a.get("host", ""), a)
        self.assertEqual(a.get("user_agent"), "DeployTest/1.0", a)

    def test_attribution_from_query_string(self):
        a = self.echo("x=1", path="/lead/echo?utm_source=newsletter&fbclid=FB1")["attribution"]
        self.assertEqual(a.get("utm_source"), "newsletter", a)
        self.assertEqual(a.get("fbclid"), "FB1", a)

    # -- answers ----------------------------------------------------------------------------------

    def test_413_oversized_body(self):
        self.assertError(self.post("/lead/echo", b"x=" + b"y" * 100000), 413, "body_too_large")
        self.assertError(self.post("/lead/small", b"x=" + b"y" * 4000), 413, "body_too_large")
        # the server is still fine afterwards
        self.assertEqual(self.echo("k=v")["fields"], {"k": "v"})

    def test_405_with_allow(self):
        r = self.st.request("GET", "/lead/create", headers={"Accept": "application/json"})
        self.assertError(r, 405, "method_not_allowed")
        self.assertIn("POST", r.header("allow", ""), r)
        self.assertNotIn("GET", r.header("allow", ""), r)
        r = self.st.request("PUT", "/lead/echo", body=b"x=1", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        self.assertError(r, 405, "method_not_allowed")
        self.assertIn("POST", r.header("allow", ""), r)

    def test_404_unknown_form(self):
        self.assertError(self.post("/lead/nothing-here", "a=1"), 404, "not_found")

    def test_plain_html_post_303(self):
        r = self.post("/lead/echo", "first_name=Ada", script=False)
        self.assertEqual(r.status, 303, r)
        loc = r.header("location", "")
        self.assertTrue(loc.startswith(self.st.web + "/thanks.html"), r)
        self.assertNotIn("Ada", loc)

    def test_origin_refused(self):
        r = self.post("/lead/echo", "a=1", headers={"Origin": "https://evil.example"})
        self.assertError(r, 403, "forbidden")

    def test_create_reaches_api(self):
        ref = self.st.web + "/form.html?utm_source=apache-%s" % self.kind
        r = self.post("/lead/create", CREATE_FIELDS, headers={"Referer": ref})
        self.assertEqual(r.status, 200, "%r\n%s" % (r, harness.tail(self.apache.error_log)))
        self.assertEqual(r.json().get("status"), "created", r)
        leads = [x["json"] for x in self.st.standin_leads("leadpro")]
        mine = [x for x in leads if x.get("utm_source") == "apache-" + self.kind]
        self.assertEqual(len(mine), 1, leads)
        self.assertEqual(mine[0]["email"], "ada@example.com")

    def test_log_lines_in_error_log_without_values(self):
        secret = "Zebulon-Q-Deploy"
        self.echo("first_name=" + secret + "&email=zq%40example.com")
        # CGI stderr reaches the error log when the script exits, FastCGI stderr as it is written
        ok = wait_until(lambda: '"form":"echo"' in self.apache.log(), timeout=5)
        log = self.apache.log()
        self.assertTrue(ok, log[-3000:])
        self.assertNotIn(secret, log)
        self.assertNotIn("zq@example.com", log)
        for m in SANITIZER_MARKERS:
            self.assertNotIn(m, log)


@unittest.skipIf(APACHE is None, APACHE_MISSING)
class ApacheCGI(ApacheChecks, unittest.TestCase):
    """Apache's mod_cgi runs the binary once per request (hosting with CGI only)."""

    kind = "cgi"


@unittest.skipIf(APACHE is None, APACHE_MISSING)
class ApacheFcgid(ApacheChecks, unittest.TestCase):
    """mod_fcgid starts the bridge with a socket on fd 0 and keeps it for many requests."""

    kind = "fcgid"

    def test_one_process_serves_many_requests(self):
        self.echo("n=0")
        before = self.apache.bridge_pids()
        self.assertTrue(before, "no leadbridge process under mod_fcgid")
        for i in range(20):
            self.assertEqual(self.echo("n=%d" % i)["fields"]["n"], str(i))
        after = self.apache.bridge_pids()
        self.assertTrue(set(after) & set(before), (before, after))
        self.assertLessEqual(len(after), 2, after)   # FcgidMaxProcessesPerClass


@unittest.skipIf(APACHE is None, APACHE_MISSING)
class ApacheFcgidStop(unittest.TestCase):
    """Stopping Apache stops the FastCGI processes cleanly: mod_fcgid sends SIGTERM and each
    bridge exits 0 by itself (no SIGKILL)."""

    def setUp(self):
        self.st = deploy_stack().start()
        self.addCleanup(self.st.stop)
        self.ap = Apache(self.st, "fcgid").start()
        self.addCleanup(self.ap.stop)
        r = self.st.post("/lead/echo", "a=1", headers={"Origin": self.st.web})
        self.assertEqual(r.status, 200, r)
        self.pids = self.ap.bridge_pids()
        self.assertTrue(self.pids)

    def assertCleanExit(self):
        self.assertTrue(wait_until(lambda: not any(pid_alive(p) for p in self.pids), 10),
                        self.pids)
        log = self.ap.log()
        self.assertIn('"msg":"stopped"', log, log[-3000:])
        for pid in self.pids:       # mod_fcgid saw each process exit by itself, with status 0
            self.assertIn("leadbridge(%d) exit(shutting down), terminated by calling exit(), "
                          "return code: 0" % pid, log, log[-3000:])
        self.assertNotIn("SIGKILL", log, log[-3000:])
        for m in SANITIZER_MARKERS:
            self.assertNotIn(m, log)

    def test_stop(self):
        self.assertEqual(self.ap.stop(), 0)
        self.assertCleanExit()

    def test_graceful_stop_finishes_request_in_flight(self):
        # apachectl graceful-stop (SIGWINCH) with a create whose API call takes 3 s in flight
        self.st.standin_mode({"api": "leadpro", "mode": "slow", "delay": 3, "count": 1})
        result = {}

        def create():
            try:
                result["r"] = self.st.post("/lead/create", CREATE_FIELDS,
                                           headers={"Origin": self.st.web})
            except OSError as e:
                result["r"] = e

        t = threading.Thread(target=create)
        t.start()
        self.assertTrue(wait_until(lambda: len(self.st._standin(
            "GET", "/_control/requests?api=leadpro")[1]["requests"]) == 1, timeout=10),
            "the create did not reach the stand-in")
        self.ap.proc.send_signal(signal.SIGWINCH)
        t.join(timeout=30)
        self.assertFalse(t.is_alive())
        r = result.get("r")
        self.assertIsInstance(r, harness.Response, r)
        self.assertEqual(r.status, 200, "%r\n%s" % (r, self.ap.log()[-3000:]))
        self.assertEqual(r.json().get("status"), "created", r)
        self.assertEqual(self.ap.proc.wait(timeout=WAIT), 0)
        self.assertCleanExit()
        self.assertEqual(len(self.st.standin_leads("leadpro")), 1)


# ---------------------------------------------------------------------------------------------
# spawn-fcgi -F 2 behind nginx

# Runs a command (spawn-fcgi) as a child subreaper, so that the processes it forks and leaves
# behind become our children: their exit statuses can be collected. Writes OUT.pids (spawn-fcgi's
# status, output and the children's pids) when spawn-fcgi has returned, then OUT.exits (pid ->
# exit code, negative for a signal) when every child has exited.
REAPER = r"""
import ctypes, json, os, re, subprocess, sys
out = sys.argv[1]
def put(suffix, obj):
    with open(out + suffix + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(out + suffix + ".tmp", out + suffix)
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:   # PR_SET_CHILD_SUBREAPER
    put(".pids", {"rc": -1, "output": "prctl(PR_SET_CHILD_SUBREAPER) failed", "pids": []})
    sys.exit(1)
p = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, timeout=20)
text = p.stdout.decode(errors="replace")
pids = [int(x) for x in re.findall(r"PID: (\d+)", text)]
put(".pids", {"rc": p.returncode, "output": text, "pids": pids})
exits = {}
for pid in pids:
    exits[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
put(".exits", exits)
"""

NGINX_CONF = """# nginx in front of externally started FastCGI processes (test_deploy.py)
{user}
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/nginx-tmp/client_body;
    proxy_temp_path {dir}/nginx-tmp/proxy;
    fastcgi_temp_path {dir}/nginx-tmp/fastcgi;
{extra}
    server {{
        listen 127.0.0.1:{port};
        location /lead/ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass {fcgi};
        }}
    }}
}}
"""


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def start_nginx(dir_, port, fcgi):
    """Our own nginx on port passing /lead/ to fcgi ("HOST:PORT"); returns the Popen."""
    nginx = harness.find_nginx()
    if nginx is None:
        raise unittest.SkipTest("nginx is not installed (scripts/setup-deps installs it)")
    v = subprocess.run([nginx, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=10).stdout.decode(errors="replace")
    extra = "\n".join("    %s_temp_path %s/nginx-tmp/%s;" % (m, dir_, m) for m in ("uwsgi", "scgi")
                      if "--without-http_%s_module" % m not in v)
    os.makedirs(os.path.join(dir_, "nginx-tmp"), exist_ok=True)
    conf = os.path.join(dir_, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", dir=dir_,
                                  extra=extra, port=port, fcgi=fcgi))
    log = open(os.path.join(dir_, "nginx-stderr.log"), "ab")
    try:
        p = subprocess.Popen([nginx, "-p", dir_, "-e", os.path.join(dir_, "nginx-error.log"),
                              "-c", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=harness.base_env(), start_new_session=True)
    finally:
        log.close()
    if not wait_until(lambda: p.poll() is not None or accepting(port)) or p.poll() is not None:
        stop_process(p)
        raise RuntimeError("nginx did not start:\n" + harness.tail(
            os.path.join(dir_, "nginx-error.log")))
    return p


@unittest.skipIf(shutil.which("spawn-fcgi") is None,
                 "spawn-fcgi is not installed (scripts/setup-deps should install spawn-fcgi)")
class SpawnFcgi(unittest.TestCase):
    """Two bridge processes forked by spawn-fcgi share one listening socket (fd 0) behind nginx.

    Each child is `sh -c 'exec leadbridge ... 2>>bridge-$$.log'`: exec keeps the pid, so each
    process logs to its own file named by its pid and the requests each served can be counted.
    """

    def setUp(self):
        self.st = deploy_stack().start()
        self.addCleanup(self.st.stop)
        self.dir = os.path.join(self.st.dir, "spawn")
        os.makedirs(self.dir)
        self.fcgi_port = harness.free_port()
        self.out = os.path.join(self.dir, "reaper")
        cmd = ["spawn-fcgi", "-a", "127.0.0.1", "-p", str(self.fcgi_port), "-F", "2",
               "-d", self.dir, "--", "/bin/sh", "-c",
               'exec "$0" -c "$1" -t 2 2>>"$2/bridge-$$.log"', self.st.bin, self.st.config,
               self.dir]
        self.reaper = subprocess.Popen([sys.executable, "-c", REAPER, self.out] + cmd,
                                       stdin=subprocess.DEVNULL, env=self.st.bridge_env(),
                                       start_new_session=True)
        self.addCleanup(self._stop_children)
        info = wait_until(lambda: read_json(self.out + ".pids"))
        self.assertTrue(info, "spawn-fcgi did not report")
        self.assertEqual(info["rc"], 0, info)
        self.pids = info["pids"]
        self.assertEqual(len(self.pids), 2, info)
        self.assertTrue(wait_until(lambda: accepting(self.fcgi_port)))
        self.nginx = start_nginx(self.dir, self.st.web_port, "127.0.0.1:%d" % self.fcgi_port)
        self.addCleanup(stop_process, self.nginx)

    def _stop_children(self):
        """Bounded clean-up: SIGTERM, then SIGKILL, to the children and the reaper we started."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in getattr(self, "pids", []):
                if pid_alive(pid):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            try:
                self.reaper.wait(timeout=WAIT / 2)
                break
            except subprocess.TimeoutExpired:
                pass
        if self.reaper.poll() is None:
            self.reaper.kill()
            self.reaper.wait(timeout=WAIT)

    def exits(self):
        """pid -> exit code, once the reaper has seen every child exit (bounded wait)."""
        e = wait_until(lambda: read_json(self.out + ".exits"))
        self.assertTrue(e, "the bridge processes did not exit: %s" % self.logs())
        return {int(k): v for k, v in e.items()}

    def log_of(self, pid):
        return harness.tail(os.path.join(self.dir, "bridge-%d.log" % pid), 100000)

    def logs(self):
        return "\n".join("--- %d ---\n%s" % (p, self.log_of(p)[-2000:]) for p in self.pids)

    def served(self, pid):
        """Requests pid logged (one JSON line with a request_id per request)."""
        return sum(1 for line in self.log_of(pid).splitlines() if '"request_id"' in line)

    def post(self, path, data, **kw):
        return self.st.post(path, data, headers={"Origin": self.st.web}, **kw)

    def spread(self, n=200, workers=4):
        """n echo requests through nginx from a few client threads; returns their statuses."""
        statuses = []
        lock = threading.Lock()

        def client(k):
            for i in range(k, n, workers):
                try:
                    r = self.post("/lead/echo", "n=%d&pad=%s" % (i, "x" * 200))
                    ok = r.status == 200 and r.json()["fields"]["n"] == str(i)
                    st = r.status if ok else ("bad", r.status, r.body[:200])
                except (OSError, ValueError) as e:
                    st = ("error", str(e))
                with lock:
                    statuses.append(st)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return statuses

    def test_requests_spread_then_sigterm_finishes_request_in_flight(self):
        statuses = self.spread()
        self.assertEqual(len(statuses), 200)
        self.assertEqual([s for s in statuses if s != 200], [])
        counts = {pid: self.served(pid) for pid in self.pids}
        self.assertEqual(sum(counts.values()), 200, counts)
        for pid, c in counts.items():
            self.assertGreater(c, 0, "process %d served no request: %r" % (pid, counts))
            self.assertTrue(pid_alive(pid), pid)

        # A create whose API call takes 3 s is in flight when both processes get SIGTERM.
        self.st.standin_mode({"api": "leadpro", "mode": "slow", "delay": 3, "count": 1})
        before = len(self.st._standin("GET", "/_control/requests?api=leadpro")[1]["requests"])
        result = {}

        def create():
            try:
                result["r"] = self.post("/lead/create", CREATE_FIELDS)
            except OSError as e:
                result["r"] = e

        t = threading.Thread(target=create)
        t.start()
        self.assertTrue(wait_until(lambda: len(self.st._standin(
            "GET", "/_control/requests?api=leadpro")[1]["requests"]) > before, timeout=10),
            "the create did not reach the stand-in")
        sent = time.monotonic()
        for pid in self.pids:
            os.kill(pid, signal.SIGTERM)
        t.join(timeout=30)
        self.assertFalse(t.is_alive())
        r = result.get("r")
        self.assertIsInstance(r, harness.Response, r)
        self.assertEqual(r.status, 200, "%r\n%s" % (r, self.logs()))
        self.assertEqual(r.json().get("status"), "created", r)
        exits = self.exits()
        self.assertLess(time.monotonic() - sent, WAIT)
        self.assertEqual(exits, {pid: 0 for pid in self.pids}, self.logs())
        for pid in self.pids:
            log = self.log_of(pid)
            self.assertIn('"msg":"stopped"', log)
            for m in SANITIZER_MARKERS:
                self.assertNotIn(m, log)
        self.assertEqual(len(self.st.standin_leads("leadpro")), 1)

    def test_sigterm_to_one_process_leaves_the_other_serving(self):
        # e.g. a supervisor replacing one process at a time: the other keeps the shared socket.
        # The process that gets SIGTERM must not shutdown() the listening socket all the
        # processes share: the others keep accepting on it.
        self.assertEqual([s for s in self.spread(20) if s != 200], [])
        gone, other = self.pids
        os.kill(gone, signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not pid_alive(gone), timeout=10), self.logs())
        time.sleep(0.3)
        self.assertTrue(pid_alive(other), "SIGTERM to process %d stopped process %d too:\n%s"
                        % (gone, other, self.logs()))
        statuses = self.spread(20)
        self.assertEqual([s for s in statuses if s != 200], [], self.logs())


# ---------------------------------------------------------------------------------------------
# systemd-style socket activation (LISTEN_FDS on fd 3), without systemd

# Execs argv[2:] with the socket fd argv[1] moved to fd 3, LISTEN_FDS=1 and LISTEN_PID set to
# this very process's pid (exec keeps it), as systemd does for a socket unit's service.
ACTIVATE = r"""
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = os.environ.get("LB_FAKE_LISTEN_PID") or str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivation(unittest.TestCase):
    """The test plays systemd: it owns the listening socket and starts the bridge on it."""

    def setUp(self):
        self.st = deploy_stack().start()
        self.addCleanup(self.st.stop)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.sock.close)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.n = 0

    def activate(self, env=None):
        """Starts the bridge with our socket on fd 3; returns (Popen, its log path)."""
        self.n += 1
        log_path = os.path.join(self.st.dir, "activated-%d.log" % self.n)
        e = self.st.bridge_env()
        e.update(env or {})
        log = open(log_path, "ab")
        try:
            p = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(self.sock.fileno()),
                                  self.st.bin, "-c", self.st.config, "-t", "2"],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=e,
                                 pass_fds=(self.sock.fileno(),), start_new_session=True)
        finally:
            log.close()
        self.addCleanup(stop_process, p)
        return p, log_path

    def echo(self, n):
        body = ("n=%d" % n).encode()
        params = harness.cgi_params("POST", "/lead/echo", body=body,
                                    content_type="application/x-www-form-urlencoded",
                                    headers={"Accept": "application/json",
                                             "Origin": self.st.web})
        return harness.fcgi_request(self.addr, params, body, timeout=10)

    def serve_and_stop(self):
        """One activated bridge: five echo requests, then SIGTERM; it exits 0."""
        p, log_path = self.activate()
        for i in range(5):
            r = self.echo(i)
            self.assertEqual(r.status, 200, "%r\n%s" % (r, harness.tail(log_path)))
            self.assertEqual(r.json()["fields"]["n"], str(i))
        self.assertEqual(p.poll(), None)
        self.assertEqual(stop_process(p), 0, harness.tail(log_path))
        log = harness.tail(log_path, 100000)
        self.assertIn('"msg":"stopped"', log)
        for m in SANITIZER_MARKERS:
            self.assertNotIn(m, log)

    def test_serves_on_fd_3_and_exits_0_on_sigterm(self):
        self.serve_and_stop()

    def test_socket_still_listens_for_the_next_start(self):
        # On SIGTERM the bridge must leave the listening socket it was given listening: systemd
        # (here: this test) keeps it across restarts, and the next start must get connections.
        # Only a socket the bridge opened itself (-s) may be shut down.
        self.serve_and_stop()
        self.serve_and_stop()       # the same socket, as systemd keeps it across restarts

    def test_listen_pid_of_another_process_is_not_ours(self):
        # LISTEN_FDS meant for another process (LISTEN_PID differs) must not be used: started
        # this way with stdin not a socket and no CGI environment, the bridge refuses to run.
        p, log_path = self.activate({"LB_FAKE_LISTEN_PID": "1"})
        try:
            rc = p.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            rc = stop_process(p)
        self.assertNotEqual(rc, 0, harness.tail(log_path))
        self.assertIn("not started by a web server", harness.tail(log_path))


if __name__ == "__main__":
    unittest.main()
