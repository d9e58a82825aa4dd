"""A local stand-in for api.osv.dev on 127.0.0.1: the real wire format, shipped data, scripted faults.

Speaks the two endpoints SecFlow uses, as documented at https://google.github.io/osv.dev/api/:
- ``POST /v1/querybatch`` with ``{"queries": [{"package": {"name", "ecosystem"}, "version",
  "page_token"?}]}`` -> ``{"results": [{"vulns": [{"id", "modified"}], "next_page_token"?} | {}]}``;
- ``GET /v1/vulns/{id}`` -> the full OSV record, or 404 ``{"code": 5, "message": "Bug not found."}``.

Records come from ``tests/fixtures/osv/*.json`` (real advisories). A query matches a record
when the PyPI package name (PEP 503 normalised) is affected and the version is in the
record's ``versions`` list or inside one of its ECOSYSTEM ranges.

Faults are scripted per endpoint (``"querybatch"`` or ``"vulns"``) and consumed one per
request, in order; when the script is empty the server answers normally:

    OsvStandin(faults={"querybatch": [Fault(503), Fault(429, retry_after="1")]})
    Fault.truncated()   # 200 with the first half of the real JSON body (Content-Length matching)
    Fault.passthrough() # answer this one normally
    Fault(401, body={"code": 16, "message": "unauthenticated"})
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

FIXTURES = Path(__file__).parent / "fixtures" / "osv"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _v(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass
class Fault:
    status: int = 503
    body: Any = None
    retry_after: str | None = None
    truncate: bool = False

    @classmethod
    def truncated(cls) -> "Fault":
        return cls(status=200, truncate=True)

    @classmethod
    def passthrough(cls) -> "Fault":
        """Answer this request normally (to place a fault on a later request)."""
        return cls(status=0)


@dataclass
class Request:
    method: str
    path: str
    body: Any = None


@dataclass
class OsvStandin:
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    page_size: int | None = None  # vulns per query per page; None: all at once
    fixtures: Path = FIXTURES

    def __post_init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.fixtures.glob("*.json")):
            record = json.loads(path.read_text())
            self.records[record["id"]] = record
        self.requests: list[Request] = []
        self.probes: list[Request] = []  # recovery-validation health probes (activities/validation.py)
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                standin._log(Request("POST", self.path, body))
                if self.path != "/v1/querybatch":
                    return self._send(404, {"code": 5, "message": "Not Found"})
                fault = standin._next_fault("querybatch")
                if fault and not fault.truncate:
                    return self._fault(fault)
                if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
                    return self._send(400, {"code": 3, "message": "Invalid query."})
                if len(body["queries"]) > 1000:
                    return self._send(400, {"code": 3, "message": "Too many queries."})
                doc = {"results": [standin._answer(q) for q in body["queries"]]}
                self._send(200, doc, truncate=bool(fault and fault.truncate))

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-SecFlow-Probe"):  # a recovery validation's health probe:
                    standin.probes.append(Request("GET", self.path))  # not API traffic, no fault
                    return self._send(404, {"code": 5, "message": "Not Found"})
                standin._log(Request("GET", self.path))
                m = re.fullmatch(r"/v1/vulns/([^/?]+)", self.path)
                if not m:
                    return self._send(404, {"code": 5, "message": "Not Found"})
                fault = standin._next_fault("vulns")
                if fault and not fault.truncate:
                    return self._fault(fault)
                record = standin.records.get(m.group(1))
                if record is None:
                    return self._send(404, {"code": 5, "message": "Bug not found."})
                self._send(200, record, truncate=bool(fault and fault.truncate))

            def _fault(self, fault: Fault) -> None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                body = fault.body if fault.body is not None else {"code": 14, "message": f"scripted HTTP {fault.status}"}
                self._send(fault.status, body, headers=headers)

            def _send(self, status: int, doc: Any, *, truncate: bool = False, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                if truncate:
                    data = data[: len(data) // 2]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # --- behaviour --------------------------------------------------------------------
    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            script = self.faults.get(endpoint)
            fault = script.pop(0) if script else None
            return None if fault is not None and fault.status == 0 else fault

    def matching(self, name: str, version: str) -> list[dict[str, Any]]:
        wanted, have = _normalise(name), _v(version)
        found = []
        for record in self.records.values():
            for affected in record.get("affected", []):
                package = affected.get("package", {})
                if package.get("ecosystem") != "PyPI" or _normalise(package.get("name", "")) != wanted:
                    continue
                if version in affected.get("versions", []) or (have is not None and self._in_ranges(have, affected)):
                    found.append(record)
                    break
        return sorted(found, key=lambda r: r["id"])

    @staticmethod
    def _in_ranges(version: Version, affected: dict[str, Any]) -> bool:
        for rng in affected.get("ranges", []):
            if rng.get("type") != "ECOSYSTEM":
                continue
            low: Version | None = None
            for event in rng.get("events", []):
                if "introduced" in event:
                    low = Version("0") if event["introduced"] == "0" else _v(event["introduced"])
                elif "fixed" in event and low is not None:
                    fixed = _v(event["fixed"])
                    if fixed is not None and low <= version < fixed:
                        return True
                    low = None
        return False

    def _answer(self, query: dict[str, Any]) -> dict[str, Any]:
        package = query.get("package") or {}
        if package.get("ecosystem") != "PyPI":
            return {}
        vulns = self.matching(str(package.get("name", "")), str(query.get("version", "")))
        start = int(query.get("page_token") or 0)
        end = len(vulns) if self.page_size is None else start + self.page_size
        page = [{"id": r["id"], "modified": r["modified"]} for r in vulns[start:end]]
        result: dict[str, Any] = {"vulns": page} if page else {}
        if end < len(vulns):
            result["next_page_token"] = str(end)
        return result

    # --- test helpers -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, prefix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and r.path.startswith(prefix))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
