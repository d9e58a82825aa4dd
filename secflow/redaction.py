"""Secrets never leave the process: one `redact()` for text, one `redact_value()` for data.

Rule 7 of docs/architecture.md ("nothing leaks"): tokens, passwords, API keys, Authorization headers and
credentials in URLs must not reach logs, Temporal history, reports or alerts. Everything
that leaves a worker as text (log events, `ApplicationError` messages, alert bodies,
evidence snippets) goes through this module first.

The rules are a chain of small, ordered regular-expression substitutions. They key on
*where* a secret sits (after `password=`, inside an `Authorization:` header, in a URL's
userinfo) and on token formats that are unambiguous by themselves (AKIA..., ghp_...,
xoxb-..., eyJ....eyJ....sig, PEM blocks). There is deliberately no "high-entropy string"
rule: it would eat sha256 fingerprints, commit ids and CVE ids, and a redactor that
mangles evidence is one people switch off.

When in doubt we over-redact: a log line that says `password=[REDACTED]` where it said
`password=/etc/x` costs nothing, a leaked password costs a rotation and an incident.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "REDACTED",
    "forget_secrets",
    "is_sensitive_key",
    "redact",
    "redact_event",
    "redact_value",
    "register_secret",
]

REDACTED = "[REDACTED]"

# --------------------------------------------------------------------------------------
# Key names whose *value* is a secret, as they appear in text (`key=value`, `key: value`,
# `"key": "value"`). A key matches when it ENDS with one of these words, so DB_PASSWORD,
# client_secret, X-Auth-Token and aws_secret_access_key match, while max_tokens,
# token_count, password_policy and passwordFile do not.
# --------------------------------------------------------------------------------------
_SECRET_WORDS = (
    r"password|passwd|passphrase|pwd|"
    r"(?:db|user|admin|root|smtp|mysql|ldap|proxy|redis|ftp)[_-]?pass|"
    r"secret|secret[_-]?key|client[_-]?secret|"
    r"token|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|bearer[_-]?token|"
    r"api[_-]?key|apikey|api[_-]?token|access[_-]?key|private[_-]?key|signing[_-]?key|"
    r"encryption[_-]?key|master[_-]?key|subscription[_-]?key|auth[_-]?key|routing[_-]?key|"
    r"integration[_-]?key|webhook[_-]?url|"
    r"credentials?|"
    r"session[_-]?id|sessionid|session[_-]?token|phpsessid|jsessionid|"
    r"sig|signature|x-amz-signature|x-amz-security-token"
)
# The key: optional prefix (letters, digits, _ . -), then a secret word, then nothing more.
_KEY = rf"(?<![A-Za-z0-9_.-])[A-Za-z0-9_.-]*?(?:{_SECRET_WORDS})"

# Closing brackets after an unquoted value usually belong to the surrounding text
# (`f(password=abc)`, `{token=abc}`), so they stay outside the redacted span.
_UNQUOTED_VALUE = r"""[^\s&;,'"]+?(?=[)\]}>]*(?:[\s&;,'"]|$))"""


def _has_alnum(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


# --------------------------------------------------------------------------------------
# The rules, in order. Each is (pattern, replacement); the replacement may be a function.
# Order matters: whole blocks and headers first (so later rules do not see half a
# secret), distinctive token formats next, generic key/value forms last.
# --------------------------------------------------------------------------------------
_Rule = tuple["re.Pattern[str]", "str | Callable[[re.Match[str]], str]"]
_RULES: list[_Rule] = []


def _rule(pattern: str, repl: str | Callable[[re.Match[str]], str], flags: int = 0) -> None:
    _RULES.append((re.compile(pattern, flags), repl))


# 1. PEM private keys (RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8), also a truncated block
#    whose END line was cut off by a log tail.
_rule(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----|\Z)",
    lambda m: f"-----BEGIN {m.group(1)}PRIVATE KEY-----{REDACTED}-----END {m.group(1)}PRIVATE KEY-----",
    re.DOTALL,
)

# 2. Authorization / Proxy-Authorization. Keep the scheme (useful when debugging "wrong
#    auth scheme"), drop the credentials. Quoted form first (JSON, Python reprs of dicts).
_AUTH_SCHEMES = (
    r"(?:Bearer|Basic|Token|Digest|Negotiate|NTLM|AWS4-HMAC-SHA256|HMAC-SHA256|ApiKey|"
    r"SSWS|SSO-Key|OAuth|Splunk|GenieKey|Key|Kerberos|JWT)"
)


def _auth_quoted(m: re.Match[str]) -> str:
    scheme = f"{m.group('scheme')} " if m.group("scheme") else ""
    return f"{m.group('head')}{scheme}{REDACTED}{m.group('q2')}"


_rule(
    rf"""(?P<head>(?P<q1>["'])(?:proxy-)?authorization(?P=q1)\s*(?::|=>?)\s*(?P<q2>["']))"""
    rf"""(?:(?P<scheme>{_AUTH_SCHEMES})\s+)?(?:\\.|(?!(?P=q2)).)*(?P=q2)""",
    _auth_quoted,
    re.IGNORECASE,
)


def _auth_header(m: re.Match[str]) -> str:
    scheme = f"{m.group('scheme')} " if m.group("scheme") else ""
    return f"{m.group('head')}{scheme}{REDACTED}"


# Header / key=value form: everything to the end of the line is the credential (Digest
# credentials contain spaces, commas and quotes).
_rule(
    rf"""(?P<head>(?<![A-Za-z0-9_-])(?:[A-Za-z0-9-]*-)?authorization\s*(?::|=)\s*)"""
    rf"""(?:(?P<scheme>{_AUTH_SCHEMES})\s+)?(?=\S)[^\r\n]+""",
    _auth_header,
    re.IGNORECASE,
)

# 3. Cookies: a Cookie / Set-Cookie header value is session state, redact all of it.
_rule(
    r"""(?P<q>["'])((?:set-)?cookie)(?P=q)\s*:\s*(?P<q2>["'])(?:\\.|(?!(?P=q2)).)*(?P=q2)""",
    lambda m: f"{m.group('q')}{m.group(2)}{m.group('q')}: {m.group('q2')}{REDACTED}{m.group('q2')}",
    re.IGNORECASE,
)
_rule(
    r"(?<![A-Za-z0-9_-])((?:set-)?cookie\s*:\s*)(?=\S)[^\r\n]+",
    lambda m: f"{m.group(1)}{REDACTED}",
    re.IGNORECASE,
)

# 4. Slack incoming-webhook URLs: the path *is* the credential.
_rule(
    r"(https?://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+",
    lambda m: f"{m.group(1)}{REDACTED}",
)
# Discord webhooks are built the same way.
_rule(
    r"(https?://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/)[A-Za-z0-9/_-]+",
    lambda m: f"{m.group(1)}{REDACTED}",
)
# Other services whose webhook or API path carries the token (issue 10, item 9: httpx logs
# the full URL of every request at INFO): Microsoft Teams (webhookb2), Telegram bots,
# Zapier, IFTTT, and any `/hooks/` or `/webhook(s)/` segment that looks like a token
# (16+ characters with a digit), as Mattermost, Rocket.Chat and most home-grown
# receivers use.
_rule(r"(https?://[^\s/]+/webhookb2/)[^\s?#\"']+", lambda m: f"{m.group(1)}{REDACTED}")
_rule(r"(https?://api\.telegram\.org/(?:file/)?bot)\d+:[A-Za-z0-9_-]+", lambda m: f"{m.group(1)}{REDACTED}")
_rule(r"(https?://hooks\.zapier\.com/hooks/catch/)[^\s?#\"']+", lambda m: f"{m.group(1)}{REDACTED}")
_rule(r"(https?://maker\.ifttt\.com/trigger/[^\s/]+/(?:json/)?with/key/)[A-Za-z0-9_-]+", lambda m: f"{m.group(1)}{REDACTED}")
_rule(
    r"(https?://[^\s/]+(?:/[^\s/?#]+)*?/(?:hooks|webhooks?)/)(?:[A-Za-z0-9_-]*/)*?"
    r"(?=[A-Za-z0-9_-]{16,})(?=[A-Za-z_-]*\d)[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*",
    lambda m: f"{m.group(1)}{REDACTED}",
)
# Query parameters that are keys by name alone: ?key= (Google APIs, Google Chat webhooks),
# ?sig= (Azure SAS), ?code= (Azure Functions keys).
_rule(
    r"(?<=[?&])((?:key|sig|code)=)(?!\[REDACTED\])[^&#\s\"'<>]+",
    lambda m: f"{m.group(1)}{REDACTED}",
    re.IGNORECASE,
)


# 5. Credentials in URLs: scheme://user:pass@host -> scheme://user:[REDACTED]@host.
#    The password may itself contain '@' (unencoded, sadly common), so match up to the
#    last '@' before the path.
def _url_userinfo(m: re.Match[str]) -> str:
    user = m.group("user")
    if m.group("pw") is not None:
        return f"{m.group('scheme')}{user}:{REDACTED}@"
    # Userinfo without a colon is a user name (git@, postgres@) unless it looks like a
    # token: long, or a known token prefix (GitHub, GitLab, ...).
    if _looks_like_token(user):
        return f"{m.group('scheme')}{REDACTED}@"
    return m.group(0)


def _looks_like_token(text: str) -> bool:
    if len(text) >= 20 and _has_alnum(text):
        return True
    return bool(re.match(r"(?:gh[pousr]_|github_pat_|glpat-|xox[abposr]-|sk_live_|npm_)", text))


_rule(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/?#@\[\]]*)(?::(?P<pw>[^\s/]*))?@(?=[^\s@]*(?:[\s/?#]|$))",
    _url_userinfo,
)

# 6. Token formats that are secrets wherever they appear.
_rule(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[0-9A-Z]{16}\b", REDACTED)
_rule(r"\bgh[pousr]_[A-Za-z0-9]{20,255}\b", REDACTED)
_rule(r"\bgithub_pat_[A-Za-z0-9_]{20,255}\b", REDACTED)
_rule(r"\bglpat-[A-Za-z0-9_-]{20,}\b", REDACTED)
_rule(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", REDACTED)
_rule(r"\bxapp-\d-[A-Za-z0-9-]{10,}", REDACTED)
_rule(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b", REDACTED)  # Stripe
_rule(r"\bAIza[0-9A-Za-z_-]{35}\b", REDACTED)  # Google API keys
_rule(r"\bnpm_[A-Za-z0-9]{36}\b", REDACTED)
_rule(r"\bpypi-AgE[A-Za-z0-9_-]{50,}", REDACTED)
_rule(r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\b", REDACTED)  # SendGrid
_rule(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}\b", REDACTED)  # OpenAI / Anthropic style
# JWT (and JWS/JWE compact forms): header segment starts with base64url of '{"'.
_rule(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", REDACTED)

# 7. Bearer tokens outside an Authorization header ("using Bearer abc.def", "-H 'Bearer x'").
#    Require a digit or a long token so that "Bearer authentication" stays readable.
_rule(
    r"\b(Bearer\s+)(?!\[REDACTED\])(?:(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}|[A-Za-z0-9._~+/=-]{20,})",
    lambda m: f"{m.group(1)}{REDACTED}",
)

# 8. curl/wget style credentials on command lines: -u user:pass, --user user:pass.
_rule(
    r"""((?:^|\s)(?:-u|--user|--proxy-user)[\s=]+["']?)([^\s:"']+):([^\s"']+)""",
    lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}",
)


# 9. JSON escaped inside a string (a response body logged inside another JSON document):
#    {\"password\": \"x\"}. The generic rules below would stop at the backslash.
_rule(
    rf'(?P<head>\\"(?:{_KEY}|(?:proxy-)?authorization|(?:set-)?cookie)\\"\s*:\s*\\")(?P<val>(?:(?!\\").)*)\\"',
    lambda m: m.group(0) if m.group("val") in ("", REDACTED) else f'{m.group("head")}{REDACTED}\\"',
    re.IGNORECASE,
)


# 10. Quoted keys (JSON, YAML flow style, Python/Ruby reprs): "password": "x", 'token' => 'y'.
def _quoted_kv(m: re.Match[str]) -> str:
    if m.group("val") in ("", REDACTED):
        return m.group(0)
    return f"{m.group('head')}{REDACTED}{m.group('q2')}"


_rule(
    rf"""(?P<head>(?P<q1>["']){_KEY}(?P=q1)\s*(?::|=>?)\s*(?P<q2>["']))(?P<val>(?:\\.|(?!(?P=q2)).)*)(?P=q2)""",
    _quoted_kv,
    re.IGNORECASE,
)
# ... with a bare JSON value: "token": 123456 (null/true/false/objects are left alone).
_rule(
    rf"""(?P<head>(?P<q1>["']){_KEY}(?P=q1)\s*:\s*)(?!null\b|true\b|false\b|["'\[{{])[A-Za-z0-9_.+/=-]+""",
    lambda m: f"{m.group('head')}{REDACTED}",
    re.IGNORECASE,
)


# 11. Bare keys: key=value, key: value, key => value, --key=value (a quoted value is taken
#     whole). A value without a letter or digit ("token: '}'" in a parser message) is
#     not a secret. Nor is prose after "key: " (issue 11): expat's "unclosed token: line
#     19, column 36" and a finding title "Hard-coded secret: use a secret store" read on
#     after the colon, while a credential in `key: value` text ends its line or its field.
#     So a colon-separated value that is one plain word (letters only) followed by more
#     words on its line, a Title Case name ("Base64 High Entropy String") or a word that
#     says a value is absent stays. A value with a digit followed by ordinary words
#     ("password: hunter2 rejected") is still redacted. `=` and `=>` are assignments,
#     never prose: their values are always redacted.
_PROSE_WORD = re.compile(r"[A-Za-z]{1,15}")
_TITLE_WORD = re.compile(r"[A-Z][A-Za-z]{0,14}\d{0,3}")
_TITLE_TAIL = re.compile(r"(?:[ \t]+[A-Z][A-Za-z]*){2,}\b")
_ABSENT_WORDS = frozenset(
    {"missing", "none", "null", "nil", "empty", "unset", "absent", "required", "invalid", "expired", "revoked",
     "present", "redacted", "hidden", "omitted", "undefined", "n/a"}
)  # fmt: skip


def _prose_after_colon(m: re.Match[str], value: str) -> bool:
    if not re.search(r":\s+$", m.group("head")):
        return False
    if value.lower() in _ABSENT_WORDS:
        return True
    rest = m.string[m.end() :]
    if _TITLE_WORD.fullmatch(value) and _TITLE_TAIL.match(rest):
        return True  # a name in Title Case: "Base64 High Entropy String"
    # One word and more words after it on the same line: "line 19, column 36".
    return _PROSE_WORD.fullmatch(value) is not None and re.match(r"[ \t]+[^\s]", rest) is not None


def _bare_kv(m: re.Match[str]) -> str:
    quote = m.group("q")
    if quote:
        value = m.group("qval")
        if value in ("", REDACTED) or not _has_alnum(value):
            return m.group(0)
        return f"{m.group('head')}{quote}{REDACTED}{quote}"
    value = m.group("val")
    if value.startswith(REDACTED) or not _has_alnum(value) or _prose_after_colon(m, value):
        return m.group(0)
    return f"{m.group('head')}{REDACTED}"


_rule(
    rf"""(?P<head>{_KEY}\s*(?:=>?|:)\s*)(?:(?P<q>["'])(?P<qval>(?:\\.|(?!(?P=q)).)*)(?P=q)|(?!\[REDACTED\])(?P<val>{_UNQUOTED_VALUE}))""",
    _bare_kv,
    re.IGNORECASE | re.MULTILINE,
)


# 12. --key value (space separated CLI flag). The value must not be another flag or an
#     English word ("--token is required").
_rule(
    r"""((?:^|\s)--?(?:[A-Za-z0-9-]*-)?(?:password|passwd|token|secret|api-key|apikey|access-key|secret-key|client-secret|auth-token)\s+)(?!-)(?!\[REDACTED\])(?!(?:is|are|was|must|should|cannot|not|and|or|the|flag|option|required|missing|given)\b)(["']?)[^\s"']+\2""",
    lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------
# Known values: a secret this process resolved (secflow/secrets.py) is scrubbed wherever it
# shows up, whatever it looks like, before the rules run. Held in memory only.
# --------------------------------------------------------------------------------------
_KNOWN_MIN = 6  # shorter values would blank ordinary words; the rules still apply to them
_known: frozenset[str] = frozenset()
_known_pattern: re.Pattern[str] | None = None
_known_lock = threading.Lock()


def register_secret(*values: str) -> None:
    """Scrub these exact values (and their percent-encoded forms) from every later `redact`."""
    global _known, _known_pattern
    from urllib.parse import quote

    fresh = set()
    for value in values:
        if isinstance(value, str) and len(value) >= _KNOWN_MIN:
            fresh.update({value, quote(value, safe=""), quote(value, safe="/")})
    with _known_lock:
        if fresh <= _known:
            return
        _known = _known | fresh
        # Longest first, so a value containing another is taken whole.
        ordered = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(v) for v in ordered))


def forget_secrets() -> None:
    """Drop every registered value (tests)."""
    global _known, _known_pattern
    with _known_lock:
        _known, _known_pattern = frozenset(), None


def redact(text: str) -> str:
    """`text` with every secret it contains replaced by ``[REDACTED]``.

    Idempotent (``redact(redact(x)) == redact(x)``) and conservative with ordinary text:
    host names, ports, paths, CVE ids and hashes come out unchanged.
    """
    if not isinstance(text, str):
        text = str(text)
    if not text:
        return text
    known = _known_pattern
    if known is not None:
        text = known.sub(REDACTED, text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


# --------------------------------------------------------------------------------------
# Structured data
# --------------------------------------------------------------------------------------
_SENSITIVE_KEY_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "apikey",
    "cookie",
    "credential",
    "privatekey",
    "accesskey",
    "session",
    "signature",
)
_SENSITIVE_EXACT_KEYS = frozenset({"pwd", "auth", "key_material", "dsn", "webhookurl", "routingkey"})


def is_sensitive_key(key: object) -> bool:
    """True when a mapping key names a secret (whatever the value looks like)."""
    if not isinstance(key, str):
        return False
    norm = re.sub(r"[^a-z0-9]", "", key.lower())
    if norm in _SENSITIVE_EXACT_KEYS:
        return True
    if norm.endswith(("pwd", "pass")) and len(norm) > 4:  # db_pwd, smtp_pass
        return True
    return any(part in norm for part in _SENSITIVE_KEY_PARTS)


def redact_value(value: object) -> object:
    """Recursively redact `value`: mappings, lists, tuples, sets, strings and bytes.

    A mapping entry whose key looks sensitive is replaced by ``[REDACTED]`` whatever its
    value (a password that happens to be ``1234`` is still a password); every string goes
    through `redact`. Other objects are returned unchanged.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_sensitive_key(k) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        items = [redact_value(v) for v in value]
        if hasattr(value, "_fields"):  # namedtuple
            namedtuple_class: Any = type(value)  # its constructor takes the fields one by one
            return namedtuple_class(*items)
        return tuple(items)
    if isinstance(value, (set, frozenset)):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "surrogateescape")
        cleaned = redact(text)
        return value if cleaned == text else cleaned.encode("utf-8", "surrogateescape")
    return value


# --------------------------------------------------------------------------------------
# structlog processor
# --------------------------------------------------------------------------------------
_PASSTHROUGH_TYPES = (bool, int, float, type(None))
# Keys structlog's stdlib bridge uses internally; they are removed before rendering.
_META_KEYS = frozenset({"_record", "_from_structlog"})


def _render_exc_info(exc_info: Any) -> str | None:
    import sys
    import traceback

    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple) or len(exc_info) != 3 or exc_info[0] is None:
        return None
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


def _redact_for_log(value: object) -> object:
    if isinstance(value, _PASSTHROUGH_TYPES):
        return value
    if isinstance(value, (str, Mapping, list, tuple, set, frozenset)):
        cleaned = redact_value(value)
        if isinstance(cleaned, Mapping):
            return {k: _redact_for_log(v) for k, v in cleaned.items()}
        if isinstance(cleaned, (list, tuple, set, frozenset)):
            return [_redact_for_log(v) for v in cleaned]
        return cleaned
    # Anything else would be rendered through repr() by the JSON renderer; an exception
    # or a model's repr can carry a secret, so render it here where we can clean it.
    return redact(repr(value))


def redact_event(logger: object, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact every value of the event (put it last before rendering).

    An ``exc_info`` that no earlier processor formatted is rendered to an ``exception``
    text here, so that a secret in an exception message cannot slip past as an object.
    """
    if "exc_info" in event_dict:
        rendered = _render_exc_info(event_dict.pop("exc_info"))
        if rendered is not None and "exception" not in event_dict:
            event_dict["exception"] = rendered
    for key in list(event_dict):
        if key in _META_KEYS:
            continue
        if is_sensitive_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_for_log(event_dict[key])
    return event_dict
