"""test_monitor.py: metrics and health (issue 13, part 4).

conf/ops.json has a LeadPro form (/lead/create), an echo form, the Prometheus endpoint
/lead/metrics (127.0.0.1/32 or a bearer token) and the health endpoint /lead/health.

- Scrape through nginx after traffic of every kind (echo 200s, a 422, a created lead, a transient
  failure, a permanent refusal): the numbers are exact, `promtool check metrics` passes, and a
  real Prometheus server (Debian's prometheus) scrapes it with the bearer token: its query API
  answers with our series.
- Access control: an address off the allow-list is refused 403 (and nothing leaks), the bearer
  token lets it in, a wrong token does not; POST is 405.
- Health: 200 with the checks; 503 with a JSON reason once the oldest queued job passes
  max_queue_age.
- `leadbridge queue stats [--json]` prints the same numbers.
- Counters are shared across processes: two bridge processes forked by spawn-fcgi -F 2 each serve
  part of 60 requests, and either one's scrape counts all 60.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import harness
from harness import Stack

TOKEN = "metrics-token-0123456789"


def lead(t, **over):
    d = {"first_name": "Ada", "last_name": "M" + t, "email": "m.%s@example.com" % t,
         "phone": "07700 900789", "property_postcode": "DE1 1JX"}
    d.update(over)
    return d


def parse_metrics(text):
    """{(name, frozenset(labels.items())): value} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, _, rest = head.partition("{")
            labels = {}
            for part in rest.rstrip("}").split('",'):
                if not part:
                    continue
                k, _, v = part.partition('="')
                labels[k] = v.rstrip('"')
        else:
            name, labels = head, {}
        out[(name, frozenset(labels.items()))] = float(value)
    return out


