"""The alert routing file: which channels exist, and who is told what, when.

Named by ``SECFLOW_ALERTS_CONFIG`` (YAML; format and a full example in the README,
"Alerts and channels"). Without it SecFlow has no channels: incidents still open and
escalate on the default timers, but every plan has empty tiers, so nobody is told.

Secrets never sit in the file: a channel names the environment variable that holds each
one (``token_env``, ``secret_env``, ``routing_key_env``, ``password_env``, ``url_env``
for Slack webhook URLs, which carry their token in the path). `load_alerts_config()`
checks the structure (pydantic, unknown keys refused), that every channel named in the
routing exists, that every named variable is set, and that URLs are http(s) URLs without
credentials; every problem is reported with its field path:

    channels.ops-pager.routing_key_env: environment variable SECFLOW_PD_KEY is not set
    routing.P1.tiers.0.1: unknown channel 'pagerdutty' (defined: ops-pager, team-slack)

The worker validates it at start and refuses to run with a bad file (worker.py).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from secflow.durations import parse_duration
from secflow.incidents import AlertPlan, Severity

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


def check_url(value: str) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {_shown(text)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials; put secrets in an environment variable (`*_env`)")
    try:
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise ValueError(f"bad port in URL {_shown(text)!r}") from None
    return text


def _shown(url: str) -> str:
    # Never echo a secret back in an error: show the scheme and host only.
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}/..." if parts.scheme else url[:40]


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value or ""):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]
Url = Annotated[str, BeforeValidator(check_url)]


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

    def secret_envs(self) -> dict[str, str]:
        """field name -> environment variable, for every secret this channel needs."""
        return {}


class SlackChannel(_ChannelBase):
    """A Slack incoming webhook. Its URL holds the token: prefer `url_env`."""

    type: Literal["slack"]
    url: Url | None = None
    url_env: EnvName | None = None

    def secret_envs(self) -> dict[str, str]:
        return {"url_env": self.url_env} if self.url_env else {}


class WebhookChannel(_ChannelBase):
    """A generic JSON webhook, signed with HMAC-SHA256 under the secret in `secret_env`."""

    type: Literal["webhook"]
    url: Url | None = None
    url_env: EnvName | None = None
    secret_env: EnvName

    def secret_envs(self) -> dict[str, str]:
        found = {"secret_env": self.secret_env}
        if self.url_env:
            found["url_env"] = self.url_env
        return found


class PagerDutyChannel(_ChannelBase):
    """PagerDuty Events API v2."""

    type: Literal["pagerduty"]
    base_url: Url = "https://events.pagerduty.com"
    routing_key_env: EnvName
    source: str = "secflow"

    def secret_envs(self) -> dict[str, str]:
        return {"routing_key_env": self.routing_key_env}


class EmailChannel(_ChannelBase):
    """Plain-text e-mail over SMTP; STARTTLS with certificate verification, then AUTH."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    ca_file: Path | None = None  # verify the server against this CA bundle (default: system CAs)
    username: str | None = None
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

    def secret_envs(self) -> dict[str, str]:
        return {"password_env": self.password_env} if self.password_env else {}


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
    token_env: EnvName
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

    def secret_envs(self) -> dict[str, str]:
        return {"token_env": self.token_env}


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
        if isinstance(channel, (SlackChannel, WebhookChannel)):
            if (channel.url is None) == (channel.url_env is None):
                problems.append(f"channels.{name}: give exactly one of `url` or `url_env`")
        if isinstance(channel, EmailChannel):
            if channel.username and not channel.password_env:
                problems.append(f"channels.{name}.password_env: required with `username`")
            if channel.password_env and not channel.username:
                problems.append(f"channels.{name}.username: required with `password_env`")
            if channel.username and not channel.starttls:
                problems.append(f"channels.{name}.starttls: AUTH is only sent over STARTTLS; set `starttls: true`")
        if isinstance(channel, JiraChannel) and channel.auth == "basic" and not channel.email:
            problems.append(f"channels.{name}.email: required for `auth: basic` (the account's e-mail)")
        for field, variable in channel.secret_envs().items():
            value = env.get(variable, "")
            if not value.strip():
                problems.append(f"channels.{name}.{field}: environment variable {variable} is not set")
            elif field == "url_env":
                try:
                    check_url(value)
                except ValueError as exc:
                    problems.append(f"channels.{name}.{field}: {variable}: {exc}")
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


def secret(env_name: str) -> str:
    """A channel's secret, read when it is used (never stored on the config object)."""
    value = os.environ.get(env_name, "").strip()
    if not value:
        raise KeyError(env_name)
    return value
