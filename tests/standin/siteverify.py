#!/usr/bin/env python3
"""
siteverify.py: a local stand-in for the captcha providers' server-side verification endpoints,
for leadbridge's tests. Python 3 standard library only.

    python3 tests/standin/siteverify.py --port 8098 [--host 127.0.0.1]

It enforces each provider's documented siteverify contract instead of answering "success":

- Cloudflare Turnstile  POST /turnstile/v0/siteverify
  (https://developers.cloudflare.com/turnstile/get-started/server-side-validation/):
  form-urlencoded or JSON; "secret" and "response" required, "remoteip" and "idempotency_key"
  optional; a response token is at most 2048 characters, valid for 300 s and redeemable once.
  Answers {"success", "challenge_ts", "hostname", "error-codes", "action", "cdata"}; error codes
  missing-input-secret, invalid-input-secret, missing-input-response, invalid-input-response,
  bad-request, timeout-or-duplicate, internal-error.
- hCaptcha  POST /hcaptcha/siteverify  (https://docs.hcaptcha.com/#verify-the-user-response-server-side):
  form-urlencoded only; "secret", "response" required; "remoteip", "sitekey" optional (a sitekey
  that does not belong to the secret is sitekey-secret-mismatch). Answers {"success",
  "challenge_ts", "hostname", "credit", "error-codes", "score", "score_reason"}; tokens once only
  (invalid-or-already-seen-response).
- Google reCAPTCHA  POST /recaptcha/api/siteverify
  (https://developers.google.com/recaptcha/docs/verify): form-urlencoded (or query) "secret",
  "response", optional "remoteip". v2 answers {"success", "challenge_ts", "hostname",
  "error-codes"}; v3 tokens add "score" and "action". A token is valid for two minutes and once.

Every call is recorded (provider, whether the secret was right, the token, the remote ip) and no
secret is ever logged. The control API issues tokens as a provider's widget would and switches
failure modes:

    POST /_control/issue {"provider": "turnstile", "hostname": "...", "action": "...",
                          "score": 0.9}                       -> {"token": "..."}
    POST /_control/mode  {"mode": "ok" | "down" (HTTP 503) | "hang" (no answer for "delay" s)
                          | "garbage" (200 with HTML), "delay": 10}
    GET  /_control/calls -> {"calls": [...]}     POST /_control/reset     GET /_control/health
"""

import argparse
import datetime
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PROVIDERS = {
    "turnstile": {"path": "/turnstile/v0/siteverify", "ttl": 300, "json_ok": True,
                  "replay": "timeout-or-duplicate", "expired": "timeout-or-duplicate"},
    "hcaptcha": {"path": "/hcaptcha/siteverify", "ttl": 120, "json_ok": False,
                 "replay": "invalid-or-already-seen-response",
                 "expired": "invalid-or-already-seen-response"},
    "recaptcha": {"path": "/recaptcha/api/siteverify", "ttl": 120, "json_ok": False,
                  "replay": "timeout-or-duplicate", "expired": "timeout-or-duplicate"},
}
DEFAULT_SECRETS = {"turnstile": "ts-secret-test", "hcaptcha": "0x-hc-secret-test",
                   "recaptcha": "rc-secret-test"}
DEFAULT_SITEKEYS = {"hcaptcha": "10000000-ffff-ffff-ffff-000000000001"}
TOKEN_MAX = 2048
MAX_BODY = 64 * 1024
MODES = ("ok", "down", "hang", "garbage")


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
        timespec="seconds").replace("+00:00", "Z")


