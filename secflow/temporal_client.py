"""Connecting to Temporal the SecFlow way: encrypted pydantic payloads, the connection
(address, namespace, API key, TLS/mTLS) from Temporal's environment configuration, search
attributes present.

Every SecFlow process (worker, starter, codec server, tests, benchmarks) connects through
`connect`, so all of them write the same encrypted payloads (secflow/codec.py).

The connection settings come from `temporalio.envconfig`, the same sources the `temporal`
CLI reads: a TOML config file (`TEMPORAL_CONFIG_FILE`, default
`~/.config/temporalio/temporal.toml`) and its profile (`TEMPORAL_PROFILE`, default
`default`), overridden by `TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`,
`TEMPORAL_TLS`, `TEMPORAL_TLS_*` and `TEMPORAL_GRPC_META_*` (docs/codec.md, "Connecting to a
secured cluster").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError

from secflow.codec import data_converter_for
from secflow.settings import Settings

# Custom search attributes the workflows upsert; Web UI users filter on them.
SEARCH_ATTRIBUTES: dict[str, IndexedValueType.ValueType] = {
    "SecflowStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "SecflowAwaiting": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    "SecflowIncidentSeverity": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "SecflowIncidentState": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}


class ConnectConfigError(ValueError):
    """Bad Temporal connection configuration; the message names the variable or file."""


def load_connect_config(env: Mapping[str, str]) -> dict[str, Any]:
    """`Client.connect` keyword arguments from Temporal's environment configuration.

    Certificates named by path are read here, so a missing one is reported before anything
    connects. Returns only what is configured (`target_host`, `namespace`, `api_key`,
    `tls`, `rpc_metadata`).
    """
    config_file = env.get("TEMPORAL_CONFIG_FILE", "").strip()
    if config_file and not Path(config_file).expanduser().is_file():
        raise ConnectConfigError(f"TEMPORAL_CONFIG_FILE: {config_file}: no such file")
    try:
        profile = ClientConfigProfile.load(override_env_vars=dict(env))
    except Exception as exc:  # the SDK's ConfigError is not importable by name: say what it said
        where = f"TEMPORAL_CONFIG_FILE {config_file}" if config_file else "Temporal client configuration"
        reason = " ".join(str(exc).split())  # a TOML parse error spans lines; the message is one
        raise ConnectConfigError(f"{where} (profile {env.get('TEMPORAL_PROFILE') or 'default'}): {reason}") from None
    try:
        return dict(profile.to_client_connect_config())
    except OSError as exc:
        name = getattr(exc, "filename", None) or ""
        raise ConnectConfigError(f"TLS certificate or key {name}: {exc.strerror or exc}") from None


async def connect(settings: Settings) -> Client:
    """A client with SecFlow's data converter (encrypting unless SECFLOW_CODEC=off)."""
    options = dict(settings.temporal_connect)
    options.pop("target_host", None)
    options.pop("namespace", None)
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=data_converter_for(settings),
        **options,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register any missing SecFlow search attribute; return the names added.

    A workflow upserting an unregistered attribute would fail every workflow task, so
    the worker makes sure before it polls. Idempotent and safe to race with another worker.
    """
    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = {name: kind for name, kind in SEARCH_ATTRIBUTES.items() if name not in known}
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as err:
        if "already" not in str(err).lower():
            raise
    return sorted(missing)