def metric(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def config_with(src, **top):
    """A temp copy of conf/src with top-level keys replaced; returns its path."""
    with open(os.path.join(harness.HERE, "conf", src)) as f:
        obj = json.load(f)
    obj.update(top)
    fd, path = tempfile.mkstemp(prefix="leadbridge-ops-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    return path


class Monitor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.st = Stack(config="ops.json").start()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def scrape(self, **params):
        p = harness.cgi_params("GET", "/lead/metrics", **params)
        return self.st.fcgi(p)

    def test_1_numbers_promtool_and_prometheus(self):
        st = self.st
        before = parse_metrics(st.request("GET", "/lead/metrics").body.decode())
        for i in range(5):
            self.assertEqual(st.post("/lead/echo", "n=%d" % i).status, 200)
        self.assertEqual(st.post("/lead/create", {"first_name": "Ada"}).status, 422)
        self.assertEqual(st.post("/lead/create", lead("a")).status, 200)
        st.standin_mode({"api": "leadpro", "mode": "unavailable", "count": 1})
        self.assertEqual(st.post("/lead/create", lead("b")).status, 202)
        self.assertEqual(st.post("/lead/create", lead("c", office="99")).status, 422)

        r = st.request("GET", "/lead/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.header("content-type").startswith("text/plain; version=0.0.4"), r)
        text = r.body.decode()
        m = parse_metrics(text)

        def delta(name, **labels):
            return metric(m, name, **labels) - metric(before, name, **labels)

        self.assertEqual(delta("leadbridge_requests_total", form="echo", status="200"), 5)
        self.assertEqual(delta("leadbridge_requests_total", form="create", status="422"), 2)
        self.assertEqual(delta("leadbridge_requests_total", form="create", status="200"), 1)
        self.assertEqual(delta("leadbridge_requests_total", form="create", status="202"), 1)
        self.assertEqual(delta("leadbridge_request_duration_seconds_count", form="create"), 4)
        self.assertEqual(delta("leadbridge_request_duration_seconds_bucket", form="echo",
                               le="+Inf"), 5)
        self.assertEqual(delta("leadbridge_deliveries_total", target="leadpro", outcome="ok"), 1)
        self.assertEqual(delta("leadbridge_deliveries_total", target="leadpro",
                               outcome="transient"), 1)
        self.assertEqual(delta("leadbridge_deliveries_total", target="leadpro",
                               outcome="permanent"), 1)
        self.assertEqual(delta("leadbridge_dead_letters_total", form="create", target="leadpro"),
                         1)
        self.assertGreaterEqual(metric(m, "leadbridge_queue_depth"), 1)
        self.assertGreaterEqual(metric(m, "leadbridge_dead_letters"), 1)
        self.assertIn("# TYPE leadbridge_spam_total counter", text)
        # Scrapes are not requests: nothing counted for the metrics path.
        self.assertNotIn("/lead/metrics", text)
        # No personal data: nothing a visitor typed.
        for secret in ("Ada", "example.com", "07700", TOKEN):
            self.assertNotIn(secret, text)

        if shutil.which("promtool") is None:
            self.skipTest("promtool is not installed (Debian's prometheus package)")
        p = subprocess.run(["promtool", "check", "metrics"], input=r.body,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        sys.stderr.write("promtool check metrics: rc=%d %s\n"
                         % (p.returncode, p.stdout.decode().strip() or "(no findings)"))
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        self.assertEqual(p.stdout.decode().strip(), "")

        if shutil.which("prometheus") is None:
            self.skipTest("prometheus is not installed")
        self.prometheus_scrapes()

    def prometheus_scrapes(self):
        """A real Prometheus scrapes /lead/metrics through nginx with the bearer token."""
        d = tempfile.mkdtemp(prefix="leadbridge-prom-")
        port = harness.free_port()
        conf = os.path.join(d, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: leadbridge\n"
                    "    metrics_path: /lead/metrics\n"
                    "    authorization:\n      credentials: %s\n"
                    "    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                    % (TOKEN, self.st.web_port))
        log = open(os.path.join(d, "prometheus.log"), "wb")
        t0 = time.monotonic()
        p = subprocess.Popen(["prometheus", "--config.file=" + conf,
                              "--storage.tsdb.path=" + os.path.join(d, "data"),
                              "--web.listen-address=127.0.0.1:%d" % port],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True)
        log.close()
        try:
            got = None
            deadline = time.monotonic() + 60
            q = urllib.parse.quote('leadbridge_requests_total{form="echo",status="200"}')
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/query?query=%s"
                                                % (port, q), timeout=5) as r:
                        res = json.loads(r.read())["data"]["result"]
                    if res:
                        got = res
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.5)
            sys.stderr.write("prometheus scraped the endpoint after %.1f s\n"
                             % (time.monotonic() - t0))
            self.assertTrue(got, "Prometheus never stored our series:\n" +
                            harness.tail(os.path.join(d, "prometheus.log")))
            self.assertGreaterEqual(float(got[0]["value"][1]), 5)
            with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % port,
                                        timeout=5) as r:
                targets = json.loads(r.read())["data"]["activeTargets"]
            self.assertEqual([t["health"] for t in targets], ["up"], targets)
        finally:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
            shutil.rmtree(d, ignore_errors=True)

    def test_2_access_control(self):
        r = self.scrape(headers={})
        self.assertEqual(r.status, 200, r)          # 127.0.0.1 is allow-listed
        p = harness.cgi_params("GET", "/lead/metrics")
        p["REMOTE_ADDR"] = "10.1.2.3"
        r = self.st.fcgi(p)
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json()["error"]["code"], "forbidden")
        self.assertNotIn(b"leadbridge_", r.body)
        p["HTTP_AUTHORIZATION"] = "Bearer " + TOKEN
        r = self.st.fcgi(p)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"leadbridge_requests_total", r.body)
        for wrong in ("Bearer " + TOKEN[:-1] + "X", "Bearer " + TOKEN + "0", "Basic " + TOKEN,
                      "Bearer", TOKEN):
            p["HTTP_AUTHORIZATION"] = wrong
            r = self.st.fcgi(p)
            self.assertEqual(r.status, 403, (wrong, r))
        p = harness.cgi_params("POST", "/lead/metrics", body=b"x")
        r = self.st.fcgi(p, b"x")
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.header("allow"), "GET, HEAD")

    def test_3_health_ok(self):
        status, body = self.st.get_json("/lead/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["checks"]["spool"], "writable")
        self.assertIn("oldest_age", body["checks"]["queue"])
        self.assertEqual(self.st.request("HEAD", "/lead/health").status, 200)

    def test_4_queue_stats(self):
        st = self.st
        p = st.run_bin(["-c", st.config, "queue", "stats", "--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        j = json.loads(p.stdout)
        m = parse_metrics(st.request("GET", "/lead/metrics").body.decode())
        self.assertEqual(j["requests"]["echo"]["200"],
                         metric(m, "leadbridge_requests_total", form="echo", status="200"))
        self.assertEqual(j["queue"]["queued"], metric(m, "leadbridge_queue_depth"))
        self.assertEqual(j["queue"]["dead"], metric(m, "leadbridge_dead_letters"))
        p = st.run_bin(["-c", st.config, "queue", "stats"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("queued (oldest", p.stdout)
        self.assertRegex(p.stdout, r"echo .*200=%d" % j["requests"]["echo"]["200"])


class HealthQueueAge(unittest.TestCase):
    def test_old_queued_job_is_503_with_reason(self):
        cfg = config_with("ops.json", health={"path": "/lead/health", "max_queue_age": 1})
        self.addCleanup(os.unlink, cfg)
        with Stack(config=cfg) as st:
            status, body = st.get_json("/lead/health")
            self.assertEqual(status, 200, body)
            st.standin_mode({"api": "leadpro", "mode": "unavailable"})
            self.assertEqual(st.post("/lead/create", lead("q")).status, 202)
            time.sleep(2.2)
            status, body = st.get_json("/lead/health")
            self.assertEqual(status, 503, body)
            self.assertEqual(body["status"], "fail")
            self.assertEqual(body["error"]["code"], "unavailable")
            self.assertIn("oldest queued job", body["error"]["message"])
            self.assertGreaterEqual(body["checks"]["queue"]["oldest_age"], 2)
            self.assertNotIn(st.dir, json.dumps(body))   # no spool path
            st.standin_mode({"api": "leadpro", "mode": "ok"})


@unittest.skipIf(shutil.which("spawn-fcgi") is None, "spawn-fcgi is not installed")
class SharedAcrossProcesses(unittest.TestCase):
    def test_two_processes_one_set_of_counters(self):
        with Stack(config="ops.json", nginx=False) as st:
            d = os.path.join(st.dir, "spawn")
            os.makedirs(d)
            port = harness.free_port()
            cmd = ["spawn-fcgi", "-a", "127.0.0.1", "-p", str(port), "-F", "2", "-d", d, "--",
                   "/bin/sh", "-c", 'exec "$0" -c "$1" -t 2 2>>"$2/bridge-$$.log"', st.bin,
                   st.config, d]
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=st.bridge_env(), timeout=20)
            out = p.stdout.decode()
            pids = [int(x) for x in __import__("re").findall(r"PID: (\d+)", out)]
            self.assertEqual(len(pids), 2, out)
            try:
                addr = "127.0.0.1:%d" % port
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        harness.fcgi_connect(addr, timeout=2).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                import threading
                errors = []

                def echo_params(i):
                    return harness.cgi_params("POST", "/lead/echo", body=b"n=%d" % i,
                                              content_type="application/x-www-form-urlencoded")

                # Four requests that wait for their bodies occupy all 2 x 2 worker threads, so
                # each process serves at least two of the 60 whatever the kernel's accept order.
                held = []
                for i in range(4):
                    c = harness.fcgi_connect(addr)
                    harness.fcgi_begin(c, echo_params(i))
                    held.append(c)
                time.sleep(0.5)
                for i, c in enumerate(held):
                    harness.fcgi_send_stdin(c, b"n=%d" % i, end=True)
                    out, _, _ = harness.fcgi_read(c)
                    c.close()
                    if harness.Response(*harness.parse_cgi(out)).status != 200:
                        errors.append(out[:200])

                def client(k):
                    for i in range(4 + k, 60, 6):
                        try:
                            r = harness.fcgi_request(addr, echo_params(i), b"n=%d" % i)
                            if r.status != 200:
                                errors.append(r.status)
                        except OSError as e:
                            errors.append(str(e))

                threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)
                self.assertEqual(errors, [])
                served = {}
                for pid in pids:
                    with open(os.path.join(d, "bridge-%d.log" % pid)) as f:
                        served[pid] = sum(1 for line in f if '"form":"echo"' in line)
                self.assertEqual(sum(served.values()), 60, served)
                for pid, n in served.items():
                    self.assertGreaterEqual(n, 2, "process %d served nothing: %r" % (pid, served))
                sys.stderr.write("spawn-fcgi -F 2: requests per process %r\n" % served)
                for _ in range(4):   # scrapes land on either process: all see 60
                    r = harness.fcgi_request(addr, harness.cgi_params("GET", "/lead/metrics"))
                    m = parse_metrics(r.body.decode())
                    self.assertEqual(metric(m, "leadbridge_requests_total", form="echo",
                                            status="200"), 60)
            finally:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 15
                for pid in pids:
                    while time.monotonic() < deadline:
                        try:
                            os.kill(pid, 0)
                        except ProcessLookupError:
                            break
                        time.sleep(0.05)


if __name__ == "__main__":
    unittest.main()
