"""The alert routing file: which channels exist, and who is told what, when.

Named by ``SECFLOW_ALERTS_CONFIG`` (YAML; format and a full example in the README,
"Alerts and channels"). Without it SecFlow has no channels: incidents still open and
escalate on the default timers, but every plan has empty tiers, so nobody is told.

Secrets never sit in the file: each is a reference (secflow/secrets.py, docs/secrets.md),
``token: {from_env: NAME}`` or ``token: {from_file: /path}`` (likewise ``secret``,
``routing_key``, ``password``, and ``url`` for webhook URLs that carry their token);
the older ``token_env: NAME`` form (``secret_env``, ``routing_key_env``, ``password_env``,
``url_env``) means ``{from_env: NAME}``. An inline secret is refused. `load_alerts_config()`
checks the structure (pydantic, unknown keys refused), that every channel named in the
routing exists, that every reference resolves, and that URLs are https (http only to
loopback) without credentials; every problem is reported with its field path:

    channels.ops-pager.routing_key_env: environment variable SECFLOW_PD_KEY is not set
    routing.P1.tiers.0.1: unknown channel 'pagerdutty' (defined: ops-pager, team-slack)

The worker validates it at start and refuses to run with a bad file (worker.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from secflow.durations import parse_duration
from secflow.incidents import AlertPlan, Severity
from secflow.secrets import REF_FORMS, SecretRef, SecretUnavailable, inline_url_credentials, resolve

__all__ = [
    "DEFAULT_ROUTING",
    "ENV_VAR",
    "AlertConfigError",
    "AlertsConfig",
    "ChannelConfig",
    "EmailChannel",
    "JiraChannel",
    "PagerDutyChannel",
    "SlackChannel",
    "WebhookChannel",
    "load_alerts_config",
    "parse_alerts_config",
    "plan_for",
]

ENV_VAR = "SECFLOW_ALERTS_CONFIG"

CHANNEL_TYPES = ("slack", "webhook", "pagerduty", "email", "jira")
_CHANNEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JIRA_PROJECT = re.compile(r"[A-Z][A-Z0-9_]{0,49}")
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


class AlertConfigError(ValueError):
    """A bad routing file: every problem, each as `field.path: reason`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------
def _duration(value: Any) -> timedelta:
    return parse_duration(value)


