"""Secrets by reference: what travels is where a credential lives, never the credential.

A spec or the alert routing file names a credential as a reference,

    {from_env: NAME}     the worker's environment variable NAME
    {from_file: PATH}    the file PATH on the worker (absolute; not readable by others)

and only an activity resolves it, right before the request that needs it. The reference is
what sits in the workflow input, activity payloads, Temporal history, the store, the status
and the dead-letter queue; the value stays in the activity's memory. A value resolved here
is also registered with `secflow.redaction`, so if it ever reaches a text that leaves the
worker (an error message, a log line, an alert) it comes out as ``[REDACTED]``.

A reference that cannot be resolved raises `SecretUnavailable` (category `permanent`: the
worker's environment is wrong and retrying will not fix it), naming the reference and
the reason, never a value.

Credentials written inline are refused at validation (docs/secrets.md): `inline_url_credentials`
finds userinfo and token-like query parameters in a URL, `is_ref` tells a reference apart.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from secflow.errors import PermanentError
from secflow.redaction import REDACTED, register_secret

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "REF_FORMS",
    "BasicAuth",
    "HeaderAuth",
    "SecretRef",
    "SecretUnavailable",
    "TargetAuth",
    "auth_headers",
    "inline_url_credentials",
    "is_ref",
    "mask_url_credentials",
    "names_a_credential",
    "resolve",
]

REF_FORMS = "{from_env: NAME} or {from_file: /absolute/path}"
MAX_SECRET_FILE_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REF_KEYS = frozenset({"from_env", "from_file"})
# Query parameter names that carry a credential: the name (lower case, letters and digits
# only) ends with one of these words, or is `key` (Google APIs) or `sig` (Azure SAS).
# Names that merely contain one (max_tokens, sort_key, password_policy) are not secrets.
_QUERY_SECRET_ENDINGS = (
    "password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "accesskey", "privatekey",
    "secretkey", "signature", "credential", "credentials", "sessionid", "auth",
)  # fmt: skip
_QUERY_KEY_NAMES = frozenset({"key", "sig", "pass"})


class SecretUnavailable(PermanentError):
    """A reference that does not resolve in this worker; the message names it, never a value."""

    def __init__(self, where: str, ref: SecretRef, reason: str) -> None:
        super().__init__(f"{where}: secret {ref.describe()}: {reason}" if where else f"secret {ref.describe()}: {reason}")
        self.ref = ref
        self.reason = reason


class SecretRef(BaseModel):
    """``{from_env: NAME}`` or ``{from_file: PATH}``: exactly one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_env: str | None = None
    from_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        if isinstance(data, str | int | float | bytes):
            # Never echo `data`: it is the secret someone just pasted.
            raise ValueError(f"an inline secret is refused; give a reference: {REF_FORMS}")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError(f"give exactly one of from_env or from_file ({REF_FORMS})")
        if self.from_env is not None and not _ENV_NAME.fullmatch(self.from_env):
            raise ValueError(f"from_env: {self.from_env[:64]!r} is not an environment variable name")
        if self.from_file is not None and not os.path.isabs(self.from_file):
            # A relative path would mean whatever directory each worker happens to run in.
            raise ValueError(f"from_file: {self.from_file[:200]!r} is not an absolute path")
        return self

    def describe(self) -> str:
        """The reference as a person wrote it (safe to show anywhere)."""
        return f"{{from_env: {self.from_env}}}" if self.from_env is not None else f"{{from_file: {self.from_file}}}"

    def __str__(self) -> str:
        return self.describe()


def is_ref(value: Any) -> bool:
    """True for a mapping shaped like a reference (one of from_env / from_file)."""
    return isinstance(value, Mapping) and bool(value) and set(value) <= _REF_KEYS


def resolve(ref: SecretRef, *, where: str = "", env: Mapping[str, str] | None = None) -> str:
    """The value `ref` points to, read now; `SecretUnavailable` naming `where` and `ref` if not.

    The value is registered with the redactor before it is returned.
    """
    if ref.from_env is not None:
        value = (os.environ if env is None else env).get(ref.from_env, "")
        if not value.strip():
            raise SecretUnavailable(where, ref, f"environment variable {ref.from_env} is not set in the worker")
        value = value.strip()
    else:
        value = _read_file(ref, where)
    register_secret(value)
    return value


