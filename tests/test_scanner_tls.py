"""The `tls` tool against real local HTTPS servers with certificates made at test time.

Certificates come from the `openssl` CLI (the `cryptography` package is not a dependency):
a test CA, leaves it signed (good, expired, not yet valid, expiring soon), a self-signed
leaf and a self-signed 1024-bit leaf for another name. Servers are stdlib `ssl`-wrapped
HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.scanners.tls import parse_certificate, probe_tls
from secflow.store import open_store
from tests.helpers import target_states, final_status, make_spec, start
from tests.servers import closed_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test certificates")

LEAF_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Certs:
    def __init__(self, d: Path) -> None:
        self.dir = d
        (d / "db").mkdir()
        (d / "db" / "index.txt").write_text("")
        (d / "db" / "serial").write_text("1000\n")
        (d / "ca.cnf").write_text(
            "[ca]\ndefault_ca = tca\n[tca]\ndatabase = db/index.txt\nnew_certs_dir = db\nserial = db/serial\n"
            "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
        )
        (d / "leaf.ext").write_text(LEAF_EXT)
        _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
             "-subj", "/CN=SecFlow Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        self.ca = d / "ca.pem"
        self.good = self._signed("good", "-days", "365")
        self.expired = self._signed("expired", "-startdate", "20190101000000Z", "-enddate", "20200101000000Z")
        self.not_yet = self._signed("notyet", "-startdate", "20400101000000Z", "-enddate", "20410101000000Z")
        self.expiring = self._signed("expiring", "-days", "10")
        self.self_signed = self._self_signed("selfsigned", "rsa:2048", "DNS:localhost,IP:127.0.0.1")
        self.weak = self._self_signed("weak", "rsa:1024", "DNS:example.invalid")

    def _signed(self, name: str, *validity: str) -> tuple[Path, Path]:
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", "/CN=localhost", cwd=self.dir)
        _run("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", f"{name}.csr",
             "-out", f"{name}.pem", "-extfile", "leaf.ext", "-notext", *validity, cwd=self.dir)
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def _self_signed(self, name: str, key: str, san: str) -> tuple[Path, Path]:
        _run("req", "-x509", "-newkey", key, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "365",
             "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}", cwd=self.dir)
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


class TlsServer:
    """An HTTPS server on 127.0.0.1; the TLS handshake runs in the request's own thread."""

    def __init__(self, cert: tuple[Path, Path], *, versions: tuple[str, str] | None = None, ciphers: str | None = None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if ciphers:
            ctx.set_ciphers(ciphers)  # before the key: SECLEVEL also decides which keys load
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        if versions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = getattr(ssl.TLSVersion, versions[0])
                ctx.maximum_version = getattr(ssl.TLSVersion, versions[1])

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                try:
                    request.settimeout(5)
                    tls = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # a probe the server refuses: that is the point of the probe
                try:
                    self.RequestHandlerClass(tls, client_address, self)
                except OSError:
                    pass
                finally:
                    tls.close()

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def serve():
    servers: list[TlsServer] = []

    def make(cert: tuple[Path, Path], **kwargs: object) -> TlsServer:
        server = TlsServer(cert, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def rules(report) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.rule_id for f in report.findings}


def probe(server: TlsServer, ca: Path | None = None):  # type: ignore[no-untyped-def]
    return probe_tls("127.0.0.1", server.port, timeout=5, ca_file=str(ca) if ca else None, expiry_days=30, target=server.url)


def _openssl_can_speak(version: str) -> bool:
    """Whether this OpenSSL completes a handshake at `version` with itself (SECLEVEL=0)."""
    if not getattr(ssl, f"HAS_{version}", False):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
        return True
    except (ssl.SSLError, ValueError):
        return False


# --- direct probes (the checks themselves) -----------------------------------------------
def test_certificate_parser_reads_dates_and_key(certs: Certs) -> None:
    der = ssl.PEM_cert_to_DER_cert(certs.expired[0].read_text())
    info = parse_certificate(der)
    assert (info.not_before.year, info.not_after.year) == (2019, 2020)
    assert (info.key_type, info.key_bits) == ("rsa", 2048)
    assert info.subject != info.issuer
    weak = parse_certificate(ssl.PEM_cert_to_DER_cert(certs.weak[0].read_text()))
    assert (weak.key_type, weak.key_bits) == ("rsa", 1024) and weak.subject == weak.issuer


def test_good_certificate_from_the_test_ca_is_clean(certs: Certs, serve) -> None:
    report = probe(serve(certs.good), certs.ca)
    assert rules(report) == set(), [f.title for f in report.findings]
    assert "TLSv1.2" in report.accepted and "TLSv1.3" in report.accepted


def test_good_certificate_without_its_ca_is_untrusted(certs: Certs, serve) -> None:
    assert rules(probe(serve(certs.good))) == {"tls-cert-untrusted"}


def test_dates_weak_key_and_hostname(certs: Certs, serve) -> None:
    assert rules(probe(serve(certs.not_yet), certs.ca)) == {"tls-cert-not-yet-valid"}
    assert rules(probe(serve(certs.expiring), certs.ca)) == {"tls-cert-expiring"}
    weak = probe(serve(certs.weak, ciphers="DEFAULT:@SECLEVEL=0"))
    assert rules(weak) == {"tls-cert-weak-key", "tls-cert-self-signed", "tls-cert-hostname-mismatch"}
    by_rule = {f.rule_id: f for f in weak.findings}
    assert by_rule["tls-cert-weak-key"].cwe == ["CWE-326"]
    assert by_rule["tls-cert-hostname-mismatch"].cwe == ["CWE-297"]
    assert all(f.location == f"127.0.0.1:{f.target.rsplit(':', 1)[1].rstrip('/')}" for f in weak.findings)


def test_legacy_protocols_are_found(certs: Certs, serve) -> None:
    if not (_openssl_can_speak("TLSv1") and _openssl_can_speak("TLSv1_1")):
        pytest.skip("the local OpenSSL cannot offer TLS 1.0/1.1 even at SECLEVEL=0")
    server = serve(certs.good, versions=("TLSv1", "TLSv1_1"), ciphers="DEFAULT:@SECLEVEL=0")
    report = probe(server, certs.ca)
    assert report.accepted == ["TLSv1", "TLSv1.1"]
    assert rules(report) == {"tls-protocol-tls1.0", "tls-protocol-tls1.1", "tls-no-modern-protocol"}


def test_weak_cipher_suites_are_found_where_openssl_offers_them(certs: Certs, serve) -> None:
    server = serve(certs.good, versions=("TLSv1_2", "TLSv1_2"), ciphers="ALL:eNULL:aNULL:@SECLEVEL=0")
    report = probe(server, certs.ca)
    found = rules(report)
    assert {"tls-cipher-null", "tls-cipher-anon"} <= found, [f.evidence for f in report.findings]
    # What this OpenSSL cannot offer is reported as not testable, never as a pass.
    for name in ("RC4", "3DES", "EXPORT"):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(f"{name}:@SECLEVEL=0")
        except ssl.SSLError:
            assert name in report.not_testable


# --- in a real workflow -------------------------------------------------------------------
async def test_workflow_expired_self_signed_and_good_with_ca(client: Client, worker: str, certs: Certs, serve) -> None:
    good, expired, self_signed = serve(certs.good), serve(certs.expired), serve(certs.self_signed)
    spec = make_spec(
        [{"url": good.url}, {"url": expired.url}, {"url": self_signed.url}, {"url": "http://127.0.0.1:1/"}],
        [{"id": "tls", "kind": "dast", "tool": "tls", "options": {"ca_file": str(certs.ca)}}],
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "completed", status.reason
    findings = [f for f in open_store().list_findings(handle.id) if f.tool == "tls"]
    per_target: dict[str, set[str]] = {}
    for f in findings:
        per_target.setdefault(f.target, set()).add(f.rule_id)
    assert good.url not in per_target
    assert per_target[expired.url] == {"tls-cert-expired"}
    assert per_target[self_signed.url] == {"tls-cert-self-signed"}
    assert "http://127.0.0.1:1/" not in per_target, "http URLs have no TLS to check"
    expired_finding = next(f for f in findings if f.target == expired.url)
    assert expired_finding.location == f"127.0.0.1:{expired.port}"
    assert expired_finding.cwe == ["CWE-298"] and "2020-01-01" in expired_finding.evidence
    assert target_states(handle.id, "tls")[good.url] == "succeeded"


async def test_workflow_refused_port_is_transient(client: Client, worker: str) -> None:
    url = f"https://127.0.0.1:{closed_port()}/"
    spec = make_spec(
        [{"url": url}],
        [{"id": "tls", "kind": "dast", "tool": "tls", "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "failed"
    assert status.stages["tls"].error.category == "transient"
    assert status.stages["tls"].attempts == 2
    assert "ConnectionRefusedError" in status.stages["tls"].error.message
