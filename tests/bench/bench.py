#!/usr/bin/env python3
"""bench.py: leadbridge's benchmark (run by scripts/bench): prints figures, asserts nothing.

Everything runs on 127.0.0.1, in one temp dir, and is stopped and removed at the end (or on
Ctrl-C/SIGTERM). One nginx (our own config, tests/bench/nginx.conf.in) fronts:

  1. throughput and latency with wrk (2 threads, 50 connections): a static file, the bare
     FastCGI responder (bare_fcgi.c) and leadbridge's echo form, both fed the same urlencoded
     form post (post.lua), both with the same number of threads;
  2. the bridge's memory (VmRSS, VmHWM from /proc/PID/status) idle and after that load;
  3. slow-API concurrency: the stand-in LeadPro answers after `delay` seconds; N clients post
     at once to a create form (bench.json, target timeout 10 s); we count completed requests and
     the time, and sample each bridge process's memory and thread count while they wait.
     Bridge set-ups: one process with -t 64 (its own socket), and spawn-fcgi -F 2 processes.

Usage: bench.py --bin LEADBRIDGE --bare BARE_FCGI [--quick] [--duration S]
Python 3 standard library only (plus the wrk program).
"""

import argparse
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
import harness  # noqa: E402  (free_port, find_nginx, fcgi_connect)

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
SLOW_DELAY = 2            # seconds the stand-in LeadPro waits before answering
WRK_THREADS, WRK_CONNS = 2, 50
BODY = ("name=Marla+Singer&email=marla%40example.com&phone=07986000000&enquiry=Selling"
        "&postcode=DE1+1JX&message=Is+the+flat+on+Elm+Street+still+available%3F"
        "&utm_source=newsletter&utm_medium=email&utm_campaign=spring&gclid=TEST123")


def say(msg):
    print("bench: " + msg, flush=True)


class Procs:
    """Processes we started (and spawn-fcgi's children, reparented to us): stopped by PID."""

    def __init__(self, workdir):
        self.dir = workdir
        self.popen = []          # (name, Popen)
        self.orphans = []        # PIDs of spawn-fcgi children (we are their subreaper)

    def spawn(self, name, argv, env=None):
        with open(os.path.join(self.dir, name + ".log"), "ab") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 env=env, cwd=self.dir, start_new_session=True)
        self.popen.append((name, p))
        return p

    def wait_accepting(self, name, p, addr):
        """Waits (bounded) until addr accepts; raises if p exited first (p may be None)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if p is not None and p.poll() is not None:
                raise RuntimeError("%s exited (%s) during start-up:\n%s" % (
                    name, p.returncode, harness.tail(os.path.join(self.dir, name + ".log"))))
            try:
                harness.fcgi_connect(addr, timeout=2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("%s did not accept on %s within %.0f s" % (name, addr, START_TIMEOUT))

    def stop(self, name_or_popen):
        """SIGTERM, bounded wait, then SIGKILL, for one Popen (or every one with that name)."""
        for name, p in list(self.popen):
            if p is not name_or_popen and name != name_or_popen:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=STOP_TIMEOUT)
            self.popen.remove((name, p))

    def stop_pids(self, pids):
        """Stops reparented children by PID: SIGTERM, bounded wait (reaping), then SIGKILL."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        left = list(pids)
        while left and time.monotonic() < deadline:
            for pid in list(left):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid          # not our child (no subreaper): it is gone or not ours
                    if os.path.exists("/proc/%d" % pid):
                        done = 0
                if done == pid:
                    left.remove(pid)
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for pid in pids:
            if pid in self.orphans:
                self.orphans.remove(pid)

    def stop_all(self):
        self.stop_pids(list(self.orphans))
        for name, p in list(reversed(self.popen)):
            self.stop(p)


def become_subreaper():
    """prctl(PR_SET_CHILD_SUBREAPER): spawn-fcgi's children become ours when it exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def mem(pid):
    """{'rss', 'hwm', 'anon', 'file' (kB), 'threads'} from /proc/PID/status (None when gone).

    anon (RssAnon) is the process's own memory; file (RssFile) is mostly shared libraries'
    pages (libcurl, OpenSSL, GnuTLS...), shared with every other process that maps them."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "VmRSS":
                    out["rss"] = int(v.split()[0])
                elif k == "VmHWM":
                    out["hwm"] = int(v.split()[0])
                elif k == "RssAnon":
                    out["anon"] = int(v.split()[0])
                elif k == "RssFile":
                    out["file"] = int(v.split()[0])
                elif k == "Threads":
                    out["threads"] = int(v.split()[0])
    except OSError:
        return None
    return out


