"""Connecting to Temporal the SecFlow way: pydantic payloads, search attributes present."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from secflow.settings import Settings

# Custom search attributes the workflows upsert; Web UI users filter on them.
SEARCH_ATTRIBUTES: dict[str, IndexedValueType.ValueType] = {
    "SecflowStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "SecflowAwaiting": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    "SecflowIncidentSeverity": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "SecflowIncidentState": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
}


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=pydantic_data_converter,
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
