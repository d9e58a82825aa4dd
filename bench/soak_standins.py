"""Loopback stand-ins for the fault soak (bench/soak.py), each knowing its ground truth.

- `FaultyWeb`: one HTTP server on 127.0.0.1 that serves every web scenario under its own
  prefix `/s/<scenario>/`, with that scenario's fault: status storms (503, 429 with
  Retry-After), connection resets, hangs, slow answers, truncated bodies, malformed (not
  HTTP) answers, redirects out of scope, or "down until the bench fixes it". Every answer
  that does get through carries the same headers, so the findings `http_headers` must
  produce are known in advance (`WEB_TRUTH`).
- `write_wrapper`: a scanner binary wrapper (SECFLOW_BANDIT / SECFLOW_DETECT_SECRETS point at
  it) that reads a sidecar `<target>.soak.json` next to the scanned tree and crashes
  (SIGSEGV), prints garbage, exits 127 (what a shell says for a missing command) or
  sleeps before running the real scanner: a tool crash injected per scenario, decided in
  the scanner process itself, so every worker sees the same fault.
- Source trees with planted findings (`bandit_tree`, `secrets_tree`, `sca_tree`) and their
  ground truth; the OSV stand-in is tests/osv_standin.py (its data is the truth), faults on
  it come from the spec's `chaos:` section (workers run with SECFLOW_CHAOS=1).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What every answer of the web stand-in carries: two headers missing on purpose.
WEB_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Content-Type": "text/html",
}
WEB_TRUTH = ("referrer-policy-missing", "x-content-type-options-missing")

# examples/vulnerable-app as bandit reports it (tests/test_scanner_bandit.py, PLANTED, plus
# the two low-severity import warnings bandit adds for subprocess and pickle)
BANDIT_TRUTH = (
    ("B404", "app.py:3"),
    ("B403", "storage.py:3"),
    ("B602", "app.py:10"),
    ("B501", "app.py:15"),
    ("B301", "storage.py:10"),
    ("B506", "storage.py:15"),
    ("B105", "config.py:5"),
    ("B324", "crypto.py:8"),
)
SECRETS_TRUTH = (("Private Key", "deploy_key.pem:1"),)
# A key header is all detect-secrets' PrivateKeyDetector needs; the body is no key.
_PEM = "-----BEGIN RSA PRIVATE KEY-----\nnot a key, a soak fixture\n-----END RSA PRIVATE KEY-----\n"


@dataclass
class WebFault:
    """How the web stand-in treats one scenario's requests.

    mode: ok | flaky (503/429 at `probability`) | reset (RST at `probability`) |
    malformed (not HTTP at `probability`) | storm (the first `first_n` answered 503/429) |
    hang (the first `first_n` never answered for `seconds`) | slow (every answer `seconds`
    late) | truncated (body cut short) | redirect_out (302 to a denied prefix) |
    down (503 until `fixed` is set by the bench).

    A recovery validation's health probe (header `X-SecFlow-Probe`) is counted apart
    (`probes`) and answered by the target's health alone (503 while down, else 200): it
    draws no fault and uses up no `first_n`, so validating a recovery leaves the tool's
    fault sequence as the seed made it."""

    mode: str = "ok"
    probability: float = 0.0
    first_n: int = 0
    seconds: float = 0.0
    seed: int = 0
    fixed: bool = False
    requests: int = 0
    injected: int = 0
    probes: int = 0
    rng: random.Random = field(default_factory=random.Random)


class FaultyWeb:
    """The web targets: one small server per scenario, each on a loopback address of its own
    (127.0.x.y), since scan locks are per host and one shared host would queue every web
    scenario behind one lock."""

    def __init__(self) -> None:
        self.scenarios: dict[str, WebFault] = {}
        self.servers: dict[str, ThreadingHTTPServer] = {}
        self._lock = threading.Lock()

    def add(self, sid: str, fault: WebFault, address: str) -> str:
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "soak-target"  # no version: a disclosure would be a finding
            sys_version = ""

            def do_GET(self) -> None:
                web._serve(self, sid)

            def log_message(self, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # clients giving up mid-answer are part of the scenarios

        fault.rng = random.Random(fault.seed)
        self.scenarios[sid] = fault
        httpd = Server((address, 0), Handler)
        self.servers[sid] = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return self.url(sid)

    def _origin(self, sid: str) -> str:
        host, port = self.servers[sid].server_address[:2]
        return f"http://{host}:{port}"

    def url(self, sid: str) -> str:
        return f"{self._origin(sid)}/s/{sid}/"

    def denied_prefix(self, sid: str) -> str:
        return f"{self._origin(sid)}/outside/"

    def _serve(self, h: BaseHTTPRequestHandler, sid: str) -> None:
        fault = self.scenarios[sid]
        if h.headers.get("X-SecFlow-Probe"):
            with self._lock:
                fault.probes += 1
            if fault.mode == "down" and not fault.fixed:
                return self._answer(h, 503, {}, b"unavailable")
            return self._answer(h, 200, WEB_HEADERS, b"<html>soak</html>")
        if not h.path.startswith(f"/s/{sid}/"):
            return self._answer(h, 404, {}, b"not this scenario's page")
        with self._lock:
            n = fault.requests
            fault.requests += 1
            draw = fault.rng.random()
        mode = fault.mode
        hit = (fault.first_n and n < fault.first_n) or (fault.probability and draw < fault.probability)
        if mode == "down" and not fault.fixed:
            hit = True
        if hit and mode in ("flaky", "storm", "down", "reset", "malformed", "hang"):
            with self._lock:
                fault.injected += 1
            if mode in ("flaky", "storm", "down"):
                if n % 2 and mode != "down":
                    return self._answer(h, 429, {"Retry-After": "1"}, b"slow down")
                return self._answer(h, 503, {}, b"unavailable")
            if mode == "reset":
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.close_connection = True
                h.connection.close()
                return None
            if mode == "malformed":
                h.wfile.write(b"\x00\x17garbage, not HTTP at all\r\n\r\n")
                h.close_connection = True
                return None
            if mode == "hang":
                time.sleep(fault.seconds)
                h.close_connection = True
                return None
        if mode == "slow":
            time.sleep(fault.seconds)
        if mode == "redirect_out":
            return self._answer(h, 302, {"Location": self.denied_prefix(sid)}, b"")
        if mode == "truncated":
            body = b"<html>" + b"x" * 4000 + b"</html>"
            h.send_response(200)
            for k, v in WEB_HEADERS.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:100])
            h.close_connection = True
            return None
        return self._answer(h, 200, WEB_HEADERS, b"<html>soak</html>")

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        # shutdown() waits for a poll interval: stop them all at once, not one by one
        stoppers = [threading.Thread(target=httpd.shutdown) for httpd in self.servers.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for httpd in self.servers.values():
            httpd.server_close()


class OpenPorts:
    """Listeners that accept and close at `address`:`ports`: what a port scan must find."""

    def __init__(self, address: str, ports: list[int]) -> None:
        self.address = address
        self.ports = ports
        self.socks = []
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(64)
            s.settimeout(0.2)
            self.socks.append(s)
        self._stop = False
        for s in self.socks:
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        while not self._stop:
            try:
                conn, _ = s.accept()
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        for s in self.socks:
            s.close()


# ------------------------------------------------------------------------------------------
# scanner wrapper and source trees
# ------------------------------------------------------------------------------------------
_WRAPPER = '''#!{python}
"""Soak wrapper around {real}: faults come from the sidecar <target>.soak.json."""
import json, os, random, signal, sys, time
# The scanners take the tree, or (checkpointed batches) files inside it: the plan is the
# sidecar of the nearest ancestor that has one.
args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[-1:]
target, plan = os.path.abspath(sys.argv[-1]).rstrip("/"), {{}}
for arg in args:
    p = os.path.abspath(arg).rstrip("/")
    while p and p != "/" and not os.path.exists(p + ".soak.json"):
        p = os.path.dirname(p)
    if p and p != "/":
        target = p
        with open(p + ".soak.json") as f:
            plan = json.load(f)
        break
counter = target + ".soak.count"
fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o600)
n = len(os.read(fd, 1 << 16))
os.write(fd, b".")
os.close(fd)
mode = plan.get("mode", "ok")
hit = n < plan.get("first_n", 0) or random.random() < plan.get("probability", 0.0)
if plan.get("sleep"):
    time.sleep(plan["sleep"])
if hit and mode == "crash":
    sys.stderr.write("soak: injected crash\\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGSEGV)
if hit and mode == "garbage":
    sys.stdout.write("soak: garbage instead of a report \\x00\\x01 {{[\\n")
    sys.exit(0)
if hit and mode == "missing":
    sys.stderr.write("sh: 1: {name}: not found\\n")
    sys.exit(127)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
'''


def write_wrapper(directory: Path, name: str, python: str) -> Path:
    """An executable wrapper for scanner `name` (the real one beside `python`)."""
    real = str(Path(python).parent / name)
    path = directory / f"soak-{name}"
    path.write_text(_WRAPPER.format(python=python, real=real, name=name))
    path.chmod(0o755)
    return path


def plan_tool_fault(tree: Path, **plan: Any) -> None:
    """What the wrapper does when it scans `tree` (mode, probability, first_n, sleep)."""
    Path(str(tree) + ".soak.json").write_text(json.dumps(plan))


def bandit_tree(work: Path, sid: str) -> Path:
    tree = work / "trees" / sid
    shutil.copytree(ROOT / "examples" / "vulnerable-app", tree)
    return tree


def secrets_tree(work: Path, sid: str) -> Path:
    tree = work / "trees" / sid
    tree.mkdir(parents=True)
    (tree / "deploy_key.pem").write_text(_PEM)
    (tree / "README.txt").write_text("nothing secret here\n")
    return tree


def sca_tree(work: Path, sid: str, pins: str) -> Path:
    tree = work / "trees" / sid
    tree.mkdir(parents=True)
    (tree / "requirements.txt").write_text(pins)
    return tree