def _optional_duration(value: Any) -> timedelta | None:
    """`never` (or null) means no timer; anything else is a duration."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("never", "none", "")):
        return None
    delta = parse_duration(value)
    if delta.total_seconds() <= 0:
        raise ValueError("must be longer than 0 (use `never` for no timer)")
    return delta


Duration = Annotated[timedelta, BeforeValidator(_duration)]
OptionalDuration = Annotated[timedelta | None, BeforeValidator(_optional_duration)]


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic that never leaves the machine."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Hosts whose webhook URL path *is* the token (redaction rule 4 knows the same ones).
_SECRET_PATH_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com", "discord.com", "discordapp.com")


def check_url(value: str, *, inline: bool = True) -> str:
    """An https URL (http only to loopback) with no credentials written into it.

    `inline`: the URL sits in the file itself. One that came from a reference (the whole
    URL is the secret, e.g. a Slack webhook) may carry a token in its path or query.
    """
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {_shown(text)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"must not contain credentials; give secrets by reference: {REF_FORMS}")
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise ValueError(f"bad port in URL {_shown(text)!r}") from None
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        # A token sent over plain http is a token given away (issue 10, item 9).
        raise ValueError(f"must be https:// (plain http is allowed to loopback only): {_shown(text)!r}")
    if inline:
        carried = [what for what, _ in inline_url_credentials(text) if what != "userinfo"]
        host = parts.hostname.lower()
        if any(host == h or host.endswith("." + h) for h in _SECRET_PATH_HOSTS) and parts.path.strip("/"):
            carried.append("its path (a webhook token)")
        if carried:
            raise ValueError(f"carries a credential in {', '.join(carried)}; give the whole URL by reference: url: {REF_FORMS}")
    return text


def _shown(url: str) -> str:
    # Never echo a secret back in an error: show the scheme and host only.
    parts = urlsplit(url)
    host = parts.hostname or ""
    # Without a scheme the text may be anything (a token pasted where a URL belongs).
    return f"{parts.scheme}://{host}/..." if parts.scheme else f"({len(url)} characters, no scheme)"


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value or ""):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _url_or_ref(value: Any) -> Any:
    if isinstance(value, dict | SecretRef):
        return SecretRef.model_validate(value)
    return check_url(value)


EnvName = Annotated[str, BeforeValidator(_env_name)]
Url = Annotated[str, BeforeValidator(check_url)]
# A URL written out (checked as above), or a reference to one that holds its token.
UrlOrRef = Annotated[str | SecretRef, BeforeValidator(_url_or_ref)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------
class _ChannelBase(_Model):
    # Identical alerts (same severity, category, stage, message) within the cooldown are
    # merged into the one already sent, with a count.
    cooldown: Duration = timedelta(minutes=10)
    # At most this many messages per rolling hour (None: no cap). P1 is never capped.
    max_per_hour: int | None = Field(30, ge=1)
    timeout: Duration = timedelta(seconds=10)

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be longer than 0")
        return value

    # (field, legacy `*_env` field) of each credential the channel takes; `secret_refs`
    # reads both forms. Either is a reference, resolved only when a message is sent.
    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()

    def secret_refs(self) -> dict[str, SecretRef]:
        """field path (as the file spells it) -> reference, for every secret this channel needs."""
        found: dict[str, SecretRef] = {}
        for field, env_field in self.SECRET_FIELDS:
            value = getattr(self, field, None)
            if isinstance(value, SecretRef):
                found[field] = value
            variable = getattr(self, env_field, None)
            if variable:
                found[env_field] = SecretRef(from_env=variable)
        return found

    def secret_ref(self, field: str) -> SecretRef | None:
        """The reference for `field` (given as `field: REF` or as `field_env: NAME`)."""
        refs = self.secret_refs()
        return refs.get(field) or refs.get(f"{field}_env")


class SlackChannel(_ChannelBase):
    """A Slack incoming webhook. Its URL holds the token: give it by reference."""

    type: Literal["slack"]
    url: UrlOrRef | None = None
    url_env: EnvName | None = None
    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("url", "url_env"),)


class WebhookChannel(_ChannelBase):
    """A generic JSON webhook, signed with HMAC-SHA256 under the secret `secret`."""

    type: Literal["webhook"]
    url: UrlOrRef | None = None
    url_env: EnvName | None = None
    secret: SecretRef | None = None
    secret_env: EnvName | None = None
    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("url", "url_env"), ("secret", "secret_env"))


class PagerDutyChannel(_ChannelBase):
    """PagerDuty Events API v2."""

    type: Literal["pagerduty"]
    base_url: Url = "https://events.pagerduty.com"
    routing_key: SecretRef | None = None
    routing_key_env: EnvName | None = None
    source: str = "secflow"
    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("routing_key", "routing_key_env"),)


class EmailChannel(_ChannelBase):
    """Plain-text e-mail over SMTP; STARTTLS with certificate verification, then AUTH."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    ca_file: Path | None = None  # verify the server against this CA bundle (default: system CAs)
    username: str | None = None
    password: SecretRef | None = None
    password_env: EnvName | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)

    @field_validator("sender")
    @classmethod
    def _one_address(cls, value: str) -> str:
        if not _ADDRESS.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value.strip()

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not _ADDRESS.fullmatch(str(v).strip())]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return [v.strip() for v in value]

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("password", "password_env"),)


class JiraTransitions(_Model):
    resolve: str = "Done"  # the transition's name, as the project's workflow calls it


