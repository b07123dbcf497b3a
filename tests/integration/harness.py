#!/usr/bin/env python3
"""harness.py: a whole leadbridge stack on loopback, for the integration tests and the demo.

Stack starts the stand-in lead APIs (tests/standin/leadapi.py), the real bridge serving FastCGI
on a loopback port (or unix socket) and a real nginx serving www/ with /lead/ passed to the
bridge. Everything it writes lives in one directory (a fresh temp dir unless told otherwise);
nothing is written into the source tree, so it works from a read-only `make distcheck` tree.
Every wait is bounded: start-up, requests (socket timeouts) and shutdown (SIGTERM, then SIGKILL).

Helpers: post/request/get_json talk HTTP to nginx; fcgi_request talks FastCGI straight to the
bridge; run_cgi runs the binary as plain CGI; standin_* drive the stand-in's control API.

`python3 harness.py --demo` runs the stack in the foreground on fixed ports until Ctrl-C/SIGTERM.
Python 3 standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT = 20.0       # seconds for one process to accept connections
STOP_TIMEOUT = 15.0        # seconds between SIGTERM and SIGKILL
REQUEST_TIMEOUT = 15.0     # socket timeout for one request
TEST_SECRET = "integration-test-secret-0123456789"


# The only variables a child of the harness takes from whoever runs the tests: the search path,
# the temp dir and the sanitizers' options. Everything else is built here, so a deployed host's
# LEADBRIDGE_SECRET, LEADBRIDGE_CONFIG, API URLs and keys (the ${VAR}s the configs expand), the
# stand-in's LEADAPI_* options or our own LB_TEST_* never reach a process a test starts.
INHERITED_VARS = ("PATH", "TMPDIR", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env(**extra):
    """A child's environment from scratch: INHERITED_VARS from ours, then extra."""
    env = {k: os.environ[k] for k in INHERITED_VARS if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


def srcdir():
    """The repository (source) directory: $LB_SRCDIR, else two levels above this file."""
    d = os.environ.get("LB_SRCDIR")
    if d:
        return os.path.abspath(d)
    return os.path.abspath(os.path.join(HERE, "..", ".."))


def find_binary():
    """The leadbridge binary: $LEADBRIDGE_BIN, else <repo>/src/leadbridge, else <repo>/build/..."""
    b = os.environ.get("LEADBRIDGE_BIN")
    if b:
        return os.path.abspath(b)
    for cand in (os.path.join(srcdir(), "src", "leadbridge"),
                 os.path.join(srcdir(), "build", "src", "leadbridge")):
        if os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("leadbridge binary not found: set LEADBRIDGE_BIN or build into build/")


def find_nginx():
    """Path of the nginx binary, or None."""
    n = shutil.which("nginx")
    if n is None:
        for cand in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
            if os.access(cand, os.X_OK):
                return cand
    return n


_handed_out = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A loopback TCP port that was free a moment ago, for a server the test starts next.

    Never one this process handed out before, and never one from the kernel's ephemeral range:
    bind(0) and every outgoing connection (curl, nginx to the bridge) take their ports from that
    range, so a port picked there can be taken by someone else before our server binds it (CI
    once saw Apache's port answered by a stand-in started a moment earlier)."""
    import random
    hi = min(_ephemeral_low(), 65536)
    lo = 20000 if hi > 21000 else 1024
    for _ in range(1000):
        port = random.randrange(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def tail(path, n=60):
    """The last n lines of a file, for error messages ("" when unreadable)."""
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def parse_cgi(out):
    """Splits CGI output into (status, headers, body); headers is a list of (lower-name, value)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = out.find(sep)
        if i >= 0:
            break
    if i < 0:
        raise ValueError("CGI output without a header section: %r" % out[:200])
    head, body = out[:i], out[i + len(sep):]
    status = 200
    headers = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().decode("latin-1").lower()
        value = value.strip().decode("latin-1")
        if name == "status":
            status = int(value.split()[0])
        headers.append((name, value))
    return status, headers, body


class Response:
    """One HTTP answer: status, headers (list of (lower-name, value)), body bytes."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        """The first value of header name (case-insensitive), or default."""
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def json(self):
        """The body parsed as JSON (raises ValueError with the body when it is not)."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise ValueError("not JSON (%s): %r" % (e, self.body[:500]))

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def __repr__(self):
        return "Response(%d, %r, %r)" % (self.status, self.headers, self.body[:300])


# ---------------------------------------------------------------------------------------------
# A small FastCGI client (responder role), enough to talk to the bridge without a web server.

FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR = \
    1, 3, 4, 5, 6, 7


def _fcgi_record(rtype, content, req_id=1):
    pad = (8 - len(content) % 8) % 8
    return struct.pack("!BBHHBB", 1, rtype, req_id, len(content), pad, 0) + content + b"\0" * pad


def _fcgi_nv(name, value):
    out = b""
    for x in (name, value):
        n = len(x)
        out += struct.pack("!B", n) if n < 128 else struct.pack("!I", n | 0x80000000)
    return out + name + value


def _enc(x):
    return x if isinstance(x, bytes) else str(x).encode("utf-8")


def fcgi_connect(addr, timeout=REQUEST_TIMEOUT):
    """A connected socket to addr ("HOST:PORT" or "unix:/path")."""
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr[5:])
    else:
        host, _, port = addr.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=timeout)
        s.settimeout(timeout)
    return s


def fcgi_begin(sock, params):
    """Sends BEGIN_REQUEST and the params (dict of str/bytes) on sock."""
    data = _fcgi_record(FCGI_BEGIN_REQUEST, struct.pack("!HB5x", 1, 0))
    nv = b"".join(_fcgi_nv(_enc(k), _enc(v)) for k, v in params.items())
    for i in range(0, len(nv), 65535):
        data += _fcgi_record(FCGI_PARAMS, nv[i:i + 65535])
    data += _fcgi_record(FCGI_PARAMS, b"")
    sock.sendall(data)


def fcgi_send_stdin(sock, data, end=False):
    """Sends body bytes (and the empty end-of-stdin record when end is true)."""
    out = b"".join(_fcgi_record(FCGI_STDIN, data[i:i + 65535])
                   for i in range(0, len(data), 65535))
    if end:
        out += _fcgi_record(FCGI_STDIN, b"")
    try:
        sock.sendall(out)
    except (BrokenPipeError, ConnectionResetError):
        pass        # the application may answer and close before reading the whole body


def fcgi_read(sock):
    """Reads records until END_REQUEST. Returns (stdout bytes, stderr bytes, app status)."""
    buf = b""
    stdout, stderr = b"", b""

    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("FastCGI connection closed before END_REQUEST")
            buf += chunk

    while True:
        need(8)
        _, rtype, _, clen, pad, _ = struct.unpack("!BBHHBB", buf[:8])
        need(8 + clen + pad)
        content = buf[8:8 + clen]
        buf = buf[8 + clen + pad:]
        if rtype == FCGI_STDOUT:
            stdout += content
        elif rtype == FCGI_STDERR:
            stderr += content
        elif rtype == FCGI_END_REQUEST:
            return stdout, stderr, struct.unpack("!I", content[:4])[0]


def fcgi_request(addr, params, body=b"", timeout=REQUEST_TIMEOUT):
    """One whole FastCGI request to addr. Returns a Response parsed from the CGI output."""
    with fcgi_connect(addr, timeout) as s:
        fcgi_begin(s, params)
        fcgi_send_stdin(s, body, end=True)
        out, _, _ = fcgi_read(s)
    return Response(*parse_cgi(out))


def cgi_params(method, path, body=b"", content_type=None, query="", headers=None, port=80):
    """The CGI/FastCGI variables a web server would pass for a request (headers: dict)."""
    p = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "leadbridge-tests",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(port),
        "REQUEST_METHOD": method,
        "REQUEST_URI": path + ("?" + query if query else ""),
        "DOCUMENT_URI": path,
        "SCRIPT_NAME": path,
        "QUERY_STRING": query,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:%d" % port,
    }
    if method in ("POST", "PUT", "PATCH") or body:
        p["CONTENT_LENGTH"] = str(len(body))
    if content_type is not None:
        p["CONTENT_TYPE"] = content_type
    for k, v in (headers or {}).items():
        p["HTTP_" + k.upper().replace("-", "_")] = v
    return p


