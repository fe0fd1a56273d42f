"""Durable state: processed transactions, each plugin's own data, the audit log.

One interface, :class:`Store` (asynchronous, so a networked store fits it),
with an embedded default, :class:`SqliteStore` (the file named by ``[store]
path``), chosen by :func:`store_from_config`. Plugins see their own slice as
``context.store`` (a :class:`PluginStore`). A homeserver transaction's writes
are one unit of work (:class:`Batch`, :func:`unit_of_work`), committed with its
record.
"""

from servletkit.store.factory import store_from_config
from servletkit.store.interface import AuditRecord, ProcessedTransaction, Store, StoreClosedError
from servletkit.store.plugin import PluginStore
from servletkit.store.sqlite import SqliteStore
from servletkit.store.units import (
    Batch,
    audit_record,
    current_batch,
    record_decision,
    unit_of_work,
)

__all__ = [
    "AuditRecord",
    "Batch",
    "PluginStore",
    "ProcessedTransaction",
    "SqliteStore",
    "Store",
    "StoreClosedError",
    "audit_record",
    "current_batch",
    "record_decision",
    "store_from_config",
    "unit_of_work",
]
