"""tls: what an https endpoint accepts and presents, with the standard library's ssl.

Checks, one finding per problem, located at ``host:port``:
- protocol versions: TLS 1.0 and TLS 1.1 accepted (deprecated by RFC 8996), or neither
  TLS 1.2 nor 1.3 accepted;
- the leaf certificate: expired, not yet valid, expiring within ``expiry_warning_days``,
  self-signed or not chaining to a trusted root (system store plus ``ca_file``), not
  valid for the host in the URL, RSA key shorter than 2048 bits; a certificate that cannot
  be parsed (impossible or non-UTC dates, broken DER) is itself a finding
  (``tls-cert-malformed``), not a failed stage;
- weak cipher suites accepted: RC4, 3DES, NULL encryption, EXPORT, anonymous key exchange.

A probe can only offer what the local OpenSSL still implements: whatever it cannot offer
(OpenSSL 3 builds usually lack RC4, 3DES and EXPORT; some lack TLS 1.0/1.1) is listed in
the stage outputs as ``not_testable`` rather than silently passing.

`http://` targets: there is no TLS to check, so the tool records nothing and succeeds
(logged); a spec lists the https URL to have it checked.

Errors: connection refused, reset and timeouts on the first connection leave as the
original OSError / ssl error, which the classifier makes transient. A peer rejecting one
probe's protocol or cipher is an answer, not an error.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from temporalio import activity

from activities.runner import ToolContext, ToolOutput, run_tool
from secflow.findings import Confidence, Finding, Severity
from secflow.models import StageTaskInput, StageTaskResult
from secflow.tools import TlsOptions

TOOL = "tls"

# OpenSSL X509_V_ERR_* codes the verifying handshake can report.
_V_NOT_YET_VALID = 9
_V_EXPIRED = 10
_V_SELF_SIGNED_LEAF = 18
_V_SELF_SIGNED_IN_CHAIN = 19
_V_HOSTNAME_MISMATCH = 62
_V_IP_MISMATCH = 64
_TIME_ERRORS = {_V_NOT_YET_VALID, _V_EXPIRED}

# (rule suffix, OpenSSL cipher string, severity, why)
_WEAK_CIPHERS: tuple[tuple[str, str, Severity, str], ...] = (
    ("null", "eNULL", Severity.HIGH, "NULL cipher suites send traffic unencrypted"),
    ("anon", "aNULL", Severity.HIGH, "anonymous key exchange has no server authentication (trivial man-in-the-middle)"),
    ("export", "EXPORT", Severity.HIGH, "EXPORT cipher suites use deliberately weakened keys"),
    ("rc4", "RC4", Severity.MEDIUM, "RC4 has practical plaintext-recovery attacks (RFC 7465)"),
    ("3des", "3DES", Severity.MEDIUM, "3DES has a 64-bit block (SWEET32)"),
)


@dataclass
class Handshake:
    version: str
    cipher: str
    der: bytes | None


@dataclass
class TlsReport:
    findings: list[Finding] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    not_testable: list[str] = field(default_factory=list)


# ======================================================================================
# Handshakes
# ======================================================================================
def _permissive(
    minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None, ciphers: str = "ALL:@SECLEVEL=0"
) -> ssl.SSLContext:
    """A client that accepts anything: probes ask 'would the server agree?', not 'is it safe?'."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers(ciphers)  # SSLError "No cipher can be selected": this OpenSSL lacks them
    with warnings.catch_warnings():  # TLSv1/TLSv1_1 enum members are deprecated: we use them on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum or ssl.TLSVersion.MINIMUM_SUPPORTED
        if maximum is not None:
            ctx.maximum_version = maximum
    return ctx


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout: float, sni: str | None) -> Handshake:
    """One TCP connection + TLS handshake. Connection and handshake errors propagate."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cipher = tls.cipher()
            return Handshake(
                version=tls.version() or "", cipher=cipher[0] if cipher else "", der=tls.getpeercert(binary_form=True)
            )


def _accepted(host: str, port: int, ctx: ssl.SSLContext, timeout: float, sni: str | None) -> Handshake | None:
    """The handshake if the server agreed; None if it refused what this probe offered.

    Refusing shows up as a TLS alert, or as a reset/EOF from servers that just hang up on
    protocols they do not speak. A refused *connection* or a timeout is not an answer to
    the probe: it propagates (transient) rather than being read as "not accepted".
    """
    try:
        return _handshake(host, port, ctx, timeout, sni)
    except ssl.SSLCertVerificationError:
        raise
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return None


# ======================================================================================
# Certificate parsing (DER, just the fields the checks need)
# ======================================================================================
@dataclass
class CertInfo:
    not_before: datetime
    not_after: datetime
    issuer: bytes
    subject: bytes
    key_type: str  # rsa | ec | dsa | other
    key_bits: int | None


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, content end) of each element inside a constructed one."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = _tlv(data, pos)
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def _time(data: bytes, tag: int, name: str) -> datetime:
    text = data.decode("ascii", errors="replace")
    shown = text[:40].encode("unicode_escape").decode("ascii")
    if tag not in (0x17, 0x18) or not text.endswith("Z"):
        raise MalformedCertificate(f"{name} {shown!r} is not a UTCTime or GeneralizedTime in UTC")
    try:
        if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
            year = int(text[:2])
            text = ("19" if year >= 50 else "20") + text
        return datetime.strptime(text[:-1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise MalformedCertificate(f"{name} {shown!r} is not a valid date and time") from None


_OID_RSA = bytes.fromhex("2a864886f70d010101")
_OID_EC = bytes.fromhex("2a8648ce3d0201")
_OID_DSA = bytes.fromhex("2a8648ce380401")
_EC_CURVE_BITS = {
    bytes.fromhex("2a8648ce3d030107"): 256,  # P-256
    bytes.fromhex("2b81040022"): 384,  # P-384
    bytes.fromhex("2b81040023"): 521,  # P-521
    bytes.fromhex("2a8648ce3d030101"): 192,  # P-192
    bytes.fromhex("2b81040021"): 224,  # P-224
}


class MalformedCertificate(ValueError):
    """The presented certificate cannot be read: a finding about the server, not an error
    of the scan (a hostile or broken server must not fail the stage as `validation`)."""


def parse_certificate(der: bytes) -> CertInfo:
    """Dates, names and key of a DER certificate; MalformedCertificate if it cannot be read."""
    try:
        return _parse_certificate(der)
    except MalformedCertificate:
        raise
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise MalformedCertificate(f"unreadable DER structure ({type(exc).__name__})") from None


def _parse_certificate(der: bytes) -> CertInfo:
    _, cstart, _cend = _tlv(der, 0)
    _tbs_tag, tbs_start, tbs_end = _tlv(der, cstart)
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    # serial, signature algorithm, issuer, validity, subject, subjectPublicKeyInfo
    issuer = der[fields[2][1] : fields[2][3]]
    validity = _children(der, fields[3][2], fields[3][3])
    not_before = _time(der[validity[0][2] : validity[0][3]], validity[0][0], "notBefore")
    not_after = _time(der[validity[1][2] : validity[1][3]], validity[1][0], "notAfter")
    subject = der[fields[4][1] : fields[4][3]]
    spki = _children(der, fields[5][2], fields[5][3])
    algorithm = _children(der, spki[0][2], spki[0][3])
    oid = der[algorithm[0][2] : algorithm[0][3]]
    key_type, bits = "other", None
    if oid == _OID_RSA:
        key_type = "rsa"
        bitstring = der[spki[1][2] + 1 : spki[1][3]]  # skip the unused-bits byte
        rsa = _children(bitstring, *_tlv(bitstring, 0)[1:])
        modulus = int.from_bytes(bitstring[rsa[0][2] : rsa[0][3]], "big")
        bits = modulus.bit_length()
    elif oid == _OID_EC:
        key_type = "ec"
        if len(algorithm) > 1 and algorithm[1][0] == 0x06:
            bits = _EC_CURVE_BITS.get(der[algorithm[1][2] : algorithm[1][3]])
    elif oid == _OID_DSA:
        key_type = "dsa"
        if len(algorithm) > 1:
            params = _children(der, algorithm[1][2], algorithm[1][3])
            bits = int.from_bytes(der[params[0][2] : params[0][3]], "big").bit_length()
    return CertInfo(not_before, not_after, issuer, subject, key_type, bits)


# ======================================================================================
# The checks
# ======================================================================================
def probe_tls(
    host: str, port: int, *, timeout: float, ca_file: str | None, expiry_days: int, target: str, address: str | None = None
) -> TlsReport:
    """Probe `host` (SNI, names in findings) by connecting to `address` (default: `host`)."""
    report = TlsReport()
    connect = address or host
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sni = host

    def finding(
        rule: str, title: str, severity: Severity, cwe: str, evidence: str, confidence: Confidence = Confidence.HIGH
    ) -> None:
        report.findings.append(
            Finding.new(
                tool=TOOL,
                rule_id=f"tls-{rule}",
                title=title,
                severity=severity,
                target=target,
                location=where,
                cwe=[cwe],
                evidence=evidence,
                confidence=confidence,
            )
        )

    # 1. First contact with anything goes. Refused / reset / timeout leave from here as-is.
    first = _handshake(connect, port, _permissive(), timeout, sni)

    # 2. Protocol versions, one probe each.
    for name, version in (("TLSv1", "TLSv1"), ("TLSv1.1", "TLSv1_1"), ("TLSv1.2", "TLSv1_2"), ("TLSv1.3", "TLSv1_3")):
        tls_version = getattr(ssl.TLSVersion, version)
        try:
            ctx = _permissive(tls_version, tls_version)
        except (ssl.SSLError, ValueError):
            report.not_testable.append(name)
            continue
        if not _protocol_available(name):
            report.not_testable.append(name)
            continue
        if _accepted(connect, port, ctx, timeout, sni) is not None:
            report.accepted.append(name)
    for name, rule in (("TLSv1", "protocol-tls1.0"), ("TLSv1.1", "protocol-tls1.1")):
        if name in report.accepted:
            finding(
                rule,
                f"{name.replace('TLSv', 'TLS ')} accepted",
                Severity.MEDIUM,
                "CWE-327",
                f"handshake completed with {name} only offered (deprecated by RFC 8996)",
            )
    modern = {"TLSv1.2", "TLSv1.3"}
    if not (modern & set(report.accepted)) and not (modern <= set(report.not_testable)):
        finding(
            "no-modern-protocol",
            "Neither TLS 1.2 nor TLS 1.3 accepted",
            Severity.HIGH,
            "CWE-327",
            f"accepted: {', '.join(report.accepted) or first.version}",
        )

    # 3. Weak cipher suites (TLS 1.3 suites are all strong, so probes stop at TLS 1.2).
    for rule, cipher_string, severity, why in _WEAK_CIPHERS:
        try:
            ctx = _permissive(maximum=ssl.TLSVersion.TLSv1_2, ciphers=f"{cipher_string}:@SECLEVEL=0")
        except ssl.SSLError:
            report.not_testable.append(cipher_string)
            continue
        got = _accepted(connect, port, ctx, timeout, sni)
        if got is not None:
            finding(
                f"cipher-{rule}",
                f"Weak cipher suite accepted ({cipher_string})",
                severity,
                "CWE-327",
                f"negotiated {got.cipher} over {got.version}; {why}",
            )

    # 4. The certificate.
    if first.der is None:
        return report  # anonymous suite chosen: no certificate (already a cipher finding)
    try:
        cert = parse_certificate(first.der)
    except MalformedCertificate as exc:
        finding(
            "cert-malformed",
            "Malformed certificate",
            Severity.MEDIUM,
            "CWE-295",
            f"the server presents a certificate that cannot be parsed: {exc}; clients reject it or read it inconsistently",
        )
        return report  # its dates, key and names cannot be judged; the finding says why
    now = datetime.now(UTC)
    if cert.not_after < now:
        finding("cert-expired", "Certificate expired", Severity.HIGH, "CWE-298", f"notAfter {cert.not_after:%Y-%m-%d %H:%M:%S}Z")
    elif cert.not_after - now <= timedelta(days=expiry_days):
        days = (cert.not_after - now).days
        finding(
            "cert-expiring",
            f"Certificate expires within {expiry_days} days",
            Severity.LOW,
            "CWE-298",
            f"notAfter {cert.not_after:%Y-%m-%d %H:%M:%S}Z ({days} days left)",
        )
    if cert.not_before > now:
        finding(
            "cert-not-yet-valid",
            "Certificate not yet valid",
            Severity.HIGH,
            "CWE-298",
            f"notBefore {cert.not_before:%Y-%m-%d %H:%M:%S}Z",
        )
    if cert.key_type == "rsa" and cert.key_bits is not None and cert.key_bits < 2048:
        finding(
            "cert-weak-key",
            f"Weak certificate key (RSA {cert.key_bits} bits)",
            Severity.HIGH if cert.key_bits < 1024 else Severity.MEDIUM,
            "CWE-326",
            f"RSA modulus of {cert.key_bits} bits; 2048 is the minimum",
        )
    elif cert.key_type == "dsa" and cert.key_bits is not None and cert.key_bits < 2048:
        finding(
            "cert-weak-key",
            f"Weak certificate key (DSA {cert.key_bits} bits)",
            Severity.MEDIUM,
            "CWE-326",
            f"DSA prime of {cert.key_bits} bits; 2048 is the minimum",
        )
    elif cert.key_type == "ec" and cert.key_bits is not None and cert.key_bits < 224:
        finding(
            "cert-weak-key",
            f"Weak certificate key (EC {cert.key_bits} bits)",
            Severity.MEDIUM,
            "CWE-326",
            f"EC curve of {cert.key_bits} bits; 224 is the minimum",
        )

    # Trust: verify the chain the way a browser would (hostname aside, checked below).
    trust = ssl.create_default_context(cafile=ca_file)
    trust.check_hostname = False
    trust.set_ciphers("ALL:@SECLEVEL=0")  # a weak suite or protocol is its own finding, not a trust failure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        trust.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    try:
        _accepted(connect, port, trust, timeout, sni)
    except ssl.SSLCertVerificationError as err:
        code = err.verify_code
        if code in _TIME_ERRORS:
            pass  # chain built to a trusted root; the dates are findings of their own above
        elif code in (_V_SELF_SIGNED_LEAF, _V_SELF_SIGNED_IN_CHAIN) or cert.subject == cert.issuer:
            finding(
                "cert-self-signed",
                "Self-signed certificate",
                Severity.MEDIUM,
                "CWE-295",
                f"{err.verify_message}; clients cannot authenticate the server",
            )
        else:
            finding(
                "cert-untrusted",
                "Certificate does not chain to a trusted root",
                Severity.MEDIUM,
                "CWE-295",
                f"verification failed: {err.verify_message} (code {code})",
            )

    # Hostname: trust the leaf itself so that only the name check can fail here.
    names = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    names.load_verify_locations(cadata=first.der)
    names.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    names.check_hostname = True
    names.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        names.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    try:
        _accepted(connect, port, names, timeout, sni)
    except ssl.SSLCertVerificationError as err:
        if err.verify_code in (_V_HOSTNAME_MISMATCH, _V_IP_MISMATCH):
            finding(
                "cert-hostname-mismatch",
                f"Certificate not valid for {host}",
                Severity.MEDIUM,
                "CWE-297",
                err.verify_message or "hostname mismatch",
            )
    return report


def _protocol_available(name: str) -> bool:
    flag = {"TLSv1": "HAS_TLSv1", "TLSv1.1": "HAS_TLSv1_1", "TLSv1.2": "HAS_TLSv1_2", "TLSv1.3": "HAS_TLSv1_3"}[name]
    return bool(getattr(ssl, flag, False))


async def tls_tool(ctx: ToolContext) -> ToolOutput:
    url = ctx.input.target
    ctx.require_in_scope(url=url)
    opts = TlsOptions.model_validate(ctx.options)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        ctx.log.info("not an https URL; no TLS to check", url=url)
        return ToolOutput(findings=[], items_done=1, items_total=1, outputs={"skipped": "not an https URL"})
    host = parts.hostname
    port = parts.port or 443
    # Resolved once and checked against the scope (deny list and DNS answers included);
    # every probe connects to this address, never to the name again (no DNS rebinding).
    address = await ctx.connect_address(host, port)
    report = await asyncio.to_thread(
        probe_tls,
        host,
        port,
        timeout=opts.connect_timeout.total_seconds(),
        ca_file=opts.ca_file,
        expiry_days=opts.expiry_warning_days,
        target=url,
        address=address.ip,
    )
    if report.not_testable:
        ctx.log.info("local OpenSSL cannot offer some probes", not_testable=report.not_testable)
    outputs = {"accepted_protocols": ", ".join(report.accepted), "not_testable": ", ".join(report.not_testable)}
    return ToolOutput(findings=report.findings, items_done=1, items_total=1, outputs=outputs)


@activity.defn(name="tls")
async def tls(inp: StageTaskInput) -> StageTaskResult:
    return await run_tool(tls_tool, inp)
