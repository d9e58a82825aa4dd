"""The nmap adapter for real: real nmap against listeners on 127.0.0.1, real fake binaries
(executables first on PATH that print garbage, segfault or hang), and the nmap -> portscan
fallback through the real workflow with nmap really absent from the worker's PATH.

Activities run through temporalio's ActivityEnvironment (the real `run_tool`: store,
classification, error ledger), so a failure arrives as the typed ApplicationError a
workflow would see.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.scanners.nmap import build_argv, nmap, parse_nmap_xml, port_argument, validate_host
from secflow.errors import Category, ExternalToolError, InvalidInputError, SecFlowError, classify
from secflow.models import StageTaskInput, StageTaskResult
from secflow.retries import plan_for
from secflow.store import open_store
from secflow.tools import TOOLS, NmapOptions
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Listeners, Reply, ScriptedServer, closed_port

HOST = "127.0.0.1"
SCOPE = ["127.0.0.1", "localhost"]
HAVE_NMAP = shutil.which("nmap") is not None
@pytest.fixture
def _require_nmap() -> None:
    # Fail, never skip: CI and `make test` install nmap (scripts/system-deps.sh).
    assert HAVE_NMAP, "nmap is not installed: run `sh scripts/system-deps.sh`"


needs_nmap = pytest.mark.usefixtures("_require_nmap")


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def stage_input(target: str, *, options: dict[str, Any] | None = None, scope: list[str] | None = None) -> StageTaskInput:
    return StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}",
        stage_id="ports",
        kind="discovery",
        tool="nmap",
        target=target,
        target_kind="host",
        options=options or {},
        scope=scope or SCOPE,
        retry=plan_for(TOOLS["nmap"].retry_class),
    )


async def run_nmap(inp: StageTaskInput) -> StageTaskResult:
    return await ActivityEnvironment().run(nmap, inp)


async def nmap_failure(inp: StageTaskInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run_nmap(inp)
    return caught.value


def fake_nmap(directory: Path, body: str) -> Path:
    """A real executable `directory/nmap` (Python) that records each run's argv, then runs `body`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nmap"
    log = directory / "nmap.ran"
    path.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
        + textwrap.dedent(body)
    )
    path.chmod(0o755)
    return path


def runs_of_fake(directory: Path) -> list[list[str]]:
    log = directory / "nmap.ran"
    return [eval(line) for line in log.read_text().splitlines()] if log.exists() else []  # noqa: S307 (our own repr)


