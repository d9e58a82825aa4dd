"""Rules of engagement survive recovery (issue 10, item 8): a stage's `limits` (probe rate,
ports) bind every discovery tool that runs in it, a fallback tool included, and the rate is
measured where it matters: at the target, by loopback listeners timing each connection.

Before: nmap's `max_rate: 10` fell back to portscan at its default 200 probes/s.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.scanning import portscan
from secflow.documents import save_spec
from secflow.models import StageTaskInput
from secflow.retries import plan_for
from secflow.spec import Spec, SpecError, validate_spec_data
from secflow.store import open_store
from secflow.tools import TOOLS
from tests.helpers import final_status, make_spec, start

HOST = "127.0.0.1"
RATE = 10  # probes per second allowed at the target
PORTS = 25  # open ports probed: at RATE, about 2.4 s; at 200/s, about 0.12 s


class TimedListeners:
    """`count` listening ports on 127.0.0.1; one thread accepts on all of them and records
    when each connection arrived (monotonic seconds)."""

    def __init__(self, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.socks = []
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            s.listen(16)
            s.setblocking(False)
            self.selector.register(s, selectors.EVENT_READ)
            self.socks.append(s)
        self.ports = sorted(s.getsockname()[1] for s in self.socks)
        self.arrivals: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self.selector.select(timeout=0.05):
                sock: Any = key.fileobj
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                self.arrivals.append(time.monotonic())
                conn.close()

    def busiest_second(self) -> int:
        """The most connections that arrived within any one-second window."""
        times = sorted(self.arrivals)
        return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for s in self.socks:
            s.close()


@pytest.fixture
def listeners() -> Any:
    timed = TimedListeners(PORTS)
    yield timed
    timed.close()


@pytest.fixture
def path_without_nmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding only this Python: nmap cannot be found, so the stage falls back."""
    bindir = tmp_path / "no-nmap-bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("nmap") is None
    return bindir


def assert_paced(listeners: TimedListeners) -> None:
    assert len(listeners.arrivals) == PORTS, "every port probed exactly once"
    # The token bucket allows one probe of burst on top of the rate; one more for a
    # connection the accepting thread records late. Never anywhere near 200.
    assert listeners.busiest_second() <= RATE + 2, sorted(round(t - listeners.arrivals[0], 3) for t in listeners.arrivals)


@pytest.mark.parametrize(
    "how",
    [
        pytest.param({"limits": {"max_rate": RATE}}, id="stage-limits"),
        pytest.param({"options": {"max_rate": RATE}}, id="nmap-max_rate-option"),
    ],
)
async def test_fallback_portscan_keeps_the_stage_rate_at_the_target(
    client: Client, worker: str, path_without_nmap: Path, listeners: TimedListeners, how: dict[str, Any]
) -> None:
    stage: dict[str, Any] = {"id": "ports", "kind": "discovery", "tool": "nmap", "on_failure": "fallback", "fallback_tool": "portscan"}
    stage["options"] = {"ports": ",".join(map(str, listeners.ports)), **how.get("options", {})}
    if "limits" in how:
        stage["limits"] = how["limits"]
    spec = make_spec([{"host": HOST}], [stage])
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.stages["ports"].state == "partial", status.stages["ports"].reason
    assert "fell back to portscan" in status.stages["ports"].reason
    assert {f.tool for f in open_store().list_findings(handle.id)} == {"portscan"}
    assert_paced(listeners)


async def test_portscan_honours_the_stored_stage_limits_even_if_its_input_does_not(listeners: TimedListeners) -> None:
    """An input built by an older workflow carries portscan's own rate (200/s): the
    activity folds the limits in again from the stored spec."""
    ports = ",".join(map(str, listeners.ports))
    spec = Spec.model_validate(
        {
            "name": "t",
            "scope": {"allow": [HOST]},
            "targets": [{"host": HOST}],
            "stages": [{"id": "ports", "kind": "discovery", "tool": "portscan", "limits": {"max_rate": RATE, "ports": ports}}],
        }
    )
    inp = StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}",
        stage_id="ports",
        kind="discovery",
        tool="portscan",
        target=HOST,
        target_kind="host",
        options={"rate": 200, "ports": f"1,{ports}"},  # port 1 is outside the limits: never probed
        spec_ref=save_spec(open_store(), spec),
        retry=plan_for(TOOLS["portscan"].retry_class),
    )
    result = await ActivityEnvironment().run(portscan, inp)
    assert result.items_total == PORTS
    assert result.findings == PORTS
    assert_paced(listeners)


def test_limits_fold_into_every_discovery_tool_and_its_fallback() -> None:
    spec = make_spec(
        [{"host": HOST}],
        [
            {"id": "a", "kind": "discovery", "tool": "nmap", "on_failure": "fallback", "fallback_tool": "portscan",
             "options": {"max_rate": 500, "timing": 4}, "limits": {"max_rate": 50, "ports": "1-1024"}},
            {"id": "b", "kind": "discovery", "tool": "portscan", "on_failure": "fallback", "fallback_tool": "nmap",
             "options": {"rate": 30, "ports": "22,80-82"}},
            {"id": "c", "kind": "discovery", "tool": "nmap", "on_failure": "fallback", "fallback_tool": "portscan",
             "options": {"max_rate": 50}},
        ],
    )  # fmt: skip
    a, b, c = spec.stages
    assert a.tool_options() == {"max_rate": 50, "timing": 4, "ports": "1-1024"}
    assert a.tool_options("portscan") == {"rate": 50, "ports": "1-1024"}
    assert b.tool_options("nmap") == {"max_rate": 30, "ports": "22,80-82"}
    assert c.tool_options("portscan") == {"rate": 50}, "before: {} (portscan at its default 200/s)"


def problems(stage: dict[str, Any]) -> list[str]:
    data = {"name": "t", "scope": {"allow": [HOST]}, "targets": [{"host": HOST}, {"url": f"http://{HOST}/"}], "stages": [stage]}
    with pytest.raises(SpecError) as caught:
        validate_spec_data(data)
    return [str(p) for p in caught.value.problems]


def test_bad_limits_are_refused_with_the_field_path() -> None:
    discovery = {"id": "p", "kind": "discovery", "tool": "portscan"}
    assert problems({**discovery, "limits": {"max_rate": 0}}) == ["stages[0].limits.max_rate: Input should be greater than 0"]
    assert problems({**discovery, "limits": {"ports": "1-70000"}})[0].startswith("stages[0].limits.ports:")
    assert problems({**discovery, "limits": {"rate": 5}}) == ["stages[0].limits.rate: unknown field; did you mean 'max_rate'?"]
    assert problems({**discovery, "options": {"ports": "80,8080"}, "limits": {"ports": "1-1024"}}) == [
        "stages[0].options.ports: ports 8080 are outside limits.ports (1-1024)"
    ]
    assert problems({"id": "h", "kind": "dast", "limits": {"max_rate": 5}}) == [
        "stages[0].limits: limits apply to discovery tools (nmap, portscan); http-headers does not probe"
    ]
