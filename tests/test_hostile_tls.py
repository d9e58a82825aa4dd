"""A malformed certificate is a finding of the `tls` tool, not a failed stage.

Certificates are made with `cryptography` and then corrupted the way a broken or hostile
server's would be (an impossible date, letters where digits belong): the DER still loads
into OpenSSL and is served by a real TLS server on 127.0.0.1, but cannot be read as a
certificate. Before, the date parser's ValueError failed the stage as `validation`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.client import Client

from activities.scanners.tls import probe_tls
from secflow.store import open_store
from tests.helpers import final_status, make_spec, start
from tests.test_scanner_tls import TlsServer

GOOD_NOT_AFTER = b"300101000000Z"  # UTCTime of 2030-01-01, patched below
CORRUPTIONS = {
    "month-13": b"301399000000Z",
    "letters": b"30O1O1OOOOOOZ",
    "no-zulu": b"3001010000000",
}


def malformed_cert(directory: Path, corruption: bytes) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(GOOD_NOT_AFTER) == 1 and len(corruption) == len(GOOD_NOT_AFTER)
    der = der.replace(GOOD_NOT_AFTER, corruption)
    cert_file, key_file = directory / "bad.pem", directory / "bad.key"
    cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n")
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture(params=sorted(CORRUPTIONS))
def bad_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TlsServer]:
    server = TlsServer(malformed_cert(tmp_path, CORRUPTIONS[request.param]))
    yield server
    server.close()


def test_malformed_certificate_is_a_finding(bad_server: TlsServer) -> None:
    report = probe_tls("127.0.0.1", bad_server.port, timeout=5, ca_file=None, expiry_days=30, target=bad_server.url)
    malformed = [f for f in report.findings if f.rule_id == "tls-cert-malformed"]
    assert len(malformed) == 1, [f.rule_id for f in report.findings]
    assert "notAfter" in malformed[0].evidence and malformed[0].cwe == ["CWE-295"]
    assert "TLSv1.2" in report.accepted or "TLSv1.3" in report.accepted  # the other checks still ran


async def test_tls_stage_with_a_malformed_certificate_succeeds_with_the_finding(client: Client, worker: str, tmp_path: Path) -> None:
    server = TlsServer(malformed_cert(tmp_path, CORRUPTIONS["month-13"]))
    try:
        spec = make_spec([{"url": server.url}], [{"id": "tls", "kind": "dast", "tool": "tls", "retry": {"max_attempts": 1}}])
        handle = await start(client, spec, worker)
        status = await final_status(handle, timeout=90)
    finally:
        server.close()
    stage = status.stages["tls"]
    assert stage.state == "succeeded", stage
    rules = {f.rule_id for f in open_store().list_findings(handle.id)}
    assert "tls-cert-malformed" in rules, rules