def _read_file(ref: SecretRef, where: str) -> str:
    path = ref.from_file or ""

    def unavailable(reason: str) -> SecretUnavailable:
        return SecretUnavailable(where, ref, reason)

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise unavailable(f"cannot open: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise unavailable("not a regular file")
        # Like ssh with a private key: a secret others may read or anyone but its owner
        # (and group) may change is not used. Group-readable stays allowed (a container's
        # mounted secrets are often 0440 for a group the worker is in).
        loose = st.st_mode & (stat.S_IRWXO | stat.S_IWGRP)
        if loose:
            raise unavailable(
                f"file mode {stat.S_IMODE(st.st_mode):04o} is too open (readable or writable by others); chmod 600 {path}"
            )
        if st.st_size > MAX_SECRET_FILE_BYTES:
            raise unavailable(f"file is larger than {MAX_SECRET_FILE_BYTES} bytes")
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise unavailable(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise unavailable("not UTF-8 text") from None
    # One trailing newline is how editors and `echo` end a file, not part of the secret.
    value = text.removesuffix("\n").removesuffix("\r")
    if not value.strip():
        raise unavailable("file is empty")
    return value


# --------------------------------------------------------------------------------------
# How a URL target authenticates (the spec's `targets[i].auth`)
# --------------------------------------------------------------------------------------
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an RFC 9110 token
# Headers the HTTP client owns: setting them by hand breaks framing or routing.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"})


class _AuthModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_AuthModel):
    """HTTP Basic: the user name may be written out, the password is a reference."""

    username: str | SecretRef = Field(min_length=1)
    password: SecretRef

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str | SecretRef) -> str | SecretRef:
        if isinstance(value, str) and (":" in value or any(ord(c) < 32 for c in value)):
            raise ValueError("a Basic user name cannot contain ':' or control characters")
        return value


class HeaderAuth(_AuthModel):
    """Any header: an API key header (X-Api-Key), a session cookie, a custom scheme."""

    name: str
    value: SecretRef

    @field_validator("name")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise ValueError(f"{value[:64]!r} is not an HTTP header name")
        if value.lower() in _RESERVED_HEADERS:
            raise ValueError(f"{value} is set by the HTTP client and cannot carry a credential")
        return value


class TargetAuth(_AuthModel):
    """``{basic: {username, password}}``, ``{bearer: <ref>}`` or ``{header: {name, value}}``."""

    basic: BasicAuth | None = None
    bearer: SecretRef | None = None
    header: HeaderAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetAuth:
        given = [k for k in ("basic", "bearer", "header") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of basic, bearer or header")
        return self

    def refs(self) -> list[SecretRef]:
        """Every reference this auth needs (what a worker must be able to resolve)."""
        if self.basic is not None:
            user = [self.basic.username] if isinstance(self.basic.username, SecretRef) else []
            return [*user, self.basic.password]
        if self.bearer is not None:
            return [self.bearer]
        assert self.header is not None
        return [self.header.value]


def auth_headers(auth: TargetAuth | None, *, where: str = "auth", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The request headers `auth` asks for, with its references resolved now.

    The header values are registered with the redactor (the Basic token is derived from
    the password, so it is registered as well).
    """
    if auth is None:
        return {}
    if auth.basic is not None:
        user = auth.basic.username
        username = resolve(user, where=f"{where}.basic.username", env=env) if isinstance(user, SecretRef) else user
        password = resolve(auth.basic.password, where=f"{where}.basic.password", env=env)
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        register_secret(token)
        return {"Authorization": f"Basic {token}"}
    if auth.bearer is not None:
        return {"Authorization": f"Bearer {resolve(auth.bearer, where=f'{where}.bearer', env=env)}"}
    assert auth.header is not None
    value = resolve(auth.header.value, where=f"{where}.header.value", env=env)
    if any(c in value for c in "\r\n\0"):
        raise SecretUnavailable(f"{where}.header.value", auth.header.value, "contains a line break")
    return {auth.header.name: value}


def names_a_credential(name: str) -> bool:
    """True for a query parameter or option name whose value is a credential (api_key,
    access_token, password, X-Auth-Token, key, sig), not for max_tokens or sort_key."""
    norm = re.sub(r"[^a-z0-9]", "", name.lower())
    return norm in _QUERY_KEY_NAMES or norm.endswith(_QUERY_SECRET_ENDINGS)


def inline_url_credentials(url: str) -> list[tuple[str, str]]:
    """Credentials written into `url`: ``[(what, value), ...]``; what is "userinfo" or
    "query parameter 'name'". Empty when the URL carries none (or is not a URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[tuple[str, str]] = []
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append(("userinfo", userinfo))
        if parts.password:
            found.append(("userinfo", parts.password))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if value and names_a_credential(name):
            found.append((f"query parameter {name!r}", value))
    return found


def mask_url_credentials(url: str) -> str:
    """`url` with the credentials `inline_url_credentials` finds replaced by ``[REDACTED]``
    (whatever their length or encoding), for messages that must show the URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    pieces = []
    for piece in parts.query.split("&") if parts.query else []:
        name, sep, value = piece.partition("=")
        pieces.append(f"{name}={REDACTED}" if sep and value and names_a_credential(unquote_plus(name)) else piece)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pieces), parts.fragment))
