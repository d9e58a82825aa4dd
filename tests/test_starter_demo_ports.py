"""`make demo` with its ports taken refuses to start, clearly (issue 11).

Two demos at once used to half-start: the second demo target's "Address already in use"
was read as "ready" (it contains the word) and the run reported nonsense with exit 0.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_demo", ROOT / "examples" / "run_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_refuses_when_its_server_port_is_taken() -> None:
    # Held (bound, not listening) by "another program": nothing answers there as Temporal.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "examples/run_demo.py"],
            cwd=ROOT,
            env={**os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode != 0
    assert f"port {port} (Temporal server)" in out.stderr and "already in use" in out.stderr, out.stderr
    assert "make demo-stop" in out.stderr
    assert "starting" not in out.stdout and "Traceback" not in out.stderr, (out.stdout, out.stderr)


def test_port_check_sees_listeners_and_holders() -> None:
    demo = run_demo_module()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert demo.taken_ports({port: "demo target HTTP"}) == [f"port {port} (demo target HTTP)"]
    assert demo.taken_ports({port: "demo target HTTP"}) == []


def test_address_already_in_use_is_not_ready() -> None:
    """The demo target failing to listen stops the demo; "already" no longer reads as "ready"."""
    demo = run_demo_module()
    demo.DATA.mkdir(exist_ok=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(SystemExit) as stopped:
            demo.start_background(
                [sys.executable, "examples/demo_target.py", "--port", str(port)], "demo-target", dict(os.environ),
                ready=demo.READY_PREFIX,
            )
    assert "did not start" in str(stopped.value) and "Address already in use" in str(stopped.value)