def multipart(fields, files=(), boundary="----leadbridgeTestBoundary7MA4YWxkTrZu0gW"):
    """(body, content_type) for text fields [(name, value)] and files [(name, filename, data)]."""
    out = b""
    for name, value in fields:
        out += (b"--" + boundary.encode() + b"\r\n" +
                b'Content-Disposition: form-data; name="' + _enc(name) + b'"\r\n\r\n' +
                _enc(value) + b"\r\n")
    for name, filename, data in files:
        out += (b"--" + boundary.encode() + b"\r\n" +
                b'Content-Disposition: form-data; name="' + _enc(name) +
                b'"; filename="' + _enc(filename) + b'"\r\n' +
                b"Content-Type: application/octet-stream\r\n\r\n" + _enc(data) + b"\r\n")
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, "multipart/form-data; boundary=" + boundary


# ---------------------------------------------------------------------------------------------

class Stack:
    """The stand-in APIs + the bridge + nginx, on loopback; a context manager.

    config: a bridge config file name under tests/integration/conf/ or a path. Its ${VAR}s are
    filled from the environment Stack gives the bridge (see bridge_env). nginx=False runs no web
    server (FastCGI tests talk to the bridge directly). Fixed ports and a fixed directory are for
    the demo; by default ports are free loopback ports and the directory a fresh temp dir that is
    removed on success.
    """

    def __init__(self, config="foundation.json", nginx=True, standin=True, threads=4,
                 web_port=None, standin_port=None, fcgi=None, workdir=None, record=None,
                 extra_env=None, keep=None, person=False):
        self.src = srcdir()
        self.bin = find_binary()
        self.config_src = config if os.path.isabs(config) or os.sep in config \
            else os.path.join(HERE, "conf", config)
        self.use_nginx = nginx
        self.use_standin = standin
        self.threads = threads
        self.web_port = web_port or free_port()
        self.standin_port = standin_port or free_port()
        self.fcgi_addr = fcgi or "127.0.0.1:%d" % free_port()
        self.fixed_dir = workdir
        self.record = record
        self.extra_env = dict(extra_env or {})
        self.keep = keep if keep is not None else bool(os.environ.get("LB_KEEP_TMP"))
        self.dir = None
        self.procs = {}
        self.bridge_rc = None
        self.failed = False
        # person=True: post() sends what a person's browser sends to a form whose guard has a
        # signed token (the widget fetches one, the no-JS page includes one): a fresh token,
        # old enough for the time trap, and the empty honeypot. A dict with "lb_token": None
        # posts without them (a bot).
        self.person = person
        self._tokens = {}

    # -- set-up ---------------------------------------------------------------------------------

    @property
    def web(self):
        return "http://127.0.0.1:%d" % self.web_port

    @property
    def standin_url(self):
        return "http://127.0.0.1:%d" % self.standin_port

    @property
    def bridge_log(self):
        return os.path.join(self.dir, "bridge.log")

    def config_vars(self):
        """What the configs' ${VAR}s expand to for this stack: ports, paths, API URLs, test keys."""
        s = self.standin_url
        env = {}
        env.update({
            "LB_TEST_WEB": self.web,
            "LB_TEST_STANDIN": s,
            "LB_TEST_SPOOL": os.path.join(self.dir, "spool"),
            "LB_TEST_SECRET": TEST_SECRET,
            "LEADBRIDGE_SECRET": TEST_SECRET,
            "LEADBRIDGE_SPOOL": os.path.join(self.dir, "spool"),
            "LEADBRIDGE_SITE": self.web,
            "LEADPRO_URL": s + "/leadpro/api/v103",
            "LEADPRO_API_KEY": "test-leadpro-key",
            "LEADPING_URL": s + "/leadping",
            "LEADPING_SOURCE_ID": "test-source",
            "LEADPING_SOURCE_KEY": "test-source-key",
            "LEADPING_TOKEN": "lp_src_test",
            "LOFTY_URL": s + "/lofty",
            "LOFTY_API_KEY": "test-lofty-key",
            "LOFTY_TOKEN": "test-lofty-oauth",
            "WEBHOOK_URL": s + "/webhook/test",
            "WEBHOOK_SECRET": "whsec_dGVzdC13ZWJob29rLXNlY3JldC0zMi1ieXRlcyEhISE=",
        })
        env.update(self.extra_env)
        return env

    def bridge_env(self):
        """The bridge's whole environment, built from scratch: base_env() + config_vars()."""
        return base_env(**self.config_vars())

    def _write_nginx_conf(self):
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            text = f.read()
        nginx_v = subprocess.run([self.nginx_bin, "-V"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=10).stdout.decode(errors="replace")
        extra = []
        for mod in ("uwsgi", "scgi"):
            if "--without-http_%s_module" % mod not in nginx_v:
                extra.append("    %s_temp_path %s/nginx-tmp/%s;" % (mod, self.dir, mod))
                repl = {
            "@USER@": "user root;" if os.geteuid() == 0 else "",
            "@DIR@": self.dir,
            "@EXTRA_TEMP@": "\n".join(extra),
            "@WEB_PORT@": str(self.web_port),
            "@WWW@": os.path.join(self.src, "www"),
            "@FCGI@": self.fcgi_addr,
        }
        for k, v in repl.items():
            text = text.replace(k, v)
        os.makedirs(os.path.join(self.dir, "nginx-tmp"), exist_ok=True)
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def _spawn(self, name, argv, env=None, stderr_file=None):
        log = open(stderr_file or os.path.join(self.dir, name + ".log"), "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 env=env if env is not None else base_env(), cwd=self.dir,
                                 start_new_session=True)
        finally:
            log.close()
        self.procs[name] = p
        return p

    def _wait_accepting(self, name, addr, check=None):
        """Waits (bounded) until addr accepts and check() is true; fails early if name died."""
        p = self.procs[name]
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError("%s exited with status %s during start-up:\n%s"
                                   % (name, p.returncode, tail(os.path.join(self.dir,
                                                                             name + ".log"))))
            try:
                fcgi_connect(addr, timeout=2).close()
                if check is None or check():
                    return
            except (OSError, ValueError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError("%s did not accept on %s within %.0f s (%s):\n%s"
                           % (name, addr, START_TIMEOUT, last,
                              tail(os.path.join(self.dir, name + ".log"))))

    def start(self):
        """Starts the processes in order, each waited for. Stops what started on failure."""
        if self.fixed_dir:
            self.dir = os.path.abspath(self.fixed_dir)
            os.makedirs(self.dir, exist_ok=True)
        else:
            self.dir = tempfile.mkdtemp(prefix="leadbridge-integ-")
        try:
            self._start()
        except BaseException:
            self.failed = True
            self.stop(check=False)
            raise
        return self

    def _start(self):
        os.makedirs(os.path.join(self.dir, "spool"), exist_ok=True)
        if os.path.isdir(self.config_src):   # a conf.d directory: one site per file
            self.config = os.path.join(self.dir, "conf.d")
            shutil.copytree(self.config_src, self.config)
        else:
            self.config = os.path.join(self.dir, "leadbridge.json")
            shutil.copyfile(self.config_src, self.config)
            # Lists the config names by a relative path (guard.content.disposable_domains) live
            # next to it: copy them along.
            src_dir = os.path.dirname(self.config_src)
            for name in os.listdir(src_dir):
                if name.endswith(".txt"):
                    shutil.copyfile(os.path.join(src_dir, name), os.path.join(self.dir, name))
        if self.use_standin:
            argv = [sys.executable, os.path.join(self.src, "tests", "standin", "leadapi.py"),
                    "--port", str(self.standin_port)]
            if self.record:
                argv += ["--record", self.record]
            env = base_env(PYTHONDONTWRITEBYTECODE="1")
            self._spawn("standin", argv, env=env)
            self._wait_accepting("standin", "127.0.0.1:%d" % self.standin_port,
                                 lambda: self.standin_get("/_control/health")[0] == 200)
        if self.fcgi_addr.startswith("unix:") and os.path.exists(self.fcgi_addr[5:]):
            os.unlink(self.fcgi_addr[5:])
        self._spawn("bridge", [self.bin, "-c", self.config, "-s", self.fcgi_addr,
                               "-t", str(self.threads)], env=self.bridge_env())
        self._wait_accepting("bridge", self.fcgi_addr)
        if self.use_nginx:
            self.nginx_bin = find_nginx()
            if self.nginx_bin is None:
                raise RuntimeError("nginx is not installed (run scripts/setup-deps)")
            conf = self._write_nginx_conf()
            self._spawn("nginx", [self.nginx_bin, "-p", self.dir, "-e",
                                  os.path.join(self.dir, "nginx-error.log"), "-c", conf])
            self._wait_accepting("nginx", "127.0.0.1:%d" % self.web_port)

    # -- tear-down ------------------------------------------------------------------------------

    def _terminate(self, name):
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=STOP_TIMEOUT)
                return "killed"
        return p.returncode

    def stop_bridge(self):
        """SIGTERM to the bridge alone; returns its exit status (or "killed")."""
        self.bridge_rc = self._terminate("bridge")
        return self.bridge_rc

    def stop(self, check=True):
        """Stops nginx, the bridge and the stand-in. With check, raises AssertionError unless the
        bridge exited 0 on SIGTERM and its log holds no sanitizer report."""
        problems = []
        self._terminate("nginx")
        if "bridge" in self.procs and self.bridge_rc is None:
            self.bridge_rc = self._terminate("bridge")
        self._terminate("standin")
        if self.dir is None:
            return
        if check and "bridge" in self.procs:
            if self.bridge_rc != 0:
                problems.append("the bridge exited with %r on SIGTERM (expected 0)"
                                % (self.bridge_rc,))
            log = tail(self.bridge_log, 100000)
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in log:
                    problems.append("sanitizer report in the bridge's log: " + marker)
        if problems:
            self.failed = True
        if self.failed or self.keep:
            sys.stderr.write("harness: keeping %s\n" % self.dir)
            if problems:
                sys.stderr.write("--- bridge.log (tail) ---\n%s\n" % tail(self.bridge_log))
        elif not self.fixed_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            raise AssertionError("; ".join(problems))

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
        self.stop(check=exc_type is None)
        return False

    # -- HTTP through nginx ---------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, port=None):
        """One HTTP request to nginx (or port). Returns a Response."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.web_port,
                                          timeout=REQUEST_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, [(k.lower(), v) for k, v in r.getheaders()], data)
        finally:
            conn.close()

    def _guarded_forms(self):
        """{path: (form name, min_seconds, honeypot)} of the config's forms with a form token."""
        if not hasattr(self, "_guarded"):
            self._guarded = {}
            try:
                with open(self.config_src) as f:
                    cfg = json.load(f)
            except (OSError, ValueError):
                cfg = {}
            for name, form in (cfg.get("forms") or {}).items():
                g = form.get("guard") or {}
                if isinstance(g.get("token"), dict) and "path" in form:
                    self._guarded[form["path"]] = (name, float(g["token"].get("min_seconds", 3)),
                                                   g.get("honeypot"))
        return self._guarded

    def person_fields(self, form, min_seconds, honeypot):
        """A fresh form token for form, issued at least min_seconds ago, and the empty honeypot.
        Tokens are fetched 20 at a time, so only the first post of a batch waits."""
        pool = self._tokens.setdefault(form, [])
        if not pool:
            t0 = time.monotonic()
            for _ in range(20):
                r = self.request("GET", "/lead/%s/token" % form,
                                 headers={"Accept": "application/json"})
                if r.status != 200:
                    raise RuntimeError("GET /lead/%s/token answered %d" % (form, r.status))
                pool.append((t0, r.json()["token"]))
        t0, tok = pool.pop(0)
        wait = t0 + min_seconds + 0.3 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        fields = {"lb_token": tok}
        if honeypot:
            fields[honeypot] = ""
        return fields

    def post(self, path, data, content_type="application/x-www-form-urlencoded", headers=None,
             script=True):
        """POSTs data (bytes, str, or a dict/list urlencoded) to path through nginx.

        script=True sends Accept: application/json (a script client); False a plain HTML form.
        """
        if self.person and isinstance(data, dict):
            guarded = self._guarded_forms().get(path.split("?", 1)[0])
            if "lb_token" in data and data["lb_token"] is None:
                data = {k: v for k, v in data.items() if k != "lb_token"}
            elif guarded is not None and "lb_token" not in data:
                data = dict(data, **self.person_fields(*guarded))
        if isinstance(data, (dict, list)):
            data = urllib.parse.urlencode(data, doseq=True)
        data = _enc(data)
        h = {"Content-Type": content_type} if content_type is not None else {}
        if script:
            h["Accept"] = "application/json"
        else:
            h["Accept"] = "text/html,application/xhtml+xml"
        h.update(headers or {})
        return self.request("POST", path, data, h)

    def post_json(self, path, obj, headers=None):
        """POSTs obj as JSON; returns a Response."""
        return self.post(path, json.dumps(obj), "application/json", headers)

    def get_json(self, path, headers=None):
        """GETs path from nginx; returns (status, parsed JSON or None)."""
        r = self.request("GET", path, headers=headers)
        try:
            return r.status, r.json()
        except ValueError:
            return r.status, None

    # -- FastCGI and CGI straight to the binary -------------------------------------------------

    def fcgi(self, params, body=b""):
        """One FastCGI request straight to the bridge."""
        return fcgi_request(self.fcgi_addr, params, body)

    def run_cgi(self, env, stdin=b"", timeout=REQUEST_TIMEOUT):
        """Runs the binary as plain CGI with the CGI variables env (plus the config and the test
        variables). Returns (Response, exit status, stderr text)."""
        e = self.bridge_env() if self.dir else base_env()
        if self.dir:
            e["LEADBRIDGE_CONFIG"] = self.config
        e.setdefault("GATEWAY_INTERFACE", "CGI/1.1")
        e.update(env)
        p = subprocess.run([self.bin], input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=e, timeout=timeout)
        return (Response(*parse_cgi(p.stdout)), p.returncode,
                p.stderr.decode("utf-8", errors="replace"))

    def run_bin(self, args, env=None, timeout=REQUEST_TIMEOUT):
        """Runs the binary with args (not as CGI). Returns CompletedProcess with text output."""
        e = self.bridge_env() if self.dir else base_env()
        e.pop("GATEWAY_INTERFACE", None)
        e.update(env or {})
        return subprocess.run([self.bin] + list(args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                              timeout=timeout, universal_newlines=True)

    # -- the stand-in's control API -------------------------------------------------------------

    def standin_get(self, path):
        """GET on the stand-in; returns (status, parsed JSON or None)."""
        return self._standin("GET", path)

    def _standin(self, method, path, obj=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.standin_port, timeout=REQUEST_TIMEOUT)
        try:
            body = json.dumps(obj) if obj is not None else None
            h = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            try:
                return r.status, json.loads(data.decode("utf-8")) if data else None
            except ValueError:
                return r.status, None
        finally:
            conn.close()

    def standin_leads(self, api):
        """The leads the stand-in received for api ("leadpro", "leadping", "lofty", ...)."""
        status, obj = self._standin("GET", "/_control/leads?api=" + urllib.parse.quote(api))
        if status != 200:
            raise RuntimeError("stand-in /_control/leads answered %d" % status)
        return obj.get("leads", []) if isinstance(obj, dict) else obj

    def standin_mode(self, mode):
        """POSTs mode (a dict) to the stand-in's /_control/mode."""
        return self._standin("POST", "/_control/mode", mode)

    def standin_reset(self):
        """Clears the stand-in's recorded leads and modes."""
        return self._standin("POST", "/_control/reset", {})

    def log_lines(self):
        """The bridge's stderr so far, as a list of lines."""
        with open(self.bridge_log, "r", errors="replace") as f:
            return f.read().splitlines()


# ---------------------------------------------------------------------------------------------

def demo(argv):
    """Runs the stack in the foreground on fixed ports until Ctrl-C or SIGTERM."""
    ap = argparse.ArgumentParser(prog="harness.py --demo")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--web-port", type=int, default=8080)
    ap.add_argument("--standin-port", type=int, default=8088)
    ap.add_argument("--fcgi", default="127.0.0.1:9000")
    ap.add_argument("--dir", default="/tmp/leadbridge-demo")
    ap.add_argument("--record", default=None, help="default: DIR/leads.json")
    ap.add_argument("--config", default=os.path.join(srcdir(), "conf", "leadbridge.json"))
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    record = a.record or os.path.join(a.dir, "leads.json")
    st = Stack(config=os.path.abspath(a.config), web_port=a.web_port,
               standin_port=a.standin_port, fcgi=a.fcgi, workdir=a.dir, record=record,
               threads=a.threads, keep=True)
    try:
        st.start()
        print("leadbridge demo is running:")
        print("  sample site:      %s/" % st.web)
        print("  forms post to:    %s/lead/..." % st.web)
        print("  stand-in APIs:    %s/  (leads: %s/_control/leads?api=leadpro)"
              % (st.standin_url, st.standin_url))
        print("  recorded leads:   %s" % record)
        print("  bridge log:       %s" % st.bridge_log)
        print("Press Ctrl-C to stop.")
        sys.stdout.flush()
        while True:
            for name, p in st.procs.items():
                if p.poll() is not None:
                    raise RuntimeError("%s exited unexpectedly (status %s); see %s"
                                       % (name, p.returncode, st.dir))
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...")
    except RuntimeError as e:
        print("demo: %s" % e, file=sys.stderr)
        st.stop(check=False)
        return 1
    try:
        st.stop()
    except AssertionError as e:
        print("demo: %s" % e, file=sys.stderr)
        return 1
    print("stopped.")
    return 0


if __name__ == "__main__":
    if "--demo" in sys.argv[1:]:
        sys.exit(demo(sys.argv[1:]))
    print(__doc__)
    sys.exit(2)
