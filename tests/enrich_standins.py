"""Local stand-ins on 127.0.0.1 for the three CVE-enrichment services: real wire formats,
shipped data (`tests/fixtures/enrich/`), scripted faults, NVD's public rate limit.

- `NvdStandin`: NVD CVE API 2.0, ``GET /rest/json/cves/2.0?cveId=CVE-...``
  (https://nvd.nist.gov/developers/vulnerabilities). An unknown id answers 200 with
  ``totalResults: 0``; a missing or malformed ``cveId``, or a parameter NVD does not know,
  answers 404 with an empty body and the reason in a ``message`` response header (that
  is what NVD does for bad parameters). The API key travels in the ``apiKey`` request
  header; real NVD answers an invalid key with **404** as well (not 401), which is the
  default here (`invalid_key_status`). The public rate limit is enforced: 5 requests in
  any rolling 30 s without a key, 50 with a valid one; beyond it NVD answers **403**,
  and so does the stand-in, recording the request in `.throttled` so a test can assert
  that a client was never throttled.
- `EpssStandin`: FIRST EPSS API, ``GET /data/v1/epss?cve=CVE-a,CVE-b&offset=&limit=``
  (https://www.first.org/epss/api): batched, comma-separated; CVEs without a score are
  absent from ``data``; ``total`` counts matches, ``offset``/``limit`` page them (default
  limit 100, like the real API).
- `KevStandin`: CISA's catalog at ``/feeds/known_exploited_vulnerabilities.json`` (or `path`).

Faults are scripted per stand-in and consumed one per request, in order (after the rate
limit check: a throttled request consumes none); when the script is empty the server
answers normally:

    NvdStandin(faults=[Fault(503)] * 3)          # "under load" for the first three
    Fault(429, retry_after="2")                  # with Retry-After
    Fault.hang(5)                                # accept, say nothing for 5 s, then drop
    Fault.truncated()                            # 200, first half of the real body
    Fault.raw(b"<html>oops</html>")              # 200 with these bytes (not JSON)
    Fault(200, body={"unexpected": "shape"})     # valid JSON of the wrong shape
    Fault(401), Fault.passthrough()

An outage answers every request with one fault for a while, without consuming the
script: ``nvd.outage(Fault(503), seconds=2.5)`` starts at the next request the stand-in
sees and lasts `seconds` on its clock (`.outage_requests` are the requests it answered).

Every request is recorded (`Request`: method, path, query, headers, time from `clock`).
`clock` (default `time.monotonic`) drives the rolling window, so a test can move time by
hand instead of sleeping.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "enrich"
CVE_ID = re.compile(r"CVE-\d{4}-\d{4,}")

NVD_WINDOW_S = 30.0
NVD_LIMIT_PUBLIC = 5
NVD_LIMIT_WITH_KEY = 50


@dataclass
class Fault:
    status: int = 503
    body: Any = None
    retry_after: str | None = None
    truncate: bool = False
    hang_s: float = 0.0
    raw_body: bytes | None = None

    @classmethod
    def truncated(cls) -> "Fault":
        return cls(status=200, truncate=True)

    @classmethod
    def raw(cls, body: bytes, status: int = 200) -> "Fault":
        """Answer `status` with exactly these bytes as the body (e.g. a proxy's HTML page)."""
        return cls(status=status, raw_body=body)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> "Fault":
        """Read the request, answer nothing for `seconds` (or until close()), drop the connection."""
        return cls(status=0, hang_s=seconds)

    @classmethod
    def passthrough(cls) -> "Fault":
        """Answer this request normally (to place a fault on a later request)."""
        return cls(status=0)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    time: float


@dataclass
class Reply:
    status: int
    doc: Any = None  # None: empty body
    headers: dict[str, str] = field(default_factory=dict)


class _Standin:
    """One ThreadingHTTPServer on 127.0.0.1:0; subclasses implement `answer()`."""

    def __init__(self, faults: list[Fault] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = list(faults or [])
        self.clock = clock
        self.requests: list[Request] = []
        self.probes: list[Request] = []  # recovery-validation health probes (activities/validation.py)
        self.outage_requests: list[Request] = []
        self._outage: tuple[Fault, float] | None = None  # (fault, seconds), until it starts
        self._outage_until: float | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, delayed ACKs cost
                # ~40 ms per keep-alive request.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                split = urlsplit(self.path)
                request = Request(
                    "GET", split.path, parse_qs(split.query, keep_blank_values=True), dict(self.headers.items()), standin.clock()
                )
                if self.headers.get("X-SecFlow-Probe"):  # a recovery validation's health probe:
                    with standin._lock:  # not API traffic: recorded apart, touches no fault script
                        standin.probes.append(request)
                    outage = standin._outage
                    if outage is not None and (standin._outage_until is None or request.time < standin._outage_until):
                        return self._fault(outage[0])  # still down
                    return self._send(Reply(404, {"message": "not found"}))
                with standin._lock:
                    standin.requests.append(request)
                outage = standin._outage_fault(request)
                if outage is not None:
                    return self._fault(outage)
                reply = standin.gate(request)
                if reply is None:
                    fault = standin._next_fault()
                    if fault is not None and fault.hang_s:
                        standin._closing.wait(fault.hang_s)
                        self.close_connection = True
                        return
                    if fault is not None and not fault.truncate:
                        return self._fault(fault)
                    else:
                        reply = standin.answer(request)
                        if fault is not None:
                            return self._send(reply, truncate=True)
                self._send(reply)

            def _fault(self, fault: Fault) -> None:
                if fault.hang_s:
                    standin._closing.wait(fault.hang_s)
                    self.close_connection = True
                    return
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                if fault.raw_body is not None:
                    return self._send(Reply(fault.status, None, headers), raw=fault.raw_body)
                body = fault.body if fault.body is not None else {"message": f"scripted HTTP {fault.status}"}
                self._send(Reply(fault.status, body, headers))

            def _send(self, reply: Reply, *, truncate: bool = False, raw: bytes | None = None) -> None:
                data = b"" if reply.doc is None else json.dumps(reply.doc, separators=(",", ":")).encode()
                if raw is not None:
                    data = raw
                if truncate:
                    data = data[: len(data) // 2]
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def outage(self, fault: Fault, seconds: float) -> None:
        """Answer every request with `fault` for `seconds`, from the next request on."""
        with self._lock:
            self._outage, self._outage_until = (fault, seconds), None

    def _outage_fault(self, request: Request) -> Fault | None:
        with self._lock:
            if self._outage is None:
                return None
            fault, seconds = self._outage
            if self._outage_until is None:
                self._outage_until = request.time + seconds
            if request.time >= self._outage_until:
                self._outage = None
                return None
            self.outage_requests.append(request)
            return fault

    def _next_fault(self) -> Fault | None:
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
        return None if fault is not None and fault.status == 0 and not fault.hang_s else fault

    def gate(self, request: Request) -> Reply | None:
        """A reply that comes before faults and data (rate limits); None to go on."""
        return None

    def answer(self, request: Request) -> Reply:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "_Standin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NvdStandin(_Standin):
    PATH = "/rest/json/cves/2.0"

    def __init__(
        self,
        faults: list[Fault] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        api_key: str | None = None,
        invalid_key_status: int = 404,  # what real NVD answers for a wrong apiKey
        window_s: float = NVD_WINDOW_S,
        limit_public: int = NVD_LIMIT_PUBLIC,
        limit_with_key: int = NVD_LIMIT_WITH_KEY,
        fixtures: Path = FIXTURES,
    ) -> None:
        doc = json.loads((fixtures / "nvd.json").read_text())
        self.records: dict[str, dict[str, Any]] = {v["cve"]["id"]: v for v in doc["vulnerabilities"]}
        self.api_key = api_key
        self.invalid_key_status = invalid_key_status
        self.window_s, self.limit_public, self.limit_with_key = window_s, limit_public, limit_with_key
        self.throttled: list[Request] = []
        self._accepted: dict[bool, list[float]] = {False: [], True: []}  # keyed: times in the window
        super().__init__(faults, clock)

    def gate(self, request: Request) -> Reply | None:
        key = next((v for k, v in request.headers.items() if k.lower() == "apikey"), None)
        if key is not None and key != self.api_key:
            return Reply(self.invalid_key_status, None, {"message": "Invalid apiKey"})
        keyed = key is not None
        limit = self.limit_with_key if keyed else self.limit_public
        with self._lock:
            times = [t for t in self._accepted[keyed] if request.time - t < self.window_s]
            if len(times) >= limit:
                self._accepted[keyed] = times
                self.throttled.append(request)
                return Reply(403, None, {"message": "Request forbidden by administrative rules."})
            times.append(request.time)
            self._accepted[keyed] = times
        return None

    def answer(self, request: Request) -> Reply:
        if request.path != self.PATH:
            return Reply(404, None, {"message": "Not Found"})
        unknown = set(request.query) - {"cveId"}
        ids = request.query.get("cveId", [])
        if unknown or len(ids) != 1 or not CVE_ID.fullmatch(ids[0]):
            return Reply(404, None, {"message": "Invalid cveId parameter" if not unknown else "Invalid parameter"})
        found = [self.records[ids[0]]] if ids[0] in self.records else []
        return Reply(
            200,
            {
                "resultsPerPage": len(found),
                "startIndex": 0,
                "totalResults": len(found),
                "format": "NVD_CVE",
                "version": "2.0",
                "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
                "vulnerabilities": found,
            },
        )


class EpssStandin(_Standin):
    PATH = "/data/v1/epss"
    DEFAULT_LIMIT = 100

    def __init__(
        self, faults: list[Fault] | None = None, clock: Callable[[], float] = time.monotonic, *, fixtures: Path = FIXTURES
    ) -> None:
        doc = json.loads((fixtures / "epss.json").read_text())
        self.rows: dict[str, dict[str, Any]] = {r["cve"]: r for r in doc["data"]}
        super().__init__(faults, clock)

    def answer(self, request: Request) -> Reply:
        if request.path != self.PATH:
            return Reply(404, {"status": "error", "status-code": 404, "message": "Not Found"})
        try:
            offset = int(request.query.get("offset", ["0"])[0])
            limit = int(request.query.get("limit", [str(self.DEFAULT_LIMIT)])[0])
        except ValueError:
            return Reply(400, {"status": "error", "status-code": 400, "message": "offset and limit must be integers"})
        if "cve" in request.query:
            wanted = [c.strip() for v in request.query["cve"] for c in v.split(",") if c.strip()]
            matches = [self.rows[c] for c in dict.fromkeys(wanted) if c in self.rows]
        else:
            matches = list(self.rows.values())
        return Reply(
            200,
            {
                "status": "OK",
                "status-code": 200,
                "version": "1.0",
                "access": "public",
                "total": len(matches),
                "offset": offset,
                "limit": limit,
                "data": matches[offset : offset + limit],
            },
        )

    def batches(self) -> list[list[str]]:
        """The CVE lists of every recorded request (to assert on batching)."""
        with self._lock:
            return [[c for v in r.query.get("cve", []) for c in v.split(",")] for r in self.requests]


class KevStandin(_Standin):
    def __init__(
        self,
        faults: list[Fault] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        path: str = "/feeds/known_exploited_vulnerabilities.json",
        fixtures: Path = FIXTURES,
    ) -> None:
        self.path = path
        self.catalog: dict[str, Any] = json.loads((fixtures / "kev.json").read_text())
        super().__init__(faults, clock)

    @property
    def feed_url(self) -> str:
        return self.url + self.path

    def answer(self, request: Request) -> Reply:
        if request.path != self.path:
            return Reply(404, None)
        return Reply(200, self.catalog)