@pytest.fixture
def fake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put FIRST on PATH: a fake `nmap` written there shadows the real one."""
    directory = tmp_path / "fakebin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory


VALID_XML = """<?xml version="1.0" encoding="UTF-8"?>
<nmaprun scanner="nmap" args="nmap" version="7.93" xmloutputversion="1.05">
<host><status state="up" reason="user-set"/><address addr="127.0.0.1" addrtype="ipv4"/>
<ports>
<port protocol="tcp" portid="22"><state state="open" reason="syn-ack"/><service name="ssh" product="OpenSSH" version="9.2p1" extrainfo="protocol 2.0" method="probed" conf="10"/></port>
<port protocol="tcp" portid="23"><state state="closed" reason="conn-refused"/></port>
<port protocol="tcp" portid="8080"><state state="open" reason="syn-ack"/><service name="http-proxy" method="table" conf="3"/></port>
</ports></host>
<runstats><finished time="1" exit="success"/><hosts up="1" down="0" total="1"/></runstats>
</nmaprun>
"""


# ---------------------------------------------------------------------------------------
# real nmap against real listeners
# ---------------------------------------------------------------------------------------
@needs_nmap
async def test_real_nmap_finds_exactly_the_open_ports_with_service_info() -> None:
    listeners = Listeners(2)
    web = ScriptedServer([Reply(200, GOOD_HEADERS)])  # Python's http.server: "Server: BaseHTTP/0.6 Python/3.x"
    closed = closed_port()
    try:
        ports = sorted([*listeners.ports, web.port, closed])
        inp = stage_input(HOST, options={"ports": ",".join(map(str, ports)), "timing": 4, "host_timeout": "90s", "timeout": "120s"})
        result = await run_nmap(inp)
    finally:
        listeners.close()
        web.close()

    findings = [f for f in open_store().list_findings(inp.assessment_id) if f.tool == "nmap"]
    expected = {f"{HOST}:{p}" for p in [*listeners.ports, web.port]}
    assert {f.location for f in findings} == expected, "exactly the listening ports; the closed one is not reported"
    assert result.findings == 3 and result.items_total == 4
    for f in findings:
        assert f.rule_id == "open-port" and f.tool == "nmap" and f.target == HOST
        port = int(f.location.rsplit(":", 1)[1])
        assert f.title.startswith(f"Open TCP port {port}: ")
        assert "service=" in f.evidence and "open" in f.evidence
    http = next(f for f in findings if f.location == f"{HOST}:{web.port}")
    # -sV really probed it: nmap names the service and the product from the Server banner
    assert "http" in http.title
    assert "BaseHTTPServer" in http.title and "product=BaseHTTPServer" in http.evidence
    assert "identified by probed" in http.evidence
    # a different tool, so a different fingerprint from portscan's finding of the same port
    from activities.tools.portscan import port_findings as portscan_findings

    assert http.fingerprint != portscan_findings(HOST, [web.port])[0].fingerprint


# ---------------------------------------------------------------------------------------
# argument injection: refused before any process runs
# ---------------------------------------------------------------------------------------
INJECTIONS = [
    "-oN /tmp/x",
    "127.0.0.1; rm -rf /",
    "127.0.0.1 -oN /tmp/pwned",
    "--script=http-shellshock",
    "-iL/etc/passwd",
    "$(touch /tmp/pwned)",
    "`id`",
    "127.0.0.1|id",
    "127.0.0.1\n-oN/tmp/x",
    "127.0.0.1-254",  # nmap octet-range syntax: one target becoming many
]


@pytest.mark.parametrize("target", INJECTIONS)
async def test_injection_targets_are_refused_before_any_process_runs(target: str, fake_dir: Path) -> None:
    fake_nmap(fake_dir, "print('should never run')")
    error = await nmap_failure(stage_input(target, scope=[*SCOPE, "0.0.0.0/0"]))
    assert error.type == Category.SECURITY.value, error.message
    assert error.non_retryable
    assert runs_of_fake(fake_dir) == [], "nmap must not have been started"
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("target", ["under_score.example", "", "a..b", "[::1", "x" * 300])
async def test_malformed_hosts_are_validation_errors_and_run_nothing(target: str, fake_dir: Path) -> None:
    fake_nmap(fake_dir, "print('should never run')")
    error = await nmap_failure(stage_input(target))
    assert error.type == Category.VALIDATION.value, error.message
    assert runs_of_fake(fake_dir) == []


async def test_out_of_scope_host_is_refused_before_nmap_runs(fake_dir: Path) -> None:
    fake_nmap(fake_dir, "print('should never run')")
    error = await nmap_failure(stage_input("10.1.2.3", scope=["127.0.0.1"]))
    assert error.type == Category.SECURITY.value
    assert runs_of_fake(fake_dir) == []


def test_validate_host_accepts_hosts_and_ips() -> None:
    assert validate_host("127.0.0.1") == "127.0.0.1"
    assert validate_host("::1") == "::1"
    assert validate_host("[::1]") == "::1"
    assert validate_host("scanme.example.com.") == "scanme.example.com"
    assert validate_host("localhost") == "localhost"
    for bad in INJECTIONS:
        with pytest.raises(SecFlowError):
            validate_host(bad)


async def test_the_host_is_one_argv_element_after_double_dash(fake_dir: Path) -> None:
    fake_nmap(fake_dir, f"sys.stdout.write({VALID_XML!r})")
    inp = stage_input(HOST, options={"ports": " 22, 23,8080 ,24-25", "timing": 2, "host_timeout": "30s"})
    result = await run_nmap(inp)
    (argv,) = runs_of_fake(fake_dir)
    assert argv[-2:] == ["--", HOST]
    assert argv[argv.index("-p") + 1] == "22-25,8080", "only a canonical port list reaches -p"
    assert {"-sT", "-sV", "-n", "-T2"} <= set(argv)
    assert argv[argv.index("--host-timeout") + 1] == "30s"
    assert argv[argv.index("-oX") + 1] == "-"
    assert result.findings == 2
    found = {f.location: f for f in open_store().list_findings(inp.assessment_id)}
    assert set(found) == {f"{HOST}:22", f"{HOST}:8080"}
    assert found[f"{HOST}:22"].title == "Open TCP port 22: ssh (OpenSSH 9.2p1, protocol 2.0)"
    assert "version=9.2p1" in found[f"{HOST}:22"].evidence


def test_ipv6_targets_get_dash_6_and_bracketed_locations() -> None:
    argv = build_argv("::1", NmapOptions(ports="80"))
    assert "-6" in argv and argv[-2:] == ["--", "::1"]
    xml = VALID_XML.replace('addr="127.0.0.1" addrtype="ipv4"', 'addr="::1" addrtype="ipv6"').encode()
    assert [p.port for p in parse_nmap_xml(xml)] == [22, 8080]


def test_port_argument_is_canonical() -> None:
    assert port_argument("80,22,23,24,1000-1002,1003") == "22-24,80,1000-1003"
    with pytest.raises(ValueError):
        port_argument("22;id")


# ---------------------------------------------------------------------------------------
# a misbehaving nmap: garbage, crash, hang
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "output",
    [
        VALID_XML[: len(VALID_XML) // 2],  # truncated mid-document
        "Segmentation fault\n<<<not xml>>>",
        "",
        '<?xml version="1.0"?><somethingelse/>',
        VALID_XML.replace('<runstats><finished time="1" exit="success"/>', "<runstats>"),  # never finished
        VALID_XML.replace('exit="success"', 'exit="error" errormsg="bad things"'),
    ],
    ids=["truncated", "garbage", "empty", "not-nmaprun", "unfinished", "exit-error"],
)
async def test_unusable_xml_is_external_tool(output: str, fake_dir: Path) -> None:
    fake_nmap(fake_dir, f"sys.stdout.write({output!r})")
    error = await nmap_failure(stage_input(HOST, options={"ports": "22"}))
    assert error.type == Category.EXTERNAL_TOOL.value, error.message
    assert not error.non_retryable, "external_tool gets a limited retry"
    assert len(runs_of_fake(fake_dir)) == 1


def test_parse_errors_keep_the_output_tails() -> None:
    with pytest.raises(ExternalToolError) as caught:
        parse_nmap_xml(b"<nmaprun><host>", stderr=b"nmap: something broke")
    assert "<nmaprun><host>" in caught.value.stdout_tail
    assert "something broke" in caught.value.stderr_tail
    assert classify(caught.value, tool="nmap").category is Category.EXTERNAL_TOOL


async def test_segfault_is_external_tool(fake_dir: Path) -> None:
    fake_nmap(fake_dir, "import os, signal\nsys.stdout.write('<nmaprun>')\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    error = await nmap_failure(stage_input(HOST, options={"ports": "22"}))
    assert error.type == Category.EXTERNAL_TOOL.value, error.message
    assert "SIGSEGV" in error.message


async def test_hang_past_the_timeout_is_transient_and_killed(fake_dir: Path) -> None:
    pidfile = fake_dir / "pid"
    fake_nmap(fake_dir, f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    error = await nmap_failure(stage_input(HOST, options={"ports": "22", "timeout": "2s"}))
    assert error.type == Category.TRANSIENT.value, error.message
    assert "timeout" in error.message
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_host_timeout_reported_by_nmap_is_transient(fake_dir: Path) -> None:
    timed_out = VALID_XML.replace("<host>", '<host timedout="true">')
    fake_nmap(fake_dir, f"sys.stdout.write({timed_out!r})")
    error = await nmap_failure(stage_input(HOST, options={"ports": "22"}))
    assert error.type == Category.TRANSIENT.value


async def test_missing_nmap_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    error = await nmap_failure(stage_input(HOST, options={"ports": "22"}))
    assert error.type == Category.PERMANENT.value
    assert error.non_retryable
    assert "not installed" in error.message


def test_bad_options_are_refused_by_the_options_model() -> None:
    for bad in ({"ports": "22;id"}, {"timing": 9}, {"host_timeout": "soon"}, {"script": "vuln"}):
        with pytest.raises(ValueError):
            NmapOptions.model_validate(bad)
    with pytest.raises(InvalidInputError):
        validate_host("bad_host.example")


# ---------------------------------------------------------------------------------------
# through the real workflow
# ---------------------------------------------------------------------------------------
@needs_nmap
async def test_nmap_stage_through_the_workflow(client: Client, worker: str) -> None:
    listeners = Listeners(2)
    try:
        spec = make_spec(
            [{"host": HOST}],
            [{"id": "ports", "kind": "discovery", "tool": "nmap",
              "options": {"ports": ",".join(map(str, listeners.ports)), "timing": 4, "host_timeout": "90s"}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        listeners.close()
    assert status.outcome == "completed", status.reason
    assert status.stages["ports"].state == "succeeded"
    findings = open_store().list_findings(handle.id)
    assert sorted(f.location for f in findings if f.tool == "nmap") == [f"{HOST}:{p}" for p in listeners.ports]


@pytest.fixture
def path_without_nmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH for this process (and so the in-process worker) is one directory holding only
    a link to this Python: nmap, whatever is installed, cannot be found."""
    bindir = tmp_path / "no-nmap-bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bindir))
    assert shutil.which("nmap") is None
    return bindir


async def test_missing_nmap_falls_back_to_portscan_and_degrades(client: Client, worker: str, path_without_nmap: Path) -> None:
    listeners = Listeners(2)
    try:
        spec = make_spec(
            [{"host": HOST}],
            [{"id": "ports", "kind": "discovery", "tool": "nmap", "on_failure": "fallback", "fallback_tool": "portscan",
              # `timing` is nmap's alone: the fallback must get only the options it knows
              "options": {"ports": ",".join(map(str, listeners.ports)), "timing": 4}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        listeners.close()
    stage = status.stages["ports"]
    assert stage.state == "partial", stage.reason
    assert stage.degraded is True
    assert "nmap failed (permanent" in stage.reason and "fell back to portscan" in stage.reason
    assert status.outcome == "completed_with_errors"
    findings = open_store().list_findings(handle.id)
    assert {f.tool for f in findings} == {"portscan"}
    assert sorted(f.location for f in findings) == [f"{HOST}:{p}" for p in listeners.ports]
    errors = open_store().list_errors(handle.id)
    assert [(e.tool, e.category, e.attempt) for e in errors] == [("nmap", "permanent", 1)], "permanent: never retried"
