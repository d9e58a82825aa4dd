"""Scope bypasses found by the attack pass of issue 10, one test each, run against the real
tools on loopback: in-scope stand-ins on 127.0.0.1, out-of-scope ones on 127.0.0.2.

Each test reproduced its bypass on the code before the fix (the out-of-scope stand-in
was contacted, or validation passed); now the attempt is a `security` failure (or a
validation problem) and the out-of-scope stand-in sees nothing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.scanners.bandit import bandit
from activities.scanners.nmap import nmap
from activities.scanners.tls import tls
from activities.scanning import http_headers, portscan
from secflow.documents import save_spec
from secflow.models import StageTaskInput
from secflow.retries import plan_for
from secflow.spec import Spec, SpecError, validate_spec_data
from secflow.store import open_store
from secflow.tools import TOOLS
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer

INSIDE, OUTSIDE = "127.0.0.1", "127.0.0.2"


class CountingListener:
    """A TCP port on `host` that accepts, counts and closes every connection."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


class ServerOn(ScriptedServer):
    """ScriptedServer bound to another loopback address."""

    def __init__(self, host: str, script: list[Reply]) -> None:
        from http.server import ThreadingHTTPServer

        super().__init__(script)
        handler = self.httpd.RequestHandlerClass
        self.close()
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.port = self.httpd.server_address[1]
        self.host = host
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


def task(tool: str, target: str, target_kind: str, scope: list[str] | dict[str, Any], options: dict[str, Any] | None = None) -> StageTaskInput:
    """One tool run. A dict scope (with `deny`) travels in a stored spec, as the workflow sends it."""
    kind = next(iter(TOOLS[tool].kinds))
    spec_ref = ""
    if isinstance(scope, dict):
        # model_validate only: no semantic checks, so the activity's own checks are tested
        spec = Spec.model_validate(
            {"name": "t", "scope": scope, "targets": [{target_kind: target}], "stages": [{"id": "s", "kind": kind, "tool": tool}]}
        )
        spec_ref = save_spec(open_store(), spec)
    return StageTaskInput(
        assessment_id=f"t-{uuid.uuid4().hex[:10]}",
        stage_id="s",
        kind=kind,
        tool=tool,
        target=target,
        target_kind=target_kind,
        options=options or {},
        scope=scope if isinstance(scope, list) else [],
        spec_ref=spec_ref,
        retry=plan_for(TOOLS[tool].retry_class),
    )


