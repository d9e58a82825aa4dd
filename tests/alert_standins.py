"""Local stand-ins on 127.0.0.1 for the alert channels: real wire formats, recorded traffic,
scripted faults.

- `SlackStandin`: a Slack incoming webhook at ``path`` (``/services/T.../B.../...``).
  A JSON body with ``text`` and/or ``blocks`` answers 200 ``ok`` (text/html, as Slack
  does); no text nor blocks -> 400 ``no_text``; malformed blocks (not a list of objects
  with a ``type``, more than 50, a header over 150 characters) -> 400 ``invalid_blocks``;
  not JSON -> 400 ``invalid_payload``; another path -> 404 ``no_service``.
- `WebhookStandin`: accepts any POST with 200 and records it; verifies nothing (the
  tests check the HMAC signature the way a receiver would).
- `PagerDutyStandin`: Events API v2, ``POST /v2/enqueue``: 202
  ``{"status":"success","message":"Event processed","dedup_key":...}``; an invalid event
  (routing_key not 32 characters, unknown event_action, dedup_key missing on
  acknowledge/resolve or over 255 characters, trigger without payload.summary (<= 1024),
  payload.source or a payload.severity among critical/error/warning/info) -> 400
  ``{"status":"invalid event","message":"Event object is invalid","errors":[...]}``.
- `JiraStandin`: REST API v2: ``POST /rest/api/2/issue`` -> 201 ``{"id","key","self"}``;
  ``GET /rest/api/2/search?jql=... labels = "x"``; ``POST .../issue/{key}/comment``;
  ``GET``/``POST .../issue/{key}/transitions``; 401 without valid Basic or Bearer auth;
  404 for an unknown issue; 400 with Jira's ``{"errorMessages","errors"}`` for bad fields.
- `SmtpStandin`: aiosmtpd with STARTTLS required, AUTH LOGIN/PLAIN only after STARTTLS,
  one user; records every message with whether it came over TLS and how it authenticated.
  `make_cert()` writes a self-signed certificate for 127.0.0.1 with the openssl CLI.

HTTP faults are consumed one per request, in order: ``Fault(503)``, ``Fault(429,
retry_after="1")``, ``Fault.hang(3)`` (read the request, answer nothing, drop it).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Fault:
    status: int = 503
    body: str = "scripted failure"
    retry_after: str | None = None
    hang_s: float = 0.0

    @classmethod
    def hang(cls, seconds: float = 30.0) -> "Fault":
        return cls(status=0, hang_s=seconds)


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    time: float

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list -> JSON; str -> text; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class HttpStandin:
    """A ThreadingHTTPServer on 127.0.0.1:0; subclasses implement `answer()`."""

    def __init__(self, faults: list[Fault] | None = None) -> None:
        self.faults = list(faults or [])
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Received(method, split.path, parse_qs(split.query), dict(self.headers.items()), body, time.monotonic())
                with standin._lock:
                    standin.received.append(req)
                    fault = standin.faults.pop(0) if standin.faults else None
                if fault is not None and fault.hang_s:
                    standin._closing.wait(fault.hang_s)
                    self.close_connection = True
                    return
                if fault is not None:
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return self._send(Reply(fault.status, fault.body, headers, "text/plain"))
                self._send(standin.answer(req))

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def _send(self, reply: Reply) -> None:
                if reply.body is None:
                    data = b""
                elif isinstance(reply.body, str):
                    data = reply.body.encode()
                else:
                    data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if data:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, req: Received) -> Reply:
        raise NotImplementedError

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received]

    def close(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------
class SlackStandin(HttpStandin):
    def __init__(self, path: str = "/services/T0SECFLOW/B0ALERTS/xoxwebhooksecret0123456789", faults: list[Fault] | None = None) -> None:
        self.path = path
        super().__init__(faults)

    @property
    def webhook_url(self) -> str:
        return self.url + self.path

    def delivered(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.received if r.path == self.path and self._valid(r) is None]

    def _valid(self, req: Received) -> str | None:
        try:
            doc = req.json()
        except ValueError:
            return "invalid_payload"
        if not isinstance(doc, dict):
            return "invalid_payload"
        if not doc.get("text") and not doc.get("blocks"):
            return "no_text"
        blocks = doc.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, list) or len(blocks) > 50:
                return "invalid_blocks"
            for b in blocks:
                if not isinstance(b, dict) or "type" not in b:
                    return "invalid_blocks"
                if b["type"] == "header" and len(b.get("text", {}).get("text", "")) > 150:
                    return "invalid_blocks"
                if b["type"] == "section" and len(b.get("fields") or []) > 10:
                    return "invalid_blocks"
        return None

    def answer(self, req: Received) -> Reply:
        if req.method != "POST" or req.path != self.path:
            return Reply(404, "no_service", content_type="text/html")
        problem = self._valid(req)
        if problem:
            return Reply(400, problem, content_type="text/html")
        return Reply(200, "ok", content_type="text/html")


class WebhookStandin(HttpStandin):
    def answer(self, req: Received) -> Reply:
        return Reply(200, {"received": True})


# --------------------------------------------------------------------------------------
PD_SEVERITIES = {"critical", "error", "warning", "info"}


class PagerDutyStandin(HttpStandin):
    def events(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.received if r.path == "/v2/enqueue" and self._errors(r) == []]

    def _errors(self, req: Received) -> list[str]:
        try:
            doc = req.json()
        except ValueError:
            return ["Event object is not valid JSON"]
        if not isinstance(doc, dict):
            return ["Event object is not a JSON object"]
        errors = []
        key = doc.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        action = doc.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')")
        dedup = doc.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and not dedup:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if action == "trigger":
            payload = doc.get("payload")
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or not an object")
            else:
                summary = payload.get("summary")
                if not isinstance(summary, str) or not summary or len(summary) > 1024:
                    errors.append("'payload.summary' is missing or longer than 1024 characters")
                if not isinstance(payload.get("source"), str) or not payload.get("source"):
                    errors.append("'payload.source' is missing or blank")
                if payload.get("severity") not in PD_SEVERITIES:
                    errors.append("'payload.severity' is invalid (must be one of critical, error, warning, info)")
                details = payload.get("custom_details")
                if details is not None and not isinstance(details, dict):
                    errors.append("'payload.custom_details' must be an object")
        return errors

    def answer(self, req: Received) -> Reply:
        if req.method != "POST" or req.path != "/v2/enqueue":
            return Reply(404, {"status": "not found"})
        errors = self._errors(req)
        if errors:
            return Reply(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})
        doc = req.json()
        dedup = doc.get("dedup_key") or f"generated-{len(self.received)}"
        return Reply(202, {"status": "success", "message": "Event processed", "dedup_key": dedup})


# --------------------------------------------------------------------------------------
JIRA_TRANSITIONS = [
    {"id": "11", "name": "To Do", "to": {"name": "To Do"}},
    {"id": "21", "name": "In Progress", "to": {"name": "In Progress"}},
    {"id": "31", "name": "Done", "to": {"name": "Done"}},
]


@dataclass
class JiraIssue:
    id: str
    key: str
    fields: dict[str, Any]
    status: str = "To Do"
    comments: list[str] = field(default_factory=list)


class JiraStandin(HttpStandin):
    def __init__(
        self, project: str = "SEC", *, email: str = "bot@example.com", token: str = "jira-api-token-0123456789",
        issue_types: tuple[str, ...] = ("Task", "Bug"), faults: list[Fault] | None = None,
    ) -> None:
        self.project = project
        self.email, self.token = email, token
        self.issue_types = issue_types
        self.issues: dict[str, JiraIssue] = {}
        super().__init__(faults)

    def _authorised(self, req: Received) -> bool:
        auth = req.header("Authorization") or ""
        basic = "Basic " + base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        return auth in (basic, f"Bearer {self.token}")

    def answer(self, req: Received) -> Reply:
        if not self._authorised(req):
            return Reply(401, {"errorMessages": ["You are not authenticated. Authentication required to perform this operation."], "errors": {}})
        path = req.path
        if req.method == "POST" and path == "/rest/api/2/issue":
            return self._create(req)
        if req.method == "GET" and path == "/rest/api/2/search":
            jql = (req.query.get("jql") or [""])[0]
            m = re.search(r'labels\s*=\s*"?([^"\s]+)"?', jql)
            label = m.group(1) if m else None
            found = [i for i in self.issues.values() if label is None or label in i.fields.get("labels", [])]
            issues = [{"id": i.id, "key": i.key, "self": f"{self.url}/rest/api/2/issue/{i.id}"} for i in found]
            return Reply(200, {"startAt": 0, "maxResults": 50, "total": len(issues), "issues": issues})
        m = re.fullmatch(r"/rest/api/2/issue/([A-Z][A-Z0-9_]*-\d+)(/comment|/transitions)?", path)
        if not m:
            return Reply(404, {"errorMessages": ["Not found"], "errors": {}})
        issue = self.issues.get(m.group(1))
        if issue is None:
            return Reply(404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})
        sub = m.group(2)
        if sub == "/comment" and req.method == "POST":
            body = (req.json() or {}).get("body")
            if not isinstance(body, str) or not body.strip():
                return Reply(400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}})
            issue.comments.append(body)
            cid = str(10000 + len(issue.comments))
            return Reply(201, {"id": cid, "body": body, "self": f"{self.url}/rest/api/2/issue/{issue.id}/comment/{cid}"})
        if sub == "/transitions" and req.method == "GET":
            return Reply(200, {"expand": "transitions", "transitions": JIRA_TRANSITIONS})
        if sub == "/transitions" and req.method == "POST":
            doc = req.json() or {}
            tid = str((doc.get("transition") or {}).get("id", ""))
            match = next((t for t in JIRA_TRANSITIONS if t["id"] == tid), None)
            if match is None:
                return Reply(400, {"errorMessages": [f"Transition id '{tid}' is not valid for this issue."], "errors": {}})
            for c in (doc.get("update") or {}).get("comment", []):
                issue.comments.append(c["add"]["body"])
            issue.status = match["to"]["name"]
            return Reply(204)
        if sub is None and req.method == "GET":
            return Reply(200, {"id": issue.id, "key": issue.key, "fields": {**issue.fields, "status": {"name": issue.status}}})
        return Reply(405, {"errorMessages": ["Method not allowed"], "errors": {}})

    def _create(self, req: Received) -> Reply:
        try:
            fields = req.json()["fields"]
        except (ValueError, KeyError, TypeError):
            return Reply(400, {"errorMessages": ["Can not deserialize the request body"], "errors": {}})
        errors = {}
        if (fields.get("project") or {}).get("key") != self.project:
            errors["project"] = "valid project is required"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip() or len(summary) > 255 or "\n" in summary:
            errors["summary"] = "Summary must be less than 255 characters, on one line."
        if (fields.get("issuetype") or {}).get("name") not in self.issue_types:
            errors["issuetype"] = "Specify a valid issue type"
        if any(" " in label for label in fields.get("labels") or []):
            errors["labels"] = "Labels cannot contain spaces"
        if errors:
            return Reply(400, {"errorMessages": [], "errors": errors})
        with self._lock:
            number = len(self.issues) + 1
            issue = JiraIssue(id=str(10000 + number), key=f"{self.project}-{number}", fields=fields)
            self.issues[issue.key] = issue
        return Reply(201, {"id": issue.id, "key": issue.key, "self": f"{self.url}/rest/api/2/issue/{issue.id}"})


# --------------------------------------------------------------------------------------
def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    auth_mechanism: str | None
    login: str | None


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before the controller's self-test connects.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpStandin:
    """An SMTP server requiring STARTTLS, then AUTH (LOGIN or PLAIN) as `user`/`password`."""

    def __init__(self, cert: Path, key: Path, *, user: str = "alerts@example.com", password: str = "smtp-pass-0123456789") -> None:
        self.user, self.password = user, password
        self.messages: list[Mail] = []
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, login, ok)
        standin = self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                standin.messages.append(
                    Mail(
                        mail_from=envelope.mail_from,
                        rcpt_tos=list(envelope.rcpt_tos),
                        data=envelope.original_content or envelope.content,
                        tls=session.ssl is not None,
                        auth_mechanism=getattr(session, "secflow_mechanism", None),
                        login=getattr(session, "secflow_login", None),
                    )
                )
                return "250 Message accepted for delivery"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == standin.user
                and auth_data.password.decode() == standin.password
            )
            standin.auth_attempts.append((mechanism, auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "", ok))
            if ok:
                session.secflow_mechanism = mechanism
                session.secflow_login = auth_data.login.decode()
            return AuthResult(success=ok, handled=False)

        self.controller = _Controller(
            Handler(),
            hostname="127.0.0.1",
            port=0,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )
        self.controller.start()
        self.port = self.controller.port

    def close(self) -> None:
        self.controller.stop()

    def __enter__(self) -> "SmtpStandin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
