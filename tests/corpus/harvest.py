"""Harvest real failures of SecFlow's tools and dependencies into a labelled corpus.

    .venv/bin/python -m tests.corpus.harvest                     # runs every scenario, counts the cases
    .venv/bin/python -m tests.corpus.harvest --round=2 --write   # rewrites tests/corpus/{holdout,tune}-2.json

Every case is produced here, now: the scanners (bandit, semgrep, detect-secrets, nmap)
run against broken inputs, HTTP clients talk to loopback servers that misbehave (the
OSV/NVD/EPSS/KEV stand-ins of tests/ and a raw socket server for resets, hangs,
truncated bodies and TLS), the Temporal client meets a server that is down or a
workflow that does not exist, the store meets locked, read-only and garbage databases
and a PostgreSQL that is down. DNS failures use names under ``.invalid`` (RFC 6761),
the one lookup that reaches the machine's resolver.

The label of a case is the scenario's `Rule` (below, one per kind of failure), decided
from what the failure *means* (docs/architecture.md's taxonomy) and written before the
classifier was asked; the harvest never looks at `classify()` to label anything. It
only uses it to check that a stored case, rebuilt from JSON, classifies exactly like
the live exception did (`fidelity`).

Cases are split by the SHA-256 of their id (`cases.in_holdout`): one in three goes to
the hold-out, which is never used to tune the classifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from secflow.errors import Category
from tests.corpus.cases import HOLDOUT_FILE, TUNE_FILE, HarvestedCase, dump_exception, in_holdout, rebuild, save

T, R, V, P, X, INTERNAL, S, U = (
    Category.TRANSIENT,
    Category.RESOURCE,
    Category.VALIDATION,
    Category.PERMANENT,
    Category.EXTERNAL_TOOL,
    Category.INTERNAL,
    Category.SECURITY,
    Category.USER_ABORT,
)


@dataclass(frozen=True)
class Rule:
    """A labelling rule: a kind of failure and the category its meaning gives it."""

    expected: Category
    text: str


# The rules, written before any case was classified. Each scenario names one.
RULES = {
    "usage": Rule(V, "the tool rejected its command line or an option value: the input built from the spec is malformed"),
    "bad-config": Rule(V, "a rules/config file handed to the tool exists but its content is malformed: malformed input"),
    "missing-path": Rule(
        P, "a file, directory or binary the run needs does not exist: the environment is wrong, a retry sees the same"
    ),
    "not-permitted": Rule(
        P, "the OS refuses access (permissions, not executable, read-only): environment wrong, a person must fix it"
    ),
    "sigkill": Rule(R, "the process was SIGKILLed with no operator involved: the kernel's OOM killer is the usual sender"),
    "sigterm": Rule(T, "the process was stopped by SIGTERM/SIGHUP (host shutdown, restart): the next attempt can run"),
    "crash": Rule(X, "the tool crashed by itself (SIGSEGV, SIGABRT, SIGBUS) or died with its own traceback"),
    "sigint": Rule(U, "an operator interrupted the run (SIGINT)"),
    "tool-timeout": Rule(T, "the tool hung and was stopped by its time limit: a later attempt may finish"),
    "tool-garbage": Rule(X, "the tool or service answered, but with output that cannot be used (truncated, not JSON/XML)"),
    "http-transient": Rule(T, "a server answered a status that says 'later' (5xx gateway/unavailable, 429, 408)"),
    "http-auth": Rule(P, "a server refused our credentials or access (401, 403 without a rate limit)"),
    "http-gone": Rule(P, "the resource or endpoint does not exist (404, 410) or the method is not supported (405, 501)"),
    "http-bad-request": Rule(V, "the server says our request is malformed (400, 413, 422)"),
    "rate-limited": Rule(T, "the server says we are over a rate limit (429, NVD's 403, Retry-After): wait and retry"),
    "conn-transient": Rule(T, "the network failed mid-way (refused, reset, closed early, timed out): the next try may work"),
    "tls-config": Rule(P, "TLS cannot work with this endpoint as configured (plain port, untrusted or wrong certificate)"),
    "dns-nxdomain": Rule(P, "the host name does not exist (.invalid never resolves): a retry resolves the same nothing"),
    "url-invalid": Rule(V, "the URL itself is malformed or of an unsupported scheme: fix the input"),
    "server-down": Rule(T, "a service SecFlow needs (Temporal, PostgreSQL) is not listening right now: it comes back"),
    "not-found-rpc": Rule(P, "Temporal says the workflow/namespace does not exist: asking again changes nothing"),
    "db-locked": Rule(T, "the database is locked or busy because of another writer: it frees up"),
    "db-unusable": Rule(P, "the database file cannot be used at all (read-only, not a database, a directory)"),
    "db-bug": Rule(INTERNAL, "SQL that cannot work on this schema (no such table/column, constraint broken by our code): a bug"),
    "disk-full": Rule(R, "local capacity is exhausted (disk full, file size limit, too many open files)"),
    "redirect-loop": Rule(P, "the endpoint redirects forever: its configuration is wrong"),
    "scope": Rule(S, "the tool was about to touch something outside the scope, or an injection was refused"),
    # Round 2 (written with its scenarios, before they ran):
    "capacity": Rule(R, "a local limit was hit (address space, CPU time, open files, the database's size limit)"),
    "db-auth": Rule(P, "the database refused our credentials, or the database named does not exist: configuration"),
    "db-newer": Rule(P, "the database was migrated by a newer SecFlow: this one must be upgraded, a retry changes nothing"),
    "operator-cancel": Rule(U, "an operator cancelled or terminated the workflow"),
    "already-started": Rule(P, "a workflow with this id is already running: starting it again fails the same way"),
    "heartbeat-lost": Rule(T, "an activity stopped reporting or overran its time limit (worker hung or lost): retry"),
}


@dataclass
class Produced:
    variant: str
    error: BaseException | str
    context: dict[str, Any]


@dataclass
class Scenario:
    sid: str
    rule: str
    fn: Callable[[], Iterator[Produced]]
    round: int = 1  # 2: harvested after round 1's rule changes, into files of its own


SCENARIOS: list[Scenario] = []


def scenario(
    sid: str, rule: str, round: int = 1
) -> Callable[[Callable[[], Iterator[Produced]]], Callable[[], Iterator[Produced]]]:
    assert rule in RULES, rule

    def register(fn: Callable[[], Iterator[Produced]]) -> Callable[[], Iterator[Produced]]:
        SCENARIOS.append(Scenario(sid, rule, fn, round))
        return fn

    return register


WORK = Path(tempfile.mkdtemp(prefix="secflow-harvest-"))
VENV_BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    return shutil.which(name) or str(VENV_BIN / name)


# --------------------------------------------------------------------------------------
# scanners: run the real binary the way activities/process.py does, and build the text
# `run_process` hands to classify()
# --------------------------------------------------------------------------------------
def _describe_exit(code: int) -> str:
    from activities.process import _describe_exit as describe

    return describe(code)


def _tail(data: bytes) -> str:
    from activities.process import tail

    return tail(data)


def run_tool(
    tool: str, argv: list[str], *, timeout: float = 120, kill: tuple[float, int] | None = None, cwd: str | None = None
) -> Produced | None:
    """Run and, if it failed, the message + context run_process would classify."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True
    )
    if kill is not None:
        delay, signo = kill
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signo)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    code = proc.returncode
    if code == 0 or (kill is not None and code != -kill[1]):
        return None  # it succeeded, or finished before the signal: not this scenario
    text = f"{tool} {_describe_exit(code)}: {_tail(stderr)[-500:]}"
    return Produced("", text, {"exit_code": code, "tool": tool})