def mib(kb):
    return "%.1f MiB" % (kb / 1024.0)


def write_nginx_conf(d, web_port, bare_addr, bridge_addr, workers):
    with open(os.path.join(HERE, "nginx.conf.in")) as f:
        text = f.read()
    for k, v in {"@USER@": "user root;" if os.geteuid() == 0 else "", "@DIR@": d,
                 "@WORKERS@": str(workers), "@WEB_PORT@": str(web_port),
                 "@BARE@": bare_addr, "@BRIDGE@": bridge_addr}.items():
        text = text.replace(k, v)
    for sub in ("www", "nginx-tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


def start_nginx(procs, d, web_port, bare_addr, bridge_addr, workers):
    nginx = harness.find_nginx()
    if nginx is None:
        raise RuntimeError("nginx is not installed")
    conf = write_nginx_conf(d, web_port, bare_addr, bridge_addr, workers)
    p = procs.spawn("nginx", [nginx, "-p", d, "-e", os.path.join(d, "nginx-error.log"),
                              "-c", conf])
    procs.wait_accepting("nginx", p, "127.0.0.1:%d" % web_port)
    return p


def http_post(port, path, body, timeout=30.0):
    """One POST through nginx; returns (status, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              "Accept": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def http_get(port, path, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def to_ms(text):
    """wrk's '1.23ms' / '850.00us' / '1.02s' → milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def run_wrk(url, seconds, script=None):
    """Runs wrk; returns {'rps', 'p50', 'p99', 'requests', 'non2xx', 'errors'}."""
    argv = ["wrk", "-t%d" % WRK_THREADS, "-c%d" % WRK_CONNS, "-d%ds" % seconds, "--latency",
            "--timeout", "5s"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=seconds + 30, universal_newlines=True).stdout
    r = {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "requests": 0, "non2xx": 0,
         "errors": 0, "raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, out, re.M)
        if m:
            r[key] = to_ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())
    return r


def bridge_env(d, standin_port):
    env = dict(os.environ)
    env.update({
        "LEADBRIDGE_SECRET": "bench-secret-0123456789abcdef0123456789",
        "LEADBRIDGE_SPOOL": os.path.join(d, "spool"),
        "LEADPRO_URL": "http://127.0.0.1:%d/leadpro/api/v103" % standin_port,
        "LEADPRO_API_KEY": "test-leadpro-key",
    })
    os.makedirs(env["LEADBRIDGE_SPOOL"], exist_ok=True)
    return env


# ---- 1 + 2: throughput, latency, memory -----------------------------------------------------

def throughput(a, procs, d, results):
    threads = a.threads
    web, bare_port, bridge_port = harness.free_port(), harness.free_port(), harness.free_port()
    bare_addr, bridge_addr = "127.0.0.1:%d" % bare_port, "127.0.0.1:%d" % bridge_port
    env = bridge_env(d, a.standin_port)
    bare = procs.spawn("bare", [a.bare, "-s", bare_addr, "-t", str(threads)])
    procs.wait_accepting("bare", bare, bare_addr)
    bridge = procs.spawn("bridge", [a.bin, "-c", a.config, "-s", bridge_addr,
                                    "-t", str(threads)], env=env)
    procs.wait_accepting("bridge", bridge, bridge_addr)
    time.sleep(0.5)
    idle = mem(bridge.pid)
    bare_idle = mem(bare.pid)
    nginx = start_nginx(procs, d, web, bare_addr, bridge_addr, a.nginx_workers)
    with open(os.path.join(d, "www", "static.json"), "w") as f:
        f.write('{"ok":true,"status":"static"}\n')

    # Each endpoint must answer 200 with what we expect before it is measured.
    st, body = http_get(web, "/static.json")
    if st != 200 or b"static" not in body:
        raise RuntimeError("static file: %d %r" % (st, body[:200]))
    st, body = http_post(web, "/bare", BODY)
    if st != 200 or b"bare" not in body:
        raise RuntimeError("bare FastCGI: %d %r" % (st, body[:200]))
    st, body = http_post(web, "/lead/echo", BODY)
    if st != 200 or json.loads(body.decode()).get("lead", {}).get("first_name") != "Marla":
        raise RuntimeError("leadbridge echo: %d %r" % (st, body[:300]))

    script = os.path.join(HERE, "post.lua")
    base = "http://127.0.0.1:%d" % web
    runs = (("nginx static", base + "/static.json", None),
            ("bare fastcgi", base + "/bare", script),
            ("leadbridge echo", base + "/lead/echo", script))
    # Rounds interleave the three so that a noisy neighbour hurts all alike; the best round of
    # each counts (the machine's load is printed with the figures).
    for rnd in range(a.rounds):
        for name, url, sc in runs:
            run_wrk(url, 1, sc)                 # warm-up, not counted
            r = run_wrk(url, a.duration, sc)
            if r["requests"] == 0:
                raise RuntimeError("wrk measured nothing for %s:\n%s" % (name, r["raw"]))
            r["all"] = results["wrk"].get(name, {}).get("all", []) + [r["rps"]]
            if r["rps"] >= results["wrk"].get(name, {}).get("rps", -1):
                results["wrk"][name] = r
            else:
                results["wrk"][name]["all"] = r["all"]
    results["mem"]["bridge"] = {"idle": idle, "after": mem(bridge.pid)}
    results["mem"]["bare"] = {"idle": bare_idle, "after": mem(bare.pid)}
    log = os.path.join(d, "bridge.log")
    results["bridge_log_bytes"] = os.path.getsize(log) if os.path.exists(log) else 0
    procs.stop(nginx)
    procs.stop(bridge)
    procs.stop(bare)
    results["bridge_rc"] = bridge.returncode


# ---- 3: slow API ----------------------------------------------------------------------------

def standin_control(port, path, obj):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(obj),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def start_bridges(a, procs, d, nproc, threads, env):
    """Starts the bridge: its own socket (nproc 1) or spawn-fcgi -F nproc. Returns (addr, pids)."""
    port = harness.free_port()
    addr = "127.0.0.1:%d" % port
    if nproc == 1:
        p = procs.spawn("bridge-slow", [a.bin, "-c", a.config, "-s", addr, "-t", str(threads)],
                        env=env)
        procs.wait_accepting("bridge-slow", p, addr)
        return addr, [p.pid], p
    # The children inherit spawn-fcgi's stderr: the log file gets their request lines too.
    log = os.path.join(d, "bridge-spawn-fcgi.log")
    with open(log, "ab") as f:
        subprocess.run(["spawn-fcgi", "-a", "127.0.0.1", "-p", str(port), "-F", str(nproc),
                        "--", a.bin, "-c", a.config, "-t", str(threads)],
                       stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, cwd=d, timeout=30,
                       start_new_session=True)
    with open(log, errors="replace") as f:
        out = f.read()
    pids = [int(x) for x in re.findall(r"PID: (\d+)", out)]
    pids = pids[-nproc:]
    procs.orphans.extend(pids)
    if len(pids) != nproc:
        raise RuntimeError("spawn-fcgi started %d of %d processes:\n%s" % (len(pids), nproc, out))
    procs.wait_accepting("spawn-fcgi bridges", None, addr)
    return addr, pids, None


def slow_clients(web, n, timeout, tag):
    """n threads POST distinct leads at once (emails unique per tag: the bridge answers a repeated
    submission from its outbox without calling the API). Returns (done_ok, statuses, wall s,
    latencies)."""
    barrier = threading.Barrier(n + 1)
    res = [None] * n

    def one(i):
        body = BODY.replace("marla%40example.com", "bench%d.%s%%40example.com" % (i, tag))
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        try:
            st, b = http_post(web, "/lead/create", body, timeout=timeout)
            ok = st == 200 and json.loads(b.decode()).get("status") == "created"
            res[i] = (st, ok, time.monotonic() - t0)
        except Exception as e:   # a timeout or a reset is a figure too
            res[i] = (type(e).__name__, False, time.monotonic() - t0)

    ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    barrier.wait(timeout=30)
    t0 = time.monotonic()
    for t in ts:
        t.join(timeout=max(0.1, timeout + 5 - (time.monotonic() - t0)))
    wall = time.monotonic() - t0
    statuses = {}
    for r in res:
        key = str(r[0]) if r is not None else "unfinished"
        statuses[key] = statuses.get(key, 0) + 1
    done = [r for r in res if r is not None and r[1]]
    return len(done), statuses, wall, sorted(r[2] for r in done)


def standin_lead_count(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_control/leads?api=leadpro")
        r = conn.getresponse()
        return len(json.loads(r.read().decode()).get("leads", []))
    finally:
        conn.close()


def slow_api(a, procs, d, results):
    setups = [(2, 32, (64, 200))]
    if not a.quick:
        setups = [(1, 64, (64, 200)), (2, 32, (64, 200)), (2, 100, (200,))]
    for k, (nproc, threads, clients) in enumerate(setups):
        env = bridge_env(os.path.join(d, "setup%d" % k), a.standin_port)
        addr, pids, popen = start_bridges(a, procs, d, nproc, threads, env)
        web = harness.free_port()
        nginx = start_nginx(procs, d, web, "127.0.0.1:1", addr, a.nginx_workers)
        time.sleep(0.5)
        idle = {pid: mem(pid) for pid in pids}
        for n in clients:
            if standin_control(a.standin_port, "/_control/reset", {}) != 200 or \
               standin_control(a.standin_port, "/_control/mode",
                               {"api": "leadpro", "mode": "slow", "delay": SLOW_DELAY}) != 200:
                raise RuntimeError("the stand-in refused the slow mode")
            peak = {pid: {"rss": 0, "anon": 0, "threads": 0} for pid in pids}
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    for pid in pids:
                        m = mem(pid)
                        if m:
                            peak[pid]["rss"] = max(peak[pid]["rss"], m.get("rss", 0))
                            peak[pid]["anon"] = max(peak[pid]["anon"], m.get("anon", 0))
                            peak[pid]["threads"] = max(peak[pid]["threads"], m.get("threads", 0))
                    stop.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            bound = SLOW_DELAY * (n // (nproc * threads) + 2) + 20
            done, statuses, wall, lat = slow_clients(web, n, bound,
                                                     "%d.%d.%d" % (os.getpid(), k, n))
            received = standin_lead_count(a.standin_port)
            stop.set()
            sampler.join(timeout=5)
            after = {pid: mem(pid) for pid in pids}
            results["slow"].append({
                "nproc": nproc, "threads": threads, "clients": n, "done": done,
                "received": received,
                "statuses": statuses, "wall": wall,
                "p50": lat[len(lat) // 2] if lat else float("nan"),
                "max": lat[-1] if lat else float("nan"),
                "idle": idle, "peak": peak, "after": after})
        standin_control(a.standin_port, "/_control/reset", {})
        procs.stop(nginx)
        if popen is not None:
            procs.stop(popen)
        else:
            procs.stop_pids(pids)


# ---- the report -----------------------------------------------------------------------------

def report(a, results):
    print()
    say("%s; wrk %d threads, %d connections, %d s per run, best of %d; nginx %d worker(s); "
        "%d FastCGI threads for both responders (TCP); %d CPUs, load average %s at start"
        % ("quick run" if a.quick else "full run", WRK_THREADS, WRK_CONNS, a.duration, a.rounds,
           a.nginx_workers, a.threads, os.cpu_count() or 0, a.load))
    w = results["wrk"]
    bare_rps = w.get("bare fastcgi", {}).get("rps", 0)
    for name in ("nginx static", "bare fastcgi", "leadbridge echo"):
        r = w.get(name)
        if r is None:
            continue
        extra = ""
        if name == "leadbridge echo" and bare_rps > 0:
            extra = " (%.0f%% of bare)" % (100.0 * r["rps"] / bare_rps)
        bad = ""
        if r["non2xx"] or r["errors"]:
            bad = "  [non-2xx %d, socket errors %d]" % (r["non2xx"], r["errors"])
        rounds = ""
        if len(r.get("all", [])) > 1:
            rounds = "  [rounds: %s]" % ", ".join("%.0f" % x for x in r["all"])
        say("%-20s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms%s%s%s"
            % (name, r["rps"], r["p50"], r["p99"], extra, bad, rounds))
    for key, label in (("bridge", "bridge RSS"), ("bare", "bare fastcgi RSS")):
        m = results["mem"].get(key)
        if not (m and m["idle"] and m["after"]):
            continue
        i, f = m["idle"], m["after"]
        say("%-20s idle %s, after load %s (HWM %s), %d threads"
            % (label, mib(i["rss"]), mib(f["rss"]), mib(f["hwm"]), f["threads"]))
        say("%-20s   own (RssAnon) idle %s, after load %s; shared libraries (RssFile) %s"
            % ("", mib(i.get("anon", 0)), mib(f.get("anon", 0)), mib(f.get("file", 0))))
    if results.get("bridge_log_bytes"):
        say("%-20s %.1f MiB of request log lines (stderr) during the echo runs"
            % ("bridge log", results["bridge_log_bytes"] / 1048576.0))
    for s in results["slow"]:
        setup = ("1 process -t %d" % s["threads"] if s["nproc"] == 1 else
                 "spawn-fcgi -F %d, -t %d each" % (s["nproc"], s["threads"]))
        per = "; ".join("pid %d: idle %s (own %s), peak %s (own %s, %d threads), HWM %s"
                        % (pid, mib(s["idle"][pid]["rss"]) if s["idle"].get(pid) else "?",
                           mib(s["idle"][pid].get("anon", 0)) if s["idle"].get(pid) else "?",
                           mib(s["peak"][pid]["rss"]), mib(s["peak"][pid]["anon"]),
                           s["peak"][pid]["threads"],
                           mib(s["after"][pid]["hwm"]) if s["after"].get(pid) else "?")
                        for pid in sorted(s["peak"]))
        other = {k: v for k, v in s["statuses"].items() if k != "200"}
        say("slow API (%d s), %s, %3d clients: %d done (created; API got %d) in %.1f s "
            "(p50 %.1f s, max %.1f s)%s"
            % (SLOW_DELAY, setup, s["clients"], s["done"], s["received"], s["wall"], s["p50"],
               s["max"],
               (", other: %s" % other) if other else ""))
        say("    RSS %s" % per)
    inflight = [s for s in results["slow"] if s["clients"] > s["nproc"] * s["threads"]]
    if inflight:
        say("note: thread-per-request: at most processes x threads requests wait on the API at "
            "once; the rest queue in the listen backlog (leadbridge -s: 128; spawn-fcgi: 1024) "
            "and in nginx, and finish in waves of %d s" % SLOW_DELAY)
    if results.get("bridge_rc") not in (0, None):
        say("note: the bridge exited with status %r on SIGTERM (expected 0)"
            % results["bridge_rc"])


def main():
    ap = argparse.ArgumentParser(description="leadbridge benchmark")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bare", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=None, help="wrk rounds (best counts)")
    ap.add_argument("--threads", type=int, default=8, help="FastCGI threads (throughput part)")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    a.duration = a.duration or (3 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 2)
    try:
        with open("/proc/loadavg") as f:
            a.load = " ".join(f.read().split()[:3])
    except OSError:
        a.load = "?"
    a.config = os.path.join(HERE, "bench.json")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    d = tempfile.mkdtemp(prefix="leadbridge-bench-")
    procs = Procs(d)
    results = {"wrk": {}, "mem": {}, "slow": []}
    rc = 0
    if not become_subreaper():
        say("note: could not become a subreaper; spawn-fcgi children are stopped by PID only")
    try:
        a.standin_port = harness.free_port()
        st = procs.spawn("standin", [sys.executable, os.path.join(SRC, "tests", "standin",
                                                                  "leadapi.py"),
                                     "--host", "127.0.0.1", "--port", str(a.standin_port)],
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        procs.wait_accepting("standin", st, "127.0.0.1:%d" % a.standin_port)
        say("1-2/3 throughput, latency and memory (%d s per run) ..." % a.duration)
        throughput(a, procs, d, results)
        say("3/3 slow API concurrency ...")
        slow_api(a, procs, d, results)
    except KeyboardInterrupt:
        say("interrupted")
        rc = 130
    except Exception as e:
        say("FAILED: %s" % e)
        rc = 1
    finally:
        procs.stop_all()
        if a.keep or rc not in (0, 130):
            say("logs kept in %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)
    report(a, results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
