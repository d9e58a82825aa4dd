"""SecFlow's database, as a package of repositories over one connection pool.

    core.py          FindingsStore and open_store: connections, transactions, migrations,
                     and the tables it owns (findings, assessment links, scan locks, the
                     error ledger, per-target outcomes, documents by digest)
    dead_letters.py  store.dead_letters: the dead-letter queue (secflow.dead_letters)
    deliveries.py    store.deliveries: alert deliveries (secflow.alerting.deliveries)
    breakers.py      store.breakers: circuit-breaker rows (secflow.http.breaker_store)
    audit.py         store.audit: the decisions audit trail (secflow.approvals)
    recovery.py      store.recovery: ladder rungs on error events, recovery validations
                     (secflow.ladder, secflow.recovery; migration 13)

Only modules of this package use the store's connections and private helpers (`_write`,
`_connection`, `_x`, `_dialect`, `_ts`, ...); everything else calls a public method of
`FindingsStore` or of one of its repositories (tests/test_layering.py checks it).
"""

from secflow.store.core import (
    BUSY_TIMEOUT_ENV,
    DATA_DIR_ENV,
    DB_URL_ENV,
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    MAX_LOCK_CONFLICTS,
    MIGRATIONS,
    PG_LOCK_QUEUE_KEY,
    PG_MIGRATION_LOCK_KEY,
    POSTGRES_DIALECT,
    SQLITE_DIALECT,
    BulkLockResult,
    DbLocation,
    Dialect,
    ErrorEvent,
    FindingsStore,
    LockInfo,
    LockResult,
    Migration,
    TargetOutcome,
    UpsertResult,
    default_db_url,
    document_digest,
    open_store,
    parse_db_url,
)

__all__ = [
    "BUSY_TIMEOUT_ENV",
    "DATA_DIR_ENV",
    "DB_URL_ENV",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "MAX_LOCK_CONFLICTS",
    "MIGRATIONS",
    "PG_LOCK_QUEUE_KEY",
    "PG_MIGRATION_LOCK_KEY",
    "POSTGRES_DIALECT",
    "SQLITE_DIALECT",
    "BulkLockResult",
    "DbLocation",
    "Dialect",
    "ErrorEvent",
    "FindingsStore",
    "LockInfo",
    "LockResult",
    "Migration",
    "TargetOutcome",
    "UpsertResult",
    "default_db_url",
    "document_digest",
    "open_store",
    "parse_db_url",
]
