"""Environment settings, read in one place (documented in the README)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from secflow.durations import parse_duration


@dataclass(frozen=True)
class Settings:
    temporal_address: str
    namespace: str
    task_queue: str
    data_dir: Path
    shutdown_grace: timedelta
    max_concurrent_activities: int
    # host:port of the worker's Prometheus endpoint (SECFLOW_METRICS_ADDR); None = none.
    metrics_addr: str | None = None
    # Seconds between reaper passes (SECFLOW_REAPER_INTERVAL): workspaces and scan locks
    # left by assessments that are no longer running (secflow/reaper.py).
    reaper_interval: float = 600.0
    # Payload encryption (secflow/codec.py): SECFLOW_CODEC=off turns it off (unsafe);
    # SECFLOW_CODEC_KEYS_FILE names the key ring, else <data dir>/codec-keys.json.
    codec_enabled: bool = True
    codec_keys_file: Path | None = None
    # Client.connect keyword arguments from temporalio.envconfig (profile file,
    # TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_GRPC_META_*): secflow/temporal_client.py.
    # Not in repr: it may hold an API key or a client private key.
    temporal_connect: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def codec_keys_path(self) -> Path:
        return self.codec_keys_file or self.data_dir / "codec-keys.json"

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


class SettingsError(ValueError):
    """A bad environment variable: names the variable and the reason."""


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    try:
        grace = parse_duration(env.get("SECFLOW_SHUTDOWN_GRACE", "10s"))
    except ValueError as exc:
        raise SettingsError(f"SECFLOW_SHUTDOWN_GRACE: {exc}") from None
    raw_max = env.get("SECFLOW_MAX_CONCURRENT_ACTIVITIES", "50")
    try:
        max_activities = int(raw_max)
        if max_activities < 1:
            raise ValueError
    except ValueError:
        raise SettingsError(f"SECFLOW_MAX_CONCURRENT_ACTIVITIES: expected a positive integer, got {raw_max!r}") from None
    metrics_addr = None
    if env.get("SECFLOW_METRICS_ADDR", "").strip():  # secflow.metrics loads the telemetry runtime: only when asked
        try:
            from secflow.metrics import parse_metrics_addr

            metrics_addr = parse_metrics_addr(env["SECFLOW_METRICS_ADDR"])
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    raw_reaper = env.get("SECFLOW_REAPER_INTERVAL", "600")
    try:
        reaper_interval = parse_duration(raw_reaper).total_seconds()
        if not reaper_interval > 0:
            raise ValueError
    except ValueError:
        raise SettingsError(
            f"SECFLOW_REAPER_INTERVAL: expected a positive number of seconds or a duration such as 10m, got {raw_reaper!r}"
        ) from None
    task_queue = env.get("SECFLOW_TASK_QUEUE", "secflow").strip()
    if not task_queue:
        raise SettingsError("SECFLOW_TASK_QUEUE: must not be empty")
    raw_codec = env.get("SECFLOW_CODEC", "on").strip().lower()
    if raw_codec not in ("on", "off"):
        raise SettingsError(f"SECFLOW_CODEC: expected 'on' or 'off', got {env.get('SECFLOW_CODEC')!r}")
    raw_keys = env.get("SECFLOW_CODEC_KEYS_FILE", "").strip()
    from secflow.temporal_client import ConnectConfigError, load_connect_config

    try:
        temporal_connect = load_connect_config(env)
    except ConnectConfigError as exc:
        raise SettingsError(str(exc)) from None
    return Settings(
        temporal_address=str(temporal_connect.get("target_host") or "localhost:7233"),
        namespace=str(temporal_connect.get("namespace") or "default"),
        task_queue=task_queue,
        data_dir=Path(env.get("SECFLOW_DATA_DIR", ".secflow")).resolve(),
        shutdown_grace=grace,
        max_concurrent_activities=max_activities,
        metrics_addr=metrics_addr,
        reaper_interval=reaper_interval,
        codec_enabled=raw_codec == "on",
        codec_keys_file=Path(raw_keys).expanduser().resolve() if raw_keys else None,
        temporal_connect=temporal_connect,
    )


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and its parents) as a directory only this user may enter (0700).

    The data directory holds the store, the codec key ring and workspaces. One that exists
    with looser modes (made by an older SecFlow) is tightened when it is ours; a shared or
    sticky directory (`/tmp`) is never changed, so pointing SECFLOW_DATA_DIR at one by
    mistake cannot lock other users out.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
        path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
    return path


def restrict_new_files() -> None:
    """Everything this process creates from now on is private to its user (files 0600,
    directories 0700): workspaces, scanner output, reports, logs. Called by the worker."""
    os.umask(0o077)