def _src_tree() -> Path:
    src = WORK / "src"
    if not src.exists():
        src.mkdir()
        (src / "app.py").write_text("import subprocess\nsubprocess.call('ls', shell=True)\npassword = 'hunter2hunter2'\n")
    return src


def _one(p: Produced | None, variant: str) -> Iterator[Produced]:
    if p is not None:
        p.variant = variant
        yield p


BANDIT = ["-f", "json", "-q", "--exit-zero"]  # as the adapter runs it: findings are not a failure


@scenario("bandit/bad-option", "usage")
def _bandit_bad_option() -> Iterator[Produced]:
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "--frobnicate", "-r", str(_src_tree())]), "unknown-flag")
    yield from _one(
        run_tool("bandit", [_bin("bandit"), *BANDIT, "--severity-level", "extreme", "-r", str(_src_tree())]), "bad-level"
    )
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-f", "yamlx", "-r", str(_src_tree())]), "bad-format")


@scenario("bandit/unknown-test", "usage")
def _bandit_unknown_test() -> Iterator[Produced]:
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "--skip", "B999", "-r", str(_src_tree())]), "skip")
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "--tests", "Z1", "-r", str(_src_tree())]), "tests")


@scenario("bandit/garbage-config", "bad-config")
def _bandit_garbage_config() -> Iterator[Produced]:
    cfg = WORK / "bandit.yaml"
    cfg.write_text("skips: [B101\n  - : : {{{\n")
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-c", str(cfg), "-r", str(_src_tree())]), "yaml")
    ini = WORK / "bandit.ini"
    ini.write_text("this is [not an ini\n= = =\n")
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "--ini", str(ini), "-r", str(_src_tree())]), "ini")


@scenario("bandit/missing-config", "missing-path")
def _bandit_missing_config() -> Iterator[Produced]:
    yield from _one(
        run_tool("bandit", [_bin("bandit"), *BANDIT, "-c", str(WORK / "nope.yaml"), "-r", str(_src_tree())]), "config"
    )


@scenario("bandit/missing-target", "missing-path")
def _bandit_missing_target() -> Iterator[Produced]:
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-r", str(WORK / "no-such-dir")]), "dir")


def _big_tree() -> str:
    return str(Path(httpx.__file__).resolve().parents[1])  # site-packages: seconds of work for any scanner


def _slow(tool: str) -> list[str]:
    return {
        "bandit": [_bin("bandit"), *BANDIT, "-r", _big_tree()],
        "detect-secrets": [_bin("detect-secrets"), "scan", "--all-files", _big_tree()],
        "nmap": ["nmap", "-sT", "-p-", "-T2", "127.0.0.1"],
        "semgrep": [
            _bin("semgrep"),
            "scan",
            "--config",
            str(_semgrep_rules()),
            "--json",
            "--metrics=off",
            "--disable-version-check",
            _big_tree(),
        ],
    }[tool]


def _semgrep_rules() -> Path:
    from activities.scanners.semgrep import RULES_FILE

    return Path(RULES_FILE)


@scenario("scanner/killed", "sigkill")
def _killed() -> Iterator[Produced]:
    for tool, after in (("bandit", 0.4), ("detect-secrets", 0.4), ("nmap", 0.5), ("semgrep", 1.0)):
        yield from _one(run_tool(tool, _slow(tool), kill=(after, signal.SIGKILL)), tool)


@scenario("scanner/terminated", "sigterm")
def _terminated() -> Iterator[Produced]:
    yield from _one(run_tool("bandit", _slow("bandit"), kill=(0.4, signal.SIGTERM)), "bandit")
    yield from _one(run_tool("nmap", _slow("nmap"), kill=(0.5, signal.SIGTERM)), "nmap")
    yield from _one(run_tool("nmap", _slow("nmap"), kill=(0.5, signal.SIGHUP)), "nmap-hup")
    yield from _one(run_tool("semgrep", _slow("semgrep"), kill=(1.0, signal.SIGTERM)), "semgrep")


@scenario("scanner/crashed", "crash")
def _crashed() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", _slow("nmap"), kill=(0.5, signal.SIGSEGV)), "nmap-segv")
    yield from _one(run_tool("bandit", _slow("bandit"), kill=(0.4, signal.SIGABRT)), "bandit-abrt")
    yield from _one(run_tool("detect-secrets", _slow("detect-secrets"), kill=(0.4, signal.SIGBUS)), "ds-bus")
    # A Python scanner dying of its own bug: the traceback is on stderr, exit status 1.
    code = "import detect_secrets.core.scan as s; s.scan_file(None)"
    yield from _one(run_tool("detect-secrets", [sys.executable, "-c", code]), "ds-traceback")


@scenario("scanner/interrupted", "sigint")
def _interrupted() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", _slow("nmap"), kill=(0.5, signal.SIGINT)), "nmap")
    yield from _one(run_tool("bandit", _slow("bandit"), kill=(0.4, signal.SIGINT)), "bandit")


@scenario("scanner/missing-binary", "missing-path")
def _missing_binary() -> Iterator[Produced]:
    for tool in ("nmap", "semgrep", "bandit", "detect-secrets"):
        try:
            subprocess.run([f"{tool}-not-installed"], capture_output=True, check=False)
        except FileNotFoundError as exc:
            yield Produced(f"{tool}-exec", exc, {"tool": tool})
    yield from _one(run_tool("nmap", ["sh", "-c", "exec nmap-not-installed -sT 127.0.0.1"]), "nmap-sh-127")
    yield from _one(run_tool("semgrep", ["env", "semgrep-not-installed", "scan"]), "semgrep-env-127")


@scenario("scanner/not-executable", "not-permitted")
def _not_executable() -> Iterator[Produced]:
    fake = WORK / "fake-bandit"
    fake.write_text("#!/bin/sh\necho hi\n")
    fake.chmod(0o644)
    try:
        subprocess.run([str(fake)], capture_output=True, check=False)
    except PermissionError as exc:
        yield Produced("exec", exc, {"tool": "bandit"})
    yield from _one(run_tool("bandit", ["sh", "-c", f"exec {fake}"]), "sh-126")