class JiraChannel(_ChannelBase):
    """A Jira issue per P1-P3 incident (REST API v2): created once, commented, transitioned."""

    type: Literal["jira"]
    base_url: Url
    project: str
    issue_type: str = Field("Task", min_length=1)
    auth: Literal["basic", "bearer"] = "basic"
    email: str | None = None  # basic auth: the account's e-mail; the API token is the password
    token: SecretRef | None = None
    token_env: EnvName | None = None
    labels: list[str] = Field(default_factory=lambda: ["secflow"])
    transitions: JiraTransitions = Field(default_factory=JiraTransitions)
    # Jira is a ticket per incident, not a pager: no cooldown merging across incidents.
    cooldown: Duration = timedelta(0)

    @field_validator("project")
    @classmethod
    def _project_key(cls, value: str) -> str:
        if not _JIRA_PROJECT.fullmatch(value):
            raise ValueError(f"{value!r} is not a Jira project key (upper-case letters, digits, _)")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not v or any(c.isspace() for c in v)]
        if bad:
            raise ValueError(f"Jira labels cannot be empty or contain spaces: {bad}")
        return value

    SECRET_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("token", "token_env"),)


ChannelConfig = Annotated[
    SlackChannel | WebhookChannel | PagerDutyChannel | EmailChannel | JiraChannel,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------
class SeverityRoute(_Model):
    """How one severity escalates. Fields left out take the default table's value."""

    ack_within: OptionalDuration = None
    resolve_within: OptionalDuration = None
    tiers: list[list[str]] = Field(default_factory=list)
    summary_only: bool = False
    summary_every: Duration = timedelta(days=1)

    @field_validator("tiers")
    @classmethod
    def _non_empty_tiers(cls, value: list[list[str]]) -> list[list[str]]:
        for i, tier in enumerate(value):
            if not tier:
                raise ValueError(f"tier {i + 1} names no channel")
            if len(set(tier)) != len(tier):
                raise ValueError(f"tier {i + 1} names a channel twice")
        return value

    @field_validator("summary_every")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be longer than 0")
        return value


# The issue's table. P2 "escalate after 4h" is its resolve timer.
DEFAULT_ROUTING: dict[Severity, SeverityRoute] = {
    Severity.P1: SeverityRoute(ack_within=timedelta(minutes=15), resolve_within=timedelta(hours=1)),
    Severity.P2: SeverityRoute(ack_within=timedelta(hours=1), resolve_within=timedelta(hours=4)),
    Severity.P3: SeverityRoute(ack_within=timedelta(hours=4)),
    Severity.P4: SeverityRoute(summary_only=True, summary_every=timedelta(days=1)),
}


class Routing(_Model):
    P1: SeverityRoute | None = None
    P2: SeverityRoute | None = None
    P3: SeverityRoute | None = None
    P4: SeverityRoute | None = None


class AlertsConfig(_Model):
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    routing: Routing = Field(default_factory=Routing)
    _source: str = PrivateAttr("(no config: no channels)")

    @property
    def source(self) -> str:
        return self._source

    @field_validator("channels")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in value if not _CHANNEL_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"channel names must match [a-z0-9][a-z0-9_-]*: {bad}")
        return value

    def route(self, severity: Severity) -> SeverityRoute:
        """The effective route: the file's fields over the default table's."""
        default = DEFAULT_ROUTING[severity]
        given = getattr(self.routing, severity.value)
        if given is None:
            return default
        merged = default.model_dump()
        merged.update({name: getattr(given, name) for name in given.model_fields_set})
        return SeverityRoute.model_validate(merged)

    def channel(self, name: str) -> Any:
        try:
            return self.channels[name]
        except KeyError:
            raise KeyError(f"no alert channel named {name!r} in {self.source}") from None


def plan_for(config: AlertsConfig, severity: Severity) -> AlertPlan:
    route = config.route(severity)
    return AlertPlan(
        severity=severity,
        ack_within=route.ack_within.total_seconds() if route.ack_within is not None else None,
        resolve_within=route.resolve_within.total_seconds() if route.resolve_within is not None else None,
        tiers=[list(t) for t in route.tiers],
        summary_only=route.summary_only,
        summary_every=route.summary_every.total_seconds(),
    )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # Drop the discriminator tag pydantic inserts: channels.<name>.<type>.<field>.
    if len(parts) > 2 and parts[0] == "channels" and parts[2] in CHANNEL_TYPES:
        del parts[2]
    return ".".join(parts) or "(top level)"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "union_tag_invalid":
            message = f"unknown channel type (use one of: {', '.join(CHANNEL_TYPES)})"
        elif err["type"] == "union_tag_not_found":
            message = f"missing `type` (one of: {', '.join(CHANNEL_TYPES)})"
        problems.append(f"{_loc(tuple(err['loc']))}: {message}")
    return problems


