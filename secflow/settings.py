"""Environment settings, read in one place (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

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
    return Settings(
        temporal_address=env.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=env.get("TEMPORAL_NAMESPACE", "default"),
        task_queue=task_queue,
        data_dir=Path(env.get("SECFLOW_DATA_DIR", ".secflow")).resolve(),
        shutdown_grace=grace,
        max_concurrent_activities=max_activities,
        metrics_addr=metrics_addr,
        reaper_interval=reaper_interval,
    )