class State:
    def __init__(self, secrets_by_provider):
        self.lock = threading.Lock()
        self.secrets = secrets_by_provider
        self.reset()

    def reset(self):
        with self.lock:
            self.tokens = {}     # token -> {"provider", "issued", "used", "hostname", ...}
            self.calls = []
            self.mode = "ok"
            self.delay = 10.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "siteverify-standin"

    def log_message(self, fmt, *args):
        sys.stderr.write("siteverify %s %s\n" % (self.command, urlsplit(self.path).path))

    def _send(self, status, obj=None, raw=None, ctype="application/json"):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            return None
        return self.rfile.read(n) if n > 0 else b""

    def do_GET(self):
        state = self.server.state
        path = urlsplit(self.path).path
        if path == "/_control/health":
            self._send(200, {"ok": True})
        elif path == "/_control/calls":
            with state.lock:
                self._send(200, {"calls": list(state.calls)})
        elif any(path == p["path"] for p in PROVIDERS.values()):
            self._send(405, {"success": False, "error-codes": ["bad-request"]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        url = urlsplit(self.path)
        body = self._body()
        if body is None:
            self._send(413, {"success": False, "error-codes": ["bad-request"]})
            return
        if url.path.startswith("/_control/"):
            self._control(url.path, body)
            return
        for name, spec in PROVIDERS.items():
            if url.path == spec["path"]:
                self._verify(name, spec, url, body)
                return
        self._send(404, {"error": "not found"})

    def _params(self, spec, url, body):
        """The request's parameters by the provider's rules, or None when the body is refused."""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            if not spec["json_ok"]:
                return None
            try:
                obj = json.loads(body.decode("utf-8"))
            except ValueError:
                return None
            return {k: str(v) for k, v in obj.items()} if isinstance(obj, dict) else None
        if ctype not in ("application/x-www-form-urlencoded", ""):
            return None
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return None
        params = {k: v[0] for k, v in form.items()}
        if ctype == "" and not body:
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
        return params

    def _verify(self, provider, spec, url, body):
        state = self.server.state
        with state.lock:
            mode, delay = state.mode, state.delay
        if mode == "hang":
            time.sleep(delay)
        if mode == "down":
            self._send(503, raw=b"<html>Service Unavailable</html>", ctype="text/html")
            return
        if mode == "garbage":
            self._send(200, raw=b"<html>captcha</html>", ctype="text/html")
            return
        params = self._params(spec, url, body)
        codes = []
        result = {"success": False}
        secret_ok = False
        token = None
        if params is None:
            codes.append("bad-request")
        else:
            secret = params.get("secret")
            token = params.get("response")
            if not secret:
                codes.append("missing-input-secret")
            elif secret != state.secrets[provider]:
                codes.append("invalid-input-secret")
            else:
                secret_ok = True
            sitekey = params.get("sitekey")
            if provider == "hcaptcha" and sitekey and secret_ok and \
                    sitekey != DEFAULT_SITEKEYS["hcaptcha"]:
                codes.append("sitekey-secret-mismatch")
            if not token:
                codes.append("missing-input-response")
            elif len(token) > TOKEN_MAX:
                codes.append("invalid-input-response")
            elif not codes:
                with state.lock:
                    t = state.tokens.get(token)
                    if t is None or t["provider"] != provider:
                        codes.append("invalid-input-response")
                    elif t["used"]:
                        codes.append(spec["replay"])
                    elif time.time() - t["issued"] > spec["ttl"]:
                        codes.append(spec["expired"])
                    else:
                        t["used"] = True
                        result = {"success": True, "challenge_ts": iso(t["issued"]),
                                  "hostname": t["hostname"]}
                        if provider == "turnstile":
                            result["action"] = t.get("action") or ""
                            result["cdata"] = ""
                        if provider == "hcaptcha":
                            result["credit"] = False
                            if t.get("score") is not None:
                                result["score"] = t["score"]
                                result["score_reason"] = []
                        if provider == "recaptcha" and t.get("score") is not None:
                            result["score"] = t["score"]
                            result["action"] = t.get("action") or ""
        result["error-codes"] = codes
        if codes:
            result["success"] = False
        with state.lock:
            state.calls.append({"provider": provider, "secret_ok": secret_ok, "token": token,
                                "remoteip": (params or {}).get("remoteip"),
                                "success": result["success"], "error-codes": codes,
                                "at": time.time()})
        self._send(200, result)

    def _control(self, path, body):
        state = self.server.state
        try:
            req = json.loads(body.decode("utf-8")) if body.strip() else {}
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._send(400, {"error": "body must be a JSON object"})
            return
        if path == "/_control/issue":
            provider = req.get("provider")
            if provider not in PROVIDERS:
                self._send(400, {"error": "provider must be one of " + ", ".join(PROVIDERS)})
                return
            token = "%s.%s" % (provider[:2], secrets.token_urlsafe(int(req.get("length", 600))))
            with state.lock:
                state.tokens[token] = {"provider": provider, "issued": time.time() -
                                       float(req.get("age", 0)), "used": False,
                                       "hostname": req.get("hostname", "127.0.0.1"),
                                       "action": req.get("action"), "score": req.get("score")}
            self._send(200, {"token": token})
        elif path == "/_control/mode":
            mode = req.get("mode", "ok")
            if mode not in MODES:
                self._send(400, {"error": "mode must be one of " + ", ".join(MODES)})
                return
            with state.lock:
                state.mode = mode
                state.delay = float(req.get("delay", 10))
            self._send(200, {"ok": True, "mode": mode})
        elif path == "/_control/reset":
            state.reset()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "unknown control endpoint"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description="Stand-in captcha siteverify endpoints")
    p.add_argument("--host", default=env("SITEVERIFY_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("SITEVERIFY_PORT", "8098")))
    for name in PROVIDERS:
        p.add_argument("--%s-secret" % name, default=DEFAULT_SECRETS[name])
    args = p.parse_args(argv)
    server = Server((args.host, args.port), Handler)
    server.state = State({n: getattr(args, "%s_secret" % n) for n in PROVIDERS})
    sys.stderr.write("siteverify listening on http://%s:%d\n" % server.server_address[:2])
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