@scenario("scanner/unreadable", "not-permitted")
def _unreadable() -> Iterator[Produced]:
    # As root, file modes do not stop reads; the kernel still refuses this one.
    try:
        open("/proc/1/mem", "rb").read(1)  # noqa: SIM115
    except OSError as exc:
        yield Produced("proc-mem", exc, {"tool": "detect-secrets"})


@scenario("scanner/dir-as-file", "missing-path")
def _dir_as_file() -> Iterator[Produced]:
    try:
        open(_src_tree(), "rb")  # noqa: SIM115
    except OSError as exc:
        yield Produced("open-dir", exc, {"tool": "bandit"})


@scenario("semgrep/garbage-rules", "bad-config")
def _semgrep_garbage_rules() -> Iterator[Produced]:
    rules = WORK / "rules.yaml"
    rules.write_text("rules:\n  - id: x\n    pattern: [unclosed\n")
    argv = [
        _bin("semgrep"),
        "scan",
        "--config",
        str(rules),
        "--json",
        "--metrics=off",
        "--disable-version-check",
        "--quiet",
        "--oss-only",
    ]
    yield from _one(run_tool("semgrep", [*argv, "--", str(_src_tree())]), "yaml")
    rules2 = WORK / "rules2.yaml"
    rules2.write_text("rules:\n  - id: y\n    languages: [python]\n    message: m\n    severity: WARNING\n")
    yield from _one(run_tool("semgrep", [*argv[:3], str(rules2), *argv[4:], "--", str(_src_tree())]), "no-pattern")


@scenario("semgrep/missing-rules", "missing-path")
def _semgrep_missing_rules() -> Iterator[Produced]:
    argv = [
        _bin("semgrep"),
        "scan",
        "--config",
        str(WORK / "no-rules.yaml"),
        "--json",
        "--metrics=off",
        "--disable-version-check",
    ]
    yield from _one(run_tool("semgrep", [*argv, "--", str(_src_tree())]), "file")


@scenario("semgrep/bad-option", "usage")
def _semgrep_bad_option() -> Iterator[Produced]:
    yield from _one(run_tool("semgrep", [_bin("semgrep"), "scan", "--frobnicate", str(_src_tree())]), "flag")
    yield from _one(run_tool("semgrep", [_bin("semgrep"), "scan", "--timeout", "soon", str(_src_tree())]), "timeout-value")


@scenario("detect-secrets/bad-option", "usage")
def _ds_bad_option() -> Iterator[Produced]:
    ds = _bin("detect-secrets")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "--frobnicate", str(_src_tree())]), "flag")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "--disable-plugin", "NoSuchDetector", str(_src_tree())]), "plugin")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "--exclude-files", "(unclosed", str(_src_tree())]), "regex")


@scenario("detect-secrets/garbage-baseline", "bad-config")
def _ds_garbage_baseline() -> Iterator[Produced]:
    base = WORK / "baseline.json"
    base.write_text("{not json")
    yield from _one(
        run_tool("detect-secrets", [_bin("detect-secrets"), "scan", "--baseline", str(base)], cwd=str(_src_tree())), "json"
    )


@scenario("detect-secrets/missing-baseline", "missing-path")
def _ds_missing_baseline() -> Iterator[Produced]:
    yield from _one(
        run_tool("detect-secrets", [_bin("detect-secrets"), "audit", str(WORK / "no-baseline.json")], cwd=str(_src_tree())),
        "audit",
    )


@scenario("nmap/bad-option", "usage")
def _nmap_bad_option() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", ["nmap", "--frobnicate", "127.0.0.1"]), "flag")
    yield from _one(run_tool("nmap", ["nmap", "-p", "70000", "127.0.0.1"]), "port-range")
    yield from _one(run_tool("nmap", ["nmap", "-T9", "127.0.0.1"]), "timing")
    yield from _one(run_tool("nmap", ["nmap", "--max-retries", "lots", "127.0.0.1"]), "retries")
    yield from _one(run_tool("nmap", ["nmap", "-sT", "-p", "1-10", "127.0.0.1/99"]), "netmask")


@scenario("nmap/needs-root-option", "usage")
def _nmap_bad_combo() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", ["nmap", "-sT", "-sU", "-sS", "-p", "1", "127.0.0.1"]), "scan-types")


@scenario("nmap/missing-file", "missing-path")
def _nmap_missing_file() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", ["nmap", "-sT", "-iL", str(WORK / "no-targets.txt")]), "input-list")
    yield from _one(
        run_tool("nmap", ["nmap", "-sT", "--datadir", str(WORK / "nodata"), "--servicedb", str(WORK / "nosvc"), "127.0.0.1"]),
        "servicedb",
    )


