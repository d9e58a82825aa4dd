"""The Web UI in headless Chromium, with and without `--ui-codec-endpoint`.

One stored history (a dev server's SQLite file), shown twice: by a dev server whose UI knows
no codec server (the payloads stay ciphertext) and, after a restart on the same file, by one
started with `--ui-codec-endpoint` pointing at `python -m starter codec-server` (the page
shows the targets, results and failure messages). Playwright drives Debian's
/usr/bin/chromium (scripts/system-deps.sh installs it); no browser is downloaded.
Set SECFLOW_WEBUI_SHOTS=DIR to keep the screenshots (docs/codec.md shows them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from secflow.settings import load_settings
from secflow.temporal_client import connect
from tests.devserver import SEARCH_ATTRIBUTES, free_port, temporal_binary
from tests.helpers import final_status, make_spec, start
from tests.servers import Reply, ScriptedServer
from tests.test_codec_server import CodecServer
from worker import build_worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="chromium is not installed (scripts/system-deps.sh installs Debian's chromium: apt-get install chromium)",
    ),
]


@contextmanager
def ui_server(db: Path, log: Path, port: int, ui_port: int, codec_endpoint: str | None = None) -> Iterator[str]:
    args = [
        temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--ui-port", str(ui_port),
        "--ui-disable-news-fetch", "--db-filename", str(db), "--log-level", "warn",
    ]  # fmt: skip
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    if codec_endpoint:
        args += ["--ui-codec-endpoint", codec_endpoint]
    proc = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            health = subprocess.run(
                [temporal_binary(), "operator", "cluster", "health", "--address", address], capture_output=True, text=True
            )
            if "SERVING" in health.stdout:
                break
            assert proc.poll() is None and time.monotonic() < deadline, f"dev server did not start; see {log}"
            time.sleep(0.3)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def page_text(url: str, shot: Path, expect: str) -> str:
    """The rendered text of a Web UI page (and a full-page screenshot of it)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-proxy-server"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(url, wait_until="networkidle", timeout=60_000)
            # The input/result cards render after the history is fetched (and decoded).
            try:
                await page.get_by_text(expect, exact=False).first.wait_for(timeout=30_000)
            finally:
                await page.wait_for_load_state("networkidle")
                await page.screenshot(path=str(shot), full_page=True)  # also when the wait failed: what did it show?
            return await page.inner_text("body")
        finally:
            await browser.close()


async def test_web_ui_shows_ciphertext_without_the_codec_server_and_plaintext_with_it(tmp_path: Path) -> None:
    shots = Path(os.environ.get("SECFLOW_WEBUI_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    db, log = tmp_path / "temporal.db", tmp_path / "temporal.log"
    port, ui_port = free_port(), free_port()
    marker = f"mk{uuid.uuid4().hex[:10]}"
    task_queue = f"webui-{uuid.uuid4().hex[:8]}"
    workflow_id = f"webui-{uuid.uuid4().hex[:8]}"
    page = f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{workflow_id}"

    target = ScriptedServer(lambda n, path: Reply(503, {}) if path.endswith("-down") else Reply(200, {}))
    try:
        with ui_server(db, log, port, ui_port) as address:
            settings = load_settings({**os.environ, "TEMPORAL_ADDRESS": address, "SECFLOW_TASK_QUEUE": task_queue})
            client = await connect(settings)
            spec = make_spec(
                [{"url": f"{target.url}{marker}/"}, {"url": f"{target.url}{marker}-down"}],
                [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}}],
            )
            async with build_worker(client, settings):
                handle = await start(client, spec, task_queue, workflow_id=workflow_id)
                await final_status(handle)
            without = await page_text(page, shots / "webui-without-codec.png", "Encoded failure")
    finally:
        target.close()
    assert workflow_id in without
    assert marker not in without
    # The UI shows the input as base64 ciphertext and the failure as "Encoded failure" with
    # its encrypted attributes.
    assert "Encoded failure" in without and "YmluYXJ5L2VuY3J5cHRlZA==" in without  # base64 of binary/encrypted

    codec = CodecServer("--cors-origin", f"http://127.0.0.1:{ui_port}")
    try:
        with ui_server(db, log, port, ui_port, codec_endpoint=codec.url):
            with_codec = await page_text(page, shots / "webui-with-codec.png", marker)
    finally:
        codec.stop()
    assert marker in with_codec  # the targets in the input and the result, decrypted in the browser
    assert "YmluYXJ5L2VuY3J5cHRlZA==" not in with_codec  # nothing left encrypted on the page
    assert "503 Service Unavailable" in with_codec  # the failure message, decrypted from its encoded attributes
