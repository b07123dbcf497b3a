#!/usr/bin/env python3
"""stack.py: the real leadbridge stack for the browser tests, started with the integration harness.

    python3 tests/browser/stack.py --profile shipped|guards --dir DIR

Starts (tests/integration/harness.py's Stack) the stand-in lead APIs, the real bridge
($LEADBRIDGE_BIN) and a real nginx serving www/ with the shipped attribution snippet, plus a second
nginx for the cross-origin embed: one server (the "embed" origin, in the forms' origins) serving a
host page with the one-tag embed of the bridge's widget, and one more (the "stranger" origin, in no
form's origins) serving the same page. Prints one JSON line with the URLs, then runs until stdin
closes or SIGTERM, and stops everything (the bridge must exit 0).

The config is conf/leadbridge.json as shipped, with a few test settings (written into DIR):
  shipped  the outbox retries after 1-2 s (not 5 s), the form token's time trap is 0.5 s (not 3)
           and the per-IP rate limit is raised, so one suite run from one address fits in a
           minute or two (tests/integration/test_spam.py covers the limits themselves);
  guards   issue 11's human run: every free guard on and required. valuation: honeypot, a
           signed form token ("missing": "spam", min_seconds 3, as shipped) and the ALTCHA
           proof of work (required). contact: the same token and honeypot, both reaching a page
           without JavaScript through the SSI include; its challenge is "missing": "allow" (a page
           without JavaScript cannot solve it, as the README says).
Python 3 standard library only.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

EMBED_NGINX = """\
{user}
daemon off;
master_process on;
worker_processes 1;
pid {dir}/embed-nginx.pid;
error_log {dir}/embed-nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/embed-nginx-access.log;
    client_body_temp_path {dir}/nginx-tmp/embed_body;
    proxy_temp_path {dir}/nginx-tmp/embed_proxy;
    fastcgi_temp_path {dir}/nginx-tmp/embed_fastcgi;
{extra}
    server {{
        listen 127.0.0.1:{embed_port};
        root {root};
        index index.html;
    }}
    server {{
        listen 127.0.0.1:{stranger_port};
        root {root};
        index index.html;
    }}
}}
"""


def test_config(profile, out):
    """conf/leadbridge.json with the profile's settings, written to out."""
    with open(os.path.join(harness.srcdir(), "conf", "leadbridge.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("outbox", {})["retry_schedule"] = [1, 2, 4, 8]
    forms = cfg["forms"]
    if profile == "shipped":
        for name in ("contact", "valuation"):
            g = forms[name]["guard"]
            g["token"]["min_seconds"] = 0.5
            g["rate_limit"]["per_ip"] = {"burst": 500, "per_minute": 500}
    else:
        for name in ("contact", "valuation"):
            g = forms[name]["guard"]
            g["token"].update({"min_seconds": 3, "missing": "spam"})
            g["rate_limit"]["per_ip"] = {"burst": 100, "per_minute": 100}
        forms["valuation"]["guard"]["challenge"] = {"maxnumber": 20000, "expires": 600}
        forms["contact"]["guard"]["challenge"] = {"maxnumber": 20000, "expires": 600,
                                                  "missing": "allow"}
    with open(out, "w") as f:
        json.dump(cfg, f, indent=2)
    # the lists the config names by a relative path live next to it
    src = os.path.join(harness.srcdir(), "conf", "disposable-domains.txt")
    with open(src) as f, open(os.path.join(os.path.dirname(out),
                                           "disposable-domains.txt"), "w") as g:
        g.write(f.read())
    return out


def embed_site(dir_, bridge):
    """The host page on the other origin: the README's one-tag embed, nothing else of ours."""
    root = os.path.join(dir_, "embed-site")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(HERE, "embed.html")) as f:
        page = f.read().replace("@BRIDGE@", bridge)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(page)
    with open(os.path.join(HERE, "embed-contact.html")) as f:
        page = f.read().replace("@BRIDGE@", bridge)
    with open(os.path.join(root, "contact.html"), "w") as f:
        f.write(page)
    return root


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=("shipped", "guards"), default="shipped")
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    d = os.path.abspath(a.dir)
    os.makedirs(d, exist_ok=True)
    cfg_dir = os.path.join(d, "config")
    os.makedirs(cfg_dir, exist_ok=True)
    cfg = test_config(a.profile, os.path.join(cfg_dir, "leadbridge.json"))

    embed_port, stranger_port = harness.free_port(), harness.free_port()
    embed = "http://127.0.0.1:%d" % embed_port
    st = harness.Stack(config=cfg, workdir=os.path.join(d, "stack"), keep=True,
                       extra_env={"LEADBRIDGE_EMBED_SITE": embed})
    embed_proc = None
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        st.start()
        # LEADBRIDGE_SITE defaults to the stack's own origin (harness.config_vars)
        root = embed_site(d, st.web)
        conf = os.path.join(d, "embed-nginx.conf")
        os.makedirs(os.path.join(d, "nginx-tmp"), exist_ok=True)
        with open(conf, "w") as f:
            f.write(EMBED_NGINX.format(user="user root;" if os.geteuid() == 0 else "", dir=d, root=root, embed_port=embed_port,
                                       stranger_port=stranger_port, extra="\n".join(
                                           "    %s_temp_path %s/nginx-tmp/embed_%s;" % (m, d, m)
                                           for m in ("uwsgi", "scgi"))))
        log = open(os.path.join(d, "embed-nginx.log"), "ab")
        embed_proc = subprocess.Popen(
            [st.nginx_bin, "-p", d, "-e", os.path.join(d, "embed-nginx-error.log"), "-c", conf],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=harness.base_env(),
            start_new_session=True)
        log.close()
        st.procs["embed-nginx"] = embed_proc
        st._wait_accepting("embed-nginx", "127.0.0.1:%d" % embed_port)
        st._wait_accepting("embed-nginx", "127.0.0.1:%d" % stranger_port)
        print(json.dumps({"web": st.web, "standin": st.standin_url, "embed": embed,
                          "stranger": "http://127.0.0.1:%d" % stranger_port,
                          "dir": st.dir, "bridge_log": st.bridge_log, "config": cfg,
                          "bin": st.bin, "profile": a.profile}), flush=True)
        # until whoever started us closes our stdin
        while sys.stdin.buffer.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    except Exception as e:  # start-up failed: say why on stderr, exit non-zero
        sys.stderr.write("stack.py: %s\n" % e)
        rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if embed_proc is not None:
            st._terminate("embed-nginx")
            st.procs.pop("embed-nginx", None)
        try:
            st.stop(check=rc == 0)
        except AssertionError as e:
            sys.stderr.write("stack.py: %s\n" % e)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