def _semantic_problems(config: AlertsConfig, env: dict[str, str]) -> list[str]:
    problems: list[str] = []
    for name, channel in config.channels.items():
        # Each credential exactly once, in either form (`field: REF` or `field_env: NAME`).
        for field, env_field in channel.SECRET_FIELDS:
            given = [f for f in (field, env_field) if getattr(channel, f, None) is not None]
            optional = field == "password"  # e-mail without AUTH has none
            if len(given) > 1 or (not given and not optional):
                problems.append(f"channels.{name}: give exactly one of `{field}` or `{env_field}`")
        if isinstance(channel, EmailChannel):
            has_password = channel.secret_ref("password") is not None
            if channel.username and not has_password:
                problems.append(f"channels.{name}.password: required with `username` ({REF_FORMS})")
            if has_password and not channel.username:
                problems.append(f"channels.{name}.username: required with `password`")
            if channel.username and not channel.starttls:
                problems.append(f"channels.{name}.starttls: AUTH is only sent over STARTTLS; set `starttls: true`")
        if isinstance(channel, JiraChannel) and channel.auth == "basic" and not channel.email:
            problems.append(f"channels.{name}.email: required for `auth: basic` (the account's e-mail)")
        for field, ref in channel.secret_refs().items():
            # Resolved here only to fail early (the worker checks at start); the value is
            # dropped at once and resolved again by the activity that sends.
            try:
                value = resolve(ref, env=env)
            except SecretUnavailable as exc:
                reason = exc.reason.removesuffix(" in the worker")
                shown = "" if field.endswith("_env") else f"{ref.describe()}: "
                problems.append(f"channels.{name}.{field}: {shown}{reason}")
                continue
            if field in ("url", "url_env"):
                try:
                    check_url(value, inline=False)
                except ValueError as exc:
                    label = (ref.from_env or "") if field.endswith("_env") else ref.describe()
                    problems.append(f"channels.{name}.{field}: {label}: {exc}")
    for severity in Severity:
        given = getattr(config.routing, severity.value)
        if given is None:
            continue
        for i, tier in enumerate(given.tiers):
            for j, channel_name in enumerate(tier):
                if channel_name not in config.channels:
                    defined = ", ".join(sorted(config.channels)) or "none"
                    problems.append(
                        f"routing.{severity.value}.tiers.{i}.{j}: unknown channel {channel_name!r} (defined: {defined})"
                    )
    return problems


def parse_alerts_config(data: Any, *, source: str = "alerts config", env: dict[str, str] | None = None) -> AlertsConfig:
    """Validate parsed YAML; raise AlertConfigError listing every problem with its path."""
    env = dict(os.environ if env is None else env)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AlertConfigError(
            source, [f"(top level): expected a mapping with `channels` and `routing`, got {type(data).__name__}"]
        )
    try:
        config = AlertsConfig.model_validate(data)
    except ValidationError as exc:
        raise AlertConfigError(source, _pydantic_problems(exc)) from None
    problems = _semantic_problems(config, env)
    if problems:
        raise AlertConfigError(source, problems)
    config._source = source
    return config


def load_alerts_config(env: dict[str, str] | None = None) -> AlertsConfig:
    """The routing file named by SECFLOW_ALERTS_CONFIG, validated; no variable: no channels."""
    env = dict(os.environ if env is None else env)
    path_text = env.get(ENV_VAR, "").strip()
    if not path_text:
        return AlertsConfig()
    path = Path(path_text)
    source = f"{ENV_VAR}={path_text}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AlertConfigError(source, [f"(file): cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise AlertConfigError(source, [f"(file): not valid YAML: {where}{getattr(exc, 'problem', None) or exc}"]) from None
    return parse_alerts_config(data, source=source, env=env)