@scenario("nmap/garbage-output", "tool-garbage")
def _nmap_garbage() -> Iterator[Produced]:
    # What the nmap adapter raises for XML that does not parse, with the parser's words.
    import xml.etree.ElementTree as ET

    proc = subprocess.run(["nmap", "-sT", "-p", "1", "-oX", "-", "127.0.0.1"], capture_output=True, check=False)
    for cut, variant in ((len(proc.stdout) // 2, "truncated"), (7, "head")):
        try:
            ET.fromstring(proc.stdout[:cut])
        except ET.ParseError as exc:
            yield Produced(variant, exc, {"tool": "nmap"})


@scenario("scanner/garbage-json", "tool-garbage")
def _scanner_garbage_json() -> Iterator[Produced]:
    out = subprocess.run([_bin("bandit"), *BANDIT, "-r", str(_src_tree())], capture_output=True, check=False).stdout
    try:
        json.loads(out[: len(out) // 2])
    except json.JSONDecodeError as exc:
        yield Produced("bandit-truncated", exc, {"tool": "bandit"})
    try:
        json.loads(b"\xff\xfe" + out[:40])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        yield Produced("bandit-bytes", exc, {"tool": "bandit"})
    out = subprocess.run([_bin("detect-secrets"), "scan", str(_src_tree())], capture_output=True, check=False).stdout
    try:
        json.loads(out[: len(out) - 3])
    except json.JSONDecodeError as exc:
        yield Produced("ds-truncated", exc, {"tool": "detect-secrets"})
    try:
        json.loads(b"Traceback? no: " + out)
    except json.JSONDecodeError as exc:
        yield Produced("ds-prefixed", exc, {"tool": "detect-secrets"})


@scenario("scanner/timeout", "tool-timeout")
def _scanner_timeout() -> Iterator[Produced]:
    for tool, argv in (("nmap", ["nmap", "-sT", "-p-", "-T1", "127.0.0.1"]), ("bandit", ["sleep", "5"])):
        try:
            subprocess.run(argv, capture_output=True, timeout=0.3, check=False)
        except subprocess.TimeoutExpired as exc:
            yield Produced(tool, exc, {"tool": tool})
    try:
        subprocess.run(["timeout", "0.2", "sleep", "5"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        yield Produced(
            "timeout1", f"semgrep {_describe_exit(exc.returncode)}: ", {"tool": "semgrep", "exit_code": exc.returncode}
        )


@scenario("scanner/file-size-limit", "disk-full")
def _file_size_limit() -> Iterator[Produced]:
    code = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); open('/dev/null','wb'); f=open('%s','wb'); f.write(b'x'*4096); f.flush()"
    yield from _one(run_tool("semgrep", [sys.executable, "-c", code % (WORK / "big.out")]), "fsize")
    code = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12)); fs=[open('/dev/null') for _ in range(64)]"
    yield from _one(run_tool("bandit", [sys.executable, "-c", code]), "nofile")


# --------------------------------------------------------------------------------------
# HTTP: the stand-ins of tests/ and a raw socket server
# --------------------------------------------------------------------------------------
class RawServer:
    """127.0.0.1:0; `behave(conn)` decides what each accepted connection gets."""

    def __init__(self, behave: Callable[[socket.socket], None], tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.behave, self.tls = behave, tls
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.behave(conn)
        except Exception:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def _reset(conn: socket.socket) -> None:
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _close_silently(conn: socket.socket) -> None:
    _read_request(conn)


def _hang(conn: socket.socket) -> None:
    _read_request(conn)
    time.sleep(3)


def _short_body(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"results": [{"vulns"')


def _garbage_status(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def _bad_chunked(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")


def _bad_gzip(conn: socket.socket) -> None:
    _read_request(conn)
    body = b"this is not gzip at all"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _redirect_loop(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _plain_400(conn: socket.socket) -> None:
    """What an HTTP server answers to bytes that are not HTTP (a TLS ClientHello)."""
    conn.settimeout(5)
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _html_200(conn: socket.socket) -> None:
    _read_request(conn)
    body = b"<html><body><h1>Captive portal</h1></body></html>"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _self_signed_context() -> tuple[ssl.SSLContext, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other.example")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now.replace(year=now.year - 2))
        .not_valid_after(now.replace(year=now.year - 1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = WORK / "cert.pem", WORK / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert_file


def _httpx_get(url: str, *, timeout: float = 1.0, json_body: bool = True, verify: Any = True, method: str = "GET") -> None:
    with httpx.Client(timeout=timeout, verify=verify) as client:
        response = client.request(method, url, json={"queries": []} if method == "POST" else None)
        response.raise_for_status()
        if json_body:
            json.loads(response.content)


def _capture(fn: Callable[[], object]) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return exc
    return None


def _yield(variant: str, fn: Callable[[], object], context: dict[str, Any]) -> Iterator[Produced]:
    exc = _capture(fn)
    if exc is not None:
        yield Produced(variant, exc, context)


ENRICH = {"tool": "cve-enrich"}
SCA = {"tool": "sca"}


@scenario("http/status-transient", "http-transient")
def _http_status_transient() -> Iterator[Produced]:
    from tests.enrich_standins import EpssStandin, Fault, KevStandin, NvdStandin
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    for status in (500, 502, 503, 504):
        osv = OsvStandin(faults={"querybatch": [OsvFault(status)]})
        try:
            yield from _yield(f"osv-{status}", lambda osv=osv: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
        finally:
            osv.close()
    for status in (502, 503):
        with NvdStandin(faults=[Fault(status)]) as nvd:
            yield from _yield(f"nvd-{status}", lambda: _httpx_get(f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228"), ENRICH)
        with EpssStandin(faults=[Fault(status, body={"message": "upstream unavailable"})]) as epss:
            yield from _yield(f"epss-{status}", lambda: _httpx_get(f"{epss.url}/data/v1/epss?cve=CVE-2021-44228"), ENRICH)
    with KevStandin(faults=[Fault(408)]) as kev:
        yield from _yield("kev-408", lambda: _httpx_get(f"{kev.url}/feeds/known_exploited_vulnerabilities.json"), ENRICH)


@scenario("http/rate-limited", "rate-limited")
def _http_rate_limited() -> Iterator[Produced]:
    from tests.enrich_standins import EpssStandin, Fault, NvdStandin
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    osv = OsvStandin(faults={"querybatch": [OsvFault(429, retry_after="2")]})
    try:
        yield from _yield("osv-429", lambda: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    with EpssStandin(faults=[Fault(429)]) as epss:
        yield from _yield("epss-429-bare", lambda: _httpx_get(f"{epss.url}/data/v1/epss?cve=CVE-2021-44228"), ENRICH)
    # NVD's public limit: 5 requests per rolling window, then 403.
    with NvdStandin(limit_public=1) as nvd:
        url = f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228"
        _capture(lambda: _httpx_get(url))
        yield from _yield("nvd-403-window", lambda: _httpx_get(url), ENRICH)


@scenario("http/auth", "http-auth")
def _http_auth() -> Iterator[Produced]:
    from tests.enrich_standins import Fault, KevStandin, NvdStandin
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    osv = OsvStandin(faults={"querybatch": [OsvFault(401, body={"code": 16, "message": "unauthenticated"})]})
    try:
        yield from _yield("osv-401", lambda: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    with KevStandin(faults=[Fault(403, body={"error": "access denied"})]) as kev:
        yield from _yield("kev-403", lambda: _httpx_get(f"{kev.url}/feeds/known_exploited_vulnerabilities.json"), ENRICH)
    # Real NVD answers a wrong apiKey with 404 and the reason in a header.
    with NvdStandin(api_key="right-key", invalid_key_status=404) as nvd:

        def wrong_key() -> None:
            with httpx.Client(timeout=1) as client:
                client.get(f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228", headers={"apiKey": "wrong"}).raise_for_status()

        yield from _yield("nvd-bad-key", wrong_key, ENRICH)


@scenario("http/gone", "http-gone")
def _http_gone() -> Iterator[Produced]:
    from tests.enrich_standins import Fault, KevStandin
    from tests.osv_standin import OsvStandin

    osv = OsvStandin()
    try:
        yield from _yield("osv-vuln-404", lambda: _httpx_get(f"{osv.url}/v1/vulns/GHSA-none-none-none"), SCA)
        yield from _yield("osv-wrong-path", lambda: _httpx_get(f"{osv.url}/v2/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    for status in (404, 410):
        with KevStandin(faults=[Fault(status)]) as kev:
            yield from _yield(
                f"kev-{status}", lambda: _httpx_get(f"{kev.url}/feeds/known_exploited_vulnerabilities.json"), ENRICH
            )
    with KevStandin(faults=[Fault(501)]) as kev:
        yield from _yield("kev-501", lambda: _httpx_get(f"{kev.url}/feeds/known_exploited_vulnerabilities.json"), ENRICH)


@scenario("http/bad-request", "http-bad-request")
def _http_bad_request() -> Iterator[Produced]:
    from tests.enrich_standins import EpssStandin, Fault
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    osv = OsvStandin(faults={"querybatch": [OsvFault(400, body={"code": 3, "message": "Invalid query."})]})
    try:
        yield from _yield("osv-400", lambda: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    with EpssStandin(faults=[Fault(422, body={"status": "error", "message": "cve parameter is invalid"})]) as epss:
        yield from _yield("epss-422", lambda: _httpx_get(f"{epss.url}/data/v1/epss?cve=nope"), ENRICH)
    with EpssStandin(faults=[Fault(413)]) as epss:
        yield from _yield("epss-413", lambda: _httpx_get(f"{epss.url}/data/v1/epss?cve=CVE-2021-44228"), ENRICH)


@scenario("http/garbage-body", "tool-garbage")
def _http_garbage() -> Iterator[Produced]:
    from tests.enrich_standins import Fault, KevStandin, NvdStandin
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    osv = OsvStandin(faults={"querybatch": [OsvFault.truncated()]})
    try:
        yield from _yield("osv-truncated", lambda: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    with NvdStandin(faults=[Fault.truncated()]) as nvd:
        yield from _yield("nvd-truncated", lambda: _httpx_get(f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228"), ENRICH)
    with KevStandin(faults=[Fault.raw(b"<html>maintenance</html>")]) as kev:
        yield from _yield("kev-html", lambda: _httpx_get(f"{kev.url}/feeds/known_exploited_vulnerabilities.json"), ENRICH)
    html = RawServer(_html_200)
    try:
        yield from _yield("captive-portal", lambda: _httpx_get(f"http://127.0.0.1:{html.port}/v1/querybatch", method="POST"), SCA)
    finally:
        html.close()
    gz = RawServer(_bad_gzip)
    try:
        yield from _yield("bad-gzip", lambda: _httpx_get(f"http://127.0.0.1:{gz.port}/data/v1/epss"), ENRICH)
    finally:
        gz.close()


@scenario("http/connection", "conn-transient")
def _http_connection() -> Iterator[Produced]:
    from tests.servers import closed_port

    port = closed_port()
    yield from _yield("refused-osv", lambda: _httpx_get(f"http://127.0.0.1:{port}/v1/querybatch", method="POST"), SCA)
    yield from _yield("refused-urllib", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1), ENRICH)
    for behave, name in ((_reset, "reset"), (_close_silently, "closed"), (_short_body, "short-body"), (_hang, "hang")):
        server = RawServer(behave)
        try:
            url = f"http://127.0.0.1:{server.port}/v1/querybatch"
            yield from _yield(f"{name}-httpx", lambda url=url: _httpx_get(url, timeout=0.5, method="POST"), SCA)
            yield from _yield(f"{name}-urllib", lambda url=url: urllib.request.urlopen(url, timeout=0.5).read(), ENRICH)
        finally:
            server.close()
    hang = RawServer(_hang)
    try:
        yield from _yield(
            "hang-asyncio",
            lambda: asyncio.run(asyncio.wait_for(_async_read(hang.port), timeout=0.3)),
            ENRICH,
        )
    finally:
        hang.close()


async def _async_read(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return await reader.read(100)


@scenario("http/protocol-garbage", "tool-garbage")
def _http_protocol_garbage() -> Iterator[Produced]:
    for behave, name in ((_garbage_status, "ssh-banner"), (_bad_chunked, "bad-chunked")):
        server = RawServer(behave)
        try:
            url = f"http://127.0.0.1:{server.port}/rest/json/cves/2.0"
            yield from _yield(f"{name}-httpx", lambda url=url: _httpx_get(url, timeout=1), ENRICH)
            yield from _yield(f"{name}-http.client", lambda server=server: _http_client_get(server.port), ENRICH)
        finally:
            server.close()


def _http_client_get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    finally:
        conn.close()


@scenario("http/redirect-loop", "redirect-loop")
def _http_redirect_loop() -> Iterator[Produced]:
    server = RawServer(_redirect_loop)
    try:

        def follow() -> None:
            with httpx.Client(timeout=1, follow_redirects=True, max_redirects=5) as client:
                client.get(f"http://127.0.0.1:{server.port}/feeds/kev.json").raise_for_status()

        yield from _yield("httpx", follow, ENRICH)
    finally:
        server.close()


@scenario("http/tls", "tls-config")
def _http_tls() -> Iterator[Produced]:
    plain = RawServer(_plain_400)
    ctx, cert_file = _self_signed_context()
    tls = RawServer(_html_200, tls=ctx)
    try:
        yield from _yield("https-to-plain-port", lambda: _httpx_get(f"https://127.0.0.1:{plain.port}/"), ENRICH)
        yield from _yield("self-signed-expired", lambda: _httpx_get(f"https://127.0.0.1:{tls.port}/"), ENRICH)
        # Trusting the cert does not help: it is expired and names another host.
        yield from _yield(
            "trusted-but-expired",
            lambda: _httpx_get(f"https://127.0.0.1:{tls.port}/", verify=ssl.create_default_context(cafile=str(cert_file))),
            ENRICH,
        )
        yield from _yield(
            "urllib-self-signed", lambda: urllib.request.urlopen(f"https://127.0.0.1:{tls.port}/", timeout=1), ENRICH
        )

        def raw_ssl() -> None:
            with socket.create_connection(("127.0.0.1", plain.port), timeout=1) as sock:
                ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")

        yield from _yield("ssl-socket-plain", raw_ssl, {"tool": "tls"})
    finally:
        plain.close()
        tls.close()


@scenario("http/dns-invalid", "dns-nxdomain")
def _http_dns() -> Iterator[Produced]:
    yield from _yield("httpx-nvd", lambda: _httpx_get("https://nvd.invalid/rest/json/cves/2.0"), ENRICH)
    yield from _yield("httpx-osv", lambda: _httpx_get("https://osv.invalid/v1/querybatch", method="POST"), SCA)
    yield from _yield("getaddrinfo", lambda: socket.getaddrinfo("kev.invalid", 443), ENRICH)
    yield from _yield("urllib", lambda: urllib.request.urlopen("http://epss.invalid/", timeout=1), ENRICH)


@scenario("http/bad-url", "url-invalid")
def _http_bad_url() -> Iterator[Produced]:
    yield from _yield("scheme", lambda: _httpx_get("ftp://127.0.0.1/feeds/kev.json"), ENRICH)
    yield from _yield("no-host", lambda: _httpx_get("https:///v1/querybatch"), SCA)
    yield from _yield("port", lambda: _httpx_get("http://127.0.0.1:99999/"), ENRICH)
    yield from _yield("urllib-type", lambda: urllib.request.urlopen("127.0.0.1/v1/querybatch"), SCA)


# --------------------------------------------------------------------------------------
# Temporal client
# --------------------------------------------------------------------------------------
@scenario("temporal/server-down", "server-down")
def _temporal_down() -> Iterator[Produced]:
    from temporalio.client import Client

    from tests.servers import closed_port

    port = closed_port()
    yield from _yield("connect", lambda: asyncio.run(Client.connect(f"127.0.0.1:{port}")), {})


@scenario("temporal/not-found", "not-found-rpc")
def _temporal_not_found() -> Iterator[Produced]:
    from temporalio.client import Client

    from tests.devserver import DevServer

    server = DevServer(None, WORK / "devserver.log")  # a real dev server, in memory
    server.start()
    try:

        async def describe(namespace: str) -> None:
            client = await Client.connect(server.address, namespace=namespace)
            await client.get_workflow_handle("no-such-assessment").describe()

        yield from _yield("workflow", lambda: asyncio.run(describe("default")), {})

        async def result() -> None:
            client = await Client.connect(server.address)
            await client.get_workflow_handle("no-such-assessment").result()

        yield from _yield("result", lambda: asyncio.run(result()), {})
        yield from _yield("namespace", lambda: asyncio.run(describe("no-such-namespace")), {})
    finally:
        server.stop()


# --------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------
@scenario("store/locked", "db-locked")
def _store_locked() -> Iterator[Produced]:
    from secflow.store import FindingsStore

    path = WORK / "locked.db"
    FindingsStore(f"sqlite:///{path}").close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        other = sqlite3.connect(path, timeout=0.1)
        yield from _yield("write", lambda: other.execute("INSERT INTO documents VALUES ('d', 'b', 'c')"), {})
        yield from _yield("read", lambda: other.execute("SELECT count(*) FROM documents").fetchall(), {})
        other.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@scenario("store/read-only", "db-unusable")
def _store_read_only() -> Iterator[Produced]:
    from secflow.store import FindingsStore

    path = WORK / "ro.db"
    FindingsStore(f"sqlite:///{path}").close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    yield from _yield("ro-uri", lambda: ro.execute("INSERT INTO documents VALUES ('d', 'b', 'c')"), {})
    ro.close()
    yield from _yield("dir-as-db", lambda: sqlite3.connect(WORK).execute("SELECT 1"), {})
    garbage = WORK / "garbage.db"
    garbage.write_bytes(b"this is not a database at all\n" * 100)
    yield from _yield("not-a-db", lambda: sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master").fetchall(), {})
    yield from _yield("store-not-a-db", lambda: FindingsStore(f"sqlite:///{garbage}"), {})
    yield from _yield("missing-dir", lambda: sqlite3.connect(WORK / "no" / "such" / "x.db").execute("SELECT 1"), {})


@scenario("store/schema-bug", "db-bug")
def _store_schema_bug() -> Iterator[Produced]:
    path = WORK / "bug.db"
    from secflow.store import FindingsStore

    FindingsStore(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    yield from _yield("no-table", lambda: conn.execute("SELECT * FROM error_eventz"), {})
    yield from _yield("no-column", lambda: conn.execute("SELECT rung FROM error_eventz_no"), {})
    yield from _yield("pk", lambda: [conn.execute("INSERT INTO documents VALUES ('d', 'b', 'c')") for _ in range(2)], {})
    conn.close()


@scenario("store/postgres-down", "server-down")
def _postgres_down() -> Iterator[Produced]:
    import psycopg

    from tests.servers import closed_port

    port = closed_port()
    yield from _yield(
        "psycopg", lambda: psycopg.connect(f"postgresql://secflow:pw@127.0.0.1:{port}/secflow", connect_timeout=2), {}
    )
    from secflow.store import FindingsStore

    yield from _yield("store", lambda: FindingsStore(f"postgresql://secflow:pw@127.0.0.1:{port}/secflow"), {})


# --------------------------------------------------------------------------------------
# scope: what a scanner adapter refuses before starting
# --------------------------------------------------------------------------------------
@scenario("scope/nmap-injection", "scope")
def _scope_nmap() -> Iterator[Produced]:
    from activities.scanners.nmap import validate_host

    for variant, host in (("option", "-oN /tmp/x"), ("shell", "127.0.0.1; rm -rf /"), ("subst", "$(id).example.com")):
        yield from _yield(variant, lambda host=host: validate_host(host), {"tool": "nmap"})


# ======================================================================================
# Round 2: new scenarios, harvested after round 1's rule changes (fresh ground)
# ======================================================================================
def _limited(resource_name: str, soft: int) -> Callable[[], None]:
    import resource

    def apply() -> None:
        limit = getattr(resource, resource_name)
        resource.setrlimit(limit, (soft, soft))

    return apply


def run_limited(tool: str, argv: list[str], preexec: Callable[[], None], timeout: float = 120) -> Produced | None:
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, preexec_fn=preexec, timeout=timeout, check=False)  # noqa: PLW1509
    if proc.returncode == 0:
        return None
    text = f"{tool} {_describe_exit(proc.returncode)}: {_tail(proc.stderr)[-500:]}"
    return Produced("", text, {"exit_code": proc.returncode, "tool": tool})


@scenario("r2/semgrep/bad-pattern", "bad-config", round=2)
def _r2_semgrep_pattern() -> Iterator[Produced]:
    base = [_bin("semgrep"), "scan", "--metrics=off", "--disable-version-check", "--quiet"]
    yield from _one(run_tool("semgrep", [*base, "--lang", "python", "-e", "foo(", str(_src_tree())]), "unclosed-call")
    rules = WORK / "r2-rules.yaml"
    rules.write_text("rules:\n  - id: z\n    pattern: $X ==\n    languages: [python]\n    message: m\n    severity: ERROR\n")
    yield from _one(run_tool("semgrep", [*base, "--json", "--config", str(rules), str(_src_tree())]), "rule-pattern")


@scenario("r2/semgrep/bad-language", "usage", round=2)
def _r2_semgrep_lang() -> Iterator[Produced]:
    base = [_bin("semgrep"), "scan", "--metrics=off", "--disable-version-check", "--quiet"]
    yield from _one(run_tool("semgrep", [*base, "--lang", "cobol", "-e", "x", str(_src_tree())]), "cobol")


@scenario("r2/nmap/bad-script", "usage", round=2)
def _r2_nmap_script() -> Iterator[Produced]:
    yield from _one(run_tool("nmap", ["nmap", "-sT", "-p", "1", "--script", "no-such-script-xyz", "127.0.0.1"]), "script")
    yield from _one(run_tool("nmap", ["nmap", "-6", "-sT", "-p", "1", "127.0.0.1"]), "ipv6-for-ipv4")
    yield from _one(run_tool("nmap", ["nmap", "-sT", "--top-ports", "-3", "127.0.0.1"]), "top-ports")


@scenario("r2/bandit/bad-option", "usage", round=2)
def _r2_bandit_option() -> Iterator[Produced]:
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-p", "no_such_profile", "-r", str(_src_tree())]), "profile")
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-a", "sideways", "-r", str(_src_tree())]), "aggregate")
    yield from _one(run_tool("bandit", [_bin("bandit"), *BANDIT, "-n", "many", "-r", str(_src_tree())]), "context-lines")


@scenario("r2/detect-secrets/bad-option", "usage", round=2)
def _r2_ds_option() -> Iterator[Produced]:
    ds = _bin("detect-secrets")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "--base64-limit", "99", str(_src_tree())]), "b64-limit")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "--word-list", str(WORK / "no-words.txt"), str(_src_tree())]), "word-list")
    yield from _one(run_tool("detect-secrets", [ds, "scan", "-c", "zero", str(_src_tree())]), "cores")


@scenario("r2/scanner/out-of-memory", "capacity", round=2)
def _r2_oom() -> Iterator[Produced]:
    # An address-space limit below what the scanner needs: it runs out of memory starting up.
    for tool, argv, mib in (
        ("bandit", [_bin("bandit"), *BANDIT, "-r", str(_src_tree())], 48),
        ("detect-secrets", [_bin("detect-secrets"), "scan", str(_src_tree())], 48),
        ("semgrep", [_bin("semgrep"), "scan", "--config", str(_semgrep_rules()), "--json", "--metrics=off", str(_src_tree())], 200),
        ("nmap", ["nmap", "-sT", "-p", "1-100", "127.0.0.1"], 8),
    ):
        with contextlib.suppress(subprocess.TimeoutExpired):
            yield from _one(run_limited(tool, argv, _limited("RLIMIT_AS", mib * 2**20), timeout=30), f"{tool}-as")


@scenario("r2/scanner/cpu-limit", "capacity", round=2)
def _r2_cpu() -> Iterator[Produced]:
    yield from _one(run_limited("semgrep", _slow("semgrep"), _limited("RLIMIT_CPU", 1)), "semgrep")
    with contextlib.suppress(subprocess.TimeoutExpired):
        yield from _one(run_limited("bandit", [_bin("bandit"), *BANDIT, "-r", _big_tree()], _limited("RLIMIT_CPU", 1), timeout=30), "bandit")


@scenario("r2/scanner/open-files", "capacity", round=2)
def _r2_nofile() -> Iterator[Produced]:
    yield from _one(run_limited("nmap", ["nmap", "-sT", "-p", "1-200", "127.0.0.1"], _limited("RLIMIT_NOFILE", 6)), "nmap")
    yield from _one(run_limited("semgrep", _slow("semgrep"), _limited("RLIMIT_NOFILE", 12)), "semgrep")


@scenario("r2/store/sqlite-full", "capacity", round=2)
def _r2_sqlite_full() -> Iterator[Produced]:
    path = WORK / "full.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("PRAGMA max_page_count = 8")
    yield from _yield("insert", lambda: [conn.execute("INSERT INTO t VALUES (?)", ("x" * 4000,)) for _ in range(64)], {})
    conn.close()


@scenario("r2/store/newer-schema", "db-newer", round=2)
def _r2_newer_schema() -> Iterator[Produced]:
    from secflow.store import FindingsStore

    path = WORK / "newer.db"
    FindingsStore(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'from the future', '2030-01-01T00:00:00.000000+00:00')")
    conn.commit()
    conn.close()
    yield from _yield("store", lambda: FindingsStore(f"sqlite:///{path}"), {})


@scenario("r2/store/postgres-auth", "db-auth", round=2)
def _r2_pg_auth() -> Iterator[Produced]:
    import psycopg

    from tests.pg import find_bin_dir, start_server

    if find_bin_dir() is None:
        return
    server = start_server()
    try:
        url = server.create_database()
        wrong = url.replace(server.password, "wrong-password")
        yield from _yield("password", lambda: psycopg.connect(wrong, connect_timeout=5), {})
        missing = url.rsplit("/", 1)[0] + "/no_such_database"
        yield from _yield("database", lambda: psycopg.connect(missing, connect_timeout=5), {})
        from secflow.store import FindingsStore

        yield from _yield("store-password", lambda: FindingsStore(wrong), {})
        conn = psycopg.connect(url, connect_timeout=5)
        server.stop()
        yield from _yield_as("stopped-mid-session", "server-down", lambda: conn.execute("SELECT 1"), {})
    finally:
        with contextlib.suppress(Exception):
            server.destroy()


def _yield_as(variant: str, rule: str, fn: Callable[[], object], context: dict[str, Any]) -> Iterator[Produced]:
    """A case of another rule met inside a scenario (the rule is named with the variant)."""
    for p in _yield(variant, fn, context):
        p.context = {**context}
        p.variant = f"{variant}@{rule}"
        yield p


@scenario("r2/http/tls-handshake", "tls-config", round=2)
def _r2_tls() -> Iterator[Produced]:
    ctx, cert_file = _self_signed_context()
    ctx.verify_mode = ssl.CERT_REQUIRED  # demands a client certificate we do not have
    ctx.load_verify_locations(cert_file)
    server = RawServer(_html_200, tls=ctx)
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    try:
        yield from _yield("client-cert-required", lambda: _httpx_get(f"https://127.0.0.1:{server.port}/", verify=client_ctx), ENRICH)
    finally:
        server.close()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(WORK / "cert.pem", WORK / "key.pem")
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    server = RawServer(_html_200, tls=old)
    modern = ssl.create_default_context()
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        yield from _yield("no-common-version", lambda: _httpx_get(f"https://127.0.0.1:{server.port}/", verify=modern), ENRICH)
    finally:
        server.close()


def _tls_then_close(conn: socket.socket) -> None:
    conn.settimeout(5)
    conn.recv(1024)  # the ClientHello; then drop the connection mid-handshake


def _drip(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(3)


@scenario("r2/http/connection", "conn-transient", round=2)
def _r2_connection() -> Iterator[Produced]:
    from tests.servers import closed_port

    drop = RawServer(_tls_then_close)
    drip = RawServer(_drip)
    try:
        yield from _yield("tls-dropped", lambda: _httpx_get(f"https://127.0.0.1:{drop.port}/"), ENRICH)
        yield from _yield("slow-body", lambda: _httpx_get(f"http://127.0.0.1:{drip.port}/v1/querybatch", timeout=0.5, method="POST"), SCA)
    finally:
        drop.close()
        drip.close()
    port = closed_port()

    def via_proxy() -> None:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=1) as client:
            client.get("http://127.0.0.1:9/feeds/kev.json")

    yield from _yield("proxy-down", via_proxy, ENRICH)
    yield from _yield("asyncio-refused", lambda: asyncio.run(asyncio.open_connection("127.0.0.1", port)), {"tool": "portscan"})


@scenario("r2/http/status", "http-transient", round=2)
def _r2_status() -> Iterator[Produced]:
    from tests.enrich_standins import Fault, NvdStandin
    from tests.osv_standin import Fault as OsvFault
    from tests.osv_standin import OsvStandin

    osv = OsvStandin(faults={"querybatch": [OsvFault(500, body={"code": 13, "message": "internal error"})]})
    try:
        yield from _yield("osv-500-json", lambda: _httpx_get(f"{osv.url}/v1/querybatch", method="POST"), SCA)
    finally:
        osv.close()
    with NvdStandin(faults=[Fault(503, retry_after="Wed, 21 Oct 2037 07:28:00 GMT")]) as nvd:
        yield from _yield("nvd-503-date", lambda: _httpx_get(f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228"), ENRICH)


@scenario("r2/http/garbage", "tool-garbage", round=2)
def _r2_garbage() -> Iterator[Produced]:
    from secflow.enrichment import parse_nvd
    from tests.enrich_standins import Fault, EpssStandin, NvdStandin

    with EpssStandin(faults=[Fault.raw(b"")]) as epss:
        yield from _yield("epss-empty", lambda: _httpx_get(f"{epss.url}/data/v1/epss?cve=CVE-2021-44228"), ENRICH)
    with NvdStandin(faults=[Fault(200, body={"vulnerabilities": "not a list"})]) as nvd:

        def parse() -> None:
            with httpx.Client(timeout=1) as client:
                parse_nvd(client.get(f"{nvd.url}{nvd.PATH}?cveId=CVE-2021-44228").json())

        yield from _yield("nvd-wrong-shape", parse, ENRICH)


@scenario("r2/dns/invalid", "dns-nxdomain", round=2)
def _r2_dns() -> Iterator[Produced]:
    yield from _yield("asyncio", lambda: asyncio.run(asyncio.open_connection("scanme.invalid", 443)), {"tool": "portscan"})
    yield from _yield("psycopg", lambda: __import__("psycopg").connect("postgresql://u:p@db.invalid/x", connect_timeout=2), {})


@scenario("r2/temporal/operator", "operator-cancel", round=2)
def _r2_temporal() -> Iterator[Produced]:
    yield from _temporal_round2()


def _temporal_round2() -> Iterator[Produced]:
    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from tests.corpus.support import SleepyWorkflow, hang, sleepy
    from tests.devserver import DevServer

    server = DevServer(None, WORK / "devserver2.log")
    server.start()
    try:

        async def scenarios() -> list[Produced]:
            out: list[Produced] = []
            client = await Client.connect(server.address)
            async with Worker(
                client, task_queue="harvest", workflows=[SleepyWorkflow], activities=[sleepy, hang],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ):
                async def outcome(variant: str, rule: str, action: str, **kw: Any) -> None:
                    handle = await client.start_workflow(SleepyWorkflow.run, action, id=f"h-{variant}", task_queue="harvest")
                    if kw.get("cancel"):
                        await asyncio.sleep(0.5)
                        await handle.cancel()
                    if kw.get("terminate"):
                        await asyncio.sleep(0.5)
                        await handle.terminate("operator stopped it")
                    try:
                        await handle.result()
                    except Exception as exc:
                        out.append(Produced(f"{variant}@{rule}" if rule else variant, exc, {}))
                    if kw.get("again"):
                        try:
                            await client.start_workflow(SleepyWorkflow.run, action, id=f"h-{variant}-dup", task_queue="harvest")
                            await client.start_workflow(SleepyWorkflow.run, action, id=f"h-{variant}-dup", task_queue="harvest")
                        except Exception as exc:
                            out.append(Produced(f"{variant}-twice@already-started", exc, {}))
                    if kw.get("signal"):
                        try:
                            await handle.signal("poke")
                        except Exception as exc:
                            out.append(Produced(f"{variant}-signal-ended@not-found-rpc", exc, {}))

                await outcome("cancelled", "", "sleep", cancel=True)
                await outcome("terminated", "", "sleep", terminate=True)
                await outcome("heartbeat", "heartbeat-lost", "hang")
                await outcome("start-to-close", "heartbeat-lost", "overrun", again=True, signal=True)
            return out

        yield from asyncio.run(scenarios())
    finally:
        server.stop()


# --------------------------------------------------------------------------------------
def harvest(rounds: set[int]) -> list[HarvestedCase]:
    cases: list[HarvestedCase] = []
    for sc in SCENARIOS:
        if sc.round not in rounds:
            continue
        rule = RULES[sc.rule]
        started = time.monotonic()
        produced = list(sc.fn())
        if not produced:
            print(f"  {sc.sid}: nothing failed (no case)", file=sys.stderr)
        for i, p in enumerate(produced):
            variant = p.variant or str(i)
            rule_name = sc.rule
            if "@" in variant:  # a failure of another rule met inside the scenario
                variant, rule_name = variant.split("@", 1)
            case_rule = RULES[rule_name]
            case = HarvestedCase(
                case_id=f"{sc.sid}/{variant}",
                scenario=sc.sid,
                rule=f"{rule_name}: {case_rule.text}",
                expected=case_rule.expected,
                context=p.context,
            )
            if isinstance(p.error, BaseException):
                case.exception = dump_exception(p.error)
                # Rebuilt from JSON, it must read like the live one did.
                from secflow.errors import classify

                live = classify(p.error, **p.context)
                again = classify(rebuild(case.exception), **p.context)
                # (not retry_after: an HTTP-date hint shrinks by the time that passed)
                case.extra["fidelity"] = (live.category, live.reason) == (again.category, again.reason)
                if not case.extra["fidelity"]:
                    print(f"  FIDELITY {case.case_id}: live {live} rebuilt {again}", file=sys.stderr)
            else:
                case.message = p.error
            cases.append(case)
        print(f"  {sc.sid}: {len(produced)} case(s) in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return cases


FILES = {1: (HOLDOUT_FILE, TUNE_FILE), 2: (HOLDOUT_FILE.with_name("holdout-2.json"), TUNE_FILE.with_name("tune-2.json"))}


def main() -> None:
    # Writing replaces committed files, hold-outs included: only on request.
    check = "--write" not in sys.argv
    rounds = {int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--round=")} or set(FILES)
    cases = harvest(rounds)
    header = {
        "about": "failures harvested by tests/corpus/harvest.py on loopback; labels are the scenarios' rules",
        "harvested_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    round_of = {sc.sid: sc.round for sc in SCENARIOS}
    for number in sorted(rounds):
        mine = [c for c in cases if round_of[c.scenario] == number]
        holdout = [c for c in mine if in_holdout(c.case_id)]
        tune = [c for c in mine if not in_holdout(c.case_id)]
        holdout_file, tune_file = FILES[number]
        print(f"round {number}: {len(mine)} cases: {len(holdout)} hold-out ({holdout_file.name}), {len(tune)} tune ({tune_file.name})")
        if not check:
            save(holdout_file, holdout, {**header, "round": number, "part": "hold-out: never tuned on"})
            save(tune_file, tune, {**header, "round": number, "part": "tune"})
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