async def refused(activity_fn: Any, inp: StageTaskInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(activity_fn, inp)
    assert caught.value.type == "security", caught.value
    return caught.value


def spec_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        validate_spec_data(json.loads(json.dumps(data)))
    return [str(p) for p in caught.value.problems]


# ---------------------------------------------------------------------------------------
# 1. A host with a control character passes a suffix check; the resolver reads less.
# ---------------------------------------------------------------------------------------
SNEAKY_HOST = f"{OUTSIDE}\x00.example.com"  # "*.example.com" by suffix; getaddrinfo reads 127.0.0.2


async def test_control_character_host_never_reaches_portscan_connect() -> None:
    outside = CountingListener(OUTSIDE)
    try:
        await refused(portscan, task("portscan", SNEAKY_HOST, "host", ["*.example.com", INSIDE], {"ports": str(outside.port)}))
    finally:
        outside.close()
    assert outside.accepted == 0


async def test_control_character_host_never_reaches_tls_connect() -> None:
    outside = CountingListener(OUTSIDE)
    try:
        url = f"https://{SNEAKY_HOST}:{outside.port}/"
        await refused(tls, task("tls", url, "url", ["*.example.com", INSIDE], {"connect_timeout": "2s"}))
    finally:
        outside.close()
    assert outside.accepted == 0


def test_control_character_and_odd_ip_hosts_fail_validation() -> None:
    data = {
        "name": "t",
        "scope": {"allow": ["*.example.com", INSIDE]},
        "targets": [{"host": SNEAKY_HOST}, {"host": "127.1"}, {"host": "１２７．０．０．１"}, {"url": f"https://{SNEAKY_HOST}/"}],
        "stages": [{"id": "p", "kind": "discovery"}, {"id": "t", "kind": "dast", "tool": "tls"}],
    }
    problems = spec_problems(data)
    for i in range(4):
        assert any(p.startswith(f"targets[{i}].") for p in problems), problems
    assert any("control or whitespace character" in p for p in problems)
    assert any("non-standard notation" in p for p in problems)


# ---------------------------------------------------------------------------------------
# 2. A URL-prefix scope compared on the raw path: dot segments leave the prefix.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("escape", ["app/%2e%2e/admin", "app/%2E%2E%2Fadmin", "app/..;/admin", "app/%252e%252e/admin"])
async def test_encoded_dot_segments_leave_no_url_prefix(escape: str) -> None:
    server = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        prefix = f"{server.url}app/"
        assert spec_problems(
            {"name": "t", "scope": {"allow": [prefix]}, "targets": [{"url": server.url + escape}], "stages": [{"id": "h", "kind": "dast"}]}
        )
        await refused(http_headers, task("http_headers", server.url + escape, "url", [prefix]))
    finally:
        server.close()
    assert server.requests == []


async def test_redirect_with_dot_segments_is_not_followed() -> None:
    server = ScriptedServer(lambda n, path: Reply(302, {"Location": "/app/%2e%2e/admin"}) if path == "/app/start" else Reply(200, GOOD_HEADERS))
    try:
        prefix = f"{server.url}app/"
        error = await refused(http_headers, task("http_headers", f"{prefix}start", "url", [prefix]))
    finally:
        server.close()
    assert "leaves scope" in str(error)
    assert server.requests == ["/app/start"]


# ---------------------------------------------------------------------------------------
# 3. scope.deny, and what names and redirects resolve to, checked right before connecting.
# ---------------------------------------------------------------------------------------
async def test_redirect_to_a_denied_address_is_not_followed() -> None:
    outside = ServerOn(OUTSIDE, [Reply(200, GOOD_HEADERS)])
    redirector = ScriptedServer([Reply(302, {"Location": outside.url})])
    try:
        scope = {"allow": ["127.0.0.0/8"], "deny": [OUTSIDE]}
        await refused(http_headers, task("http_headers", redirector.url, "url", scope))
    finally:
        outside.close()
        redirector.close()
    assert outside.requests == []
    assert redirector.requests == ["/"]


async def test_name_resolving_to_a_denied_address_is_never_connected() -> None:
    """`localhost` is allowed by name; its DNS answers (127.0.0.1, ::1) are denied."""
    listener = CountingListener(INSIDE)
    server = ScriptedServer([Reply(200, GOOD_HEADERS)])
    scope = {"allow": ["localhost"], "deny": ["127.0.0.0/8", "::1"]}
    try:
        error = await refused(portscan, task("portscan", "localhost", "host", scope, {"ports": str(listener.port)}))
        assert "resolves to" in str(error)
        await refused(http_headers, task("http_headers", f"http://localhost:{server.port}/", "url", scope))
        await refused(tls, task("tls", f"https://localhost:{listener.port}/", "url", scope))
        await refused(nmap, task("nmap", "localhost", "host", scope, {"ports": str(listener.port)}))
    finally:
        listener.close()
        server.close()
    assert listener.accepted == 0
    assert server.requests == []


async def test_denied_targets_fail_validation_and_the_workflow(client: Client, worker: str) -> None:
    server = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        data = {
            "name": "t",
            "scope": {"allow": ["127.0.0.0/8", "localhost"], "deny": [f"{server.url}admin/", OUTSIDE]},
            "targets": [{"url": f"{server.url}admin/x"}, {"host": OUTSIDE}, {"url": f"{server.url}ok/%2e%2e/admin/"}],
            "stages": [{"id": "h", "kind": "dast"}, {"id": "p", "kind": "discovery"}],
        }
        problems = spec_problems(data)
        assert [p.split(":")[0] for p in problems] == ["targets[0].url", "targets[1].host", "targets[2].url"], problems
        # A name that is allowed but resolves to a denied address: the workflow stops it.
        spec = make_spec(
            [{"url": f"http://localhost:{server.port}/"}],
            [{"id": "h", "kind": "dast", "tool": "http_headers"}],
            scope={"allow": ["localhost"], "deny": ["127.0.0.0/8", "::1"]},
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        server.close()
    assert status.outcome == "failed"
    assert status.stages["h"].error is not None and status.stages["h"].error.category == "security"
    assert server.requests == []


# ---------------------------------------------------------------------------------------
# 4. Paths: a symlink inside an in-scope tree, and a target that is itself a symlink.
# ---------------------------------------------------------------------------------------
MARKER = "OUTSIDE_SCOPE_MARKER_7f3a"


def tree_with_escaping_link(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret_code.py").write_text(f'import subprocess\nsubprocess.call("echo {MARKER}", shell=True)\n')
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "own.py").write_text('import subprocess\nsubprocess.call("echo inside", shell=True)\n')
    (tree / "pkg" / "leak.py").symlink_to(outside / "secret_code.py")
    (tree / "pkg" / "linked_dir").symlink_to(outside, target_is_directory=True)
    (tree / "inside_link.py").symlink_to(tree / "own.py")  # stays inside: scanned as usual
    return tree, outside


async def test_bandit_does_not_follow_a_symlink_out_of_scope(tmp_path: Path) -> None:
    tree, _ = tree_with_escaping_link(tmp_path)
    inp = task("bandit", str(tree), "path", [str(tree)])
    result = await ActivityEnvironment().run(bandit, inp)
    findings = open_store().list_findings(inp.assessment_id)
    assert result.findings == len(findings) > 0
    assert not [f for f in findings if MARKER in (f.evidence or "") or "leak" in f.location], findings
    assert {f.location.split(":")[0] for f in findings} == {"own.py", "inside_link.py"}
    assert result.outputs["symlinks_skipped"] == "2"


def test_path_target_that_is_a_symlink_out_of_scope_fails_validation(tmp_path: Path) -> None:
    tree, outside = tree_with_escaping_link(tmp_path)
    data = {
        "name": "t",
        "scope": {"allow": [str(tree)]},
        "targets": [{"path": str(tree / "pkg" / "linked_dir")}, {"path": str(tree / "pkg" / "leak.py")}, {"path": str(tree)}],
        "stages": [{"id": "b", "kind": "sast"}],
    }
    problems = spec_problems(data)
    assert len(problems) == 2, problems
    assert f"targets[0].path: '{tree / 'pkg' / 'linked_dir'}' leads (symlinks followed) to {outside}, outside scope.allow" in problems


def test_path_scanners_exclude_escaping_links(tmp_path: Path) -> None:
    from activities.scanners.bandit import build_argv as bandit_argv
    from activities.scanners.semgrep import build_argv as semgrep_argv
    from secflow.scope import Scope
    from secflow.tools import BanditOptions, SemgrepOptions

    tree, _ = tree_with_escaping_link(tmp_path)
    (tree / "odd,name[1].py").symlink_to("/etc/hostname")
    links = Scope.parse([str(tree)]).escaping_links(str(tree))
    assert links == sorted(str(tree / p) for p in ("pkg/leak.py", "pkg/linked_dir", "odd,name[1].py"))
    argv = bandit_argv(str(tree), BanditOptions(), links)
    bandit_excludes = argv[argv.index("--exclude") + 1]
    assert str(tree / "pkg" / "leak.py") in bandit_excludes.split(",")
    assert str(tree / "odd?name[1].py") in bandit_excludes.split(",")
    assert "--exclude=/pkg/leak.py" in semgrep_argv(str(tree), SemgrepOptions(), links)
    assert "--exclude=/odd,name?1?.py" in semgrep_argv(str(tree), SemgrepOptions(), links)


def test_deny_path_wins_over_allow(tmp_path: Path) -> None:
    tree, _ = tree_with_escaping_link(tmp_path)
    (tree / "vendor").mkdir()
    problems = spec_problems(
        {
            "name": "t",
            "scope": {"allow": [str(tree)], "deny": [str(tree / "vendor")]},
            "targets": [{"path": str(tree / "vendor")}, {"path": str(tree)}],
            "stages": [{"id": "b", "kind": "sast"}],
        }
    )
    assert problems == [f"targets[0].path: '{tree / 'vendor'}' matches scope.deny"]
    assert os.path.isdir(tree / "vendor")
