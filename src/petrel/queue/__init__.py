"""The durable queue: envelope model, queue ids, the group-committed spool and its recovery."""

from petrel.queue.envelope import (
    DEFERRED,
    DELIVERED,
    FAILED,
    PENDING,
    Envelope,
    Recipient,
)
from petrel.queue.ids import is_valid_queue_id, new_queue_id
from petrel.queue.spool import HEADER_SCAN, CorruptMessageError, MessageWriter, Spool
from petrel.queue.store import QueueStore, QueueWriter, StoreUnavailableError

__all__ = [
    "DEFERRED",
    "DELIVERED",
    "FAILED",
    "HEADER_SCAN",
    "PENDING",
    "CorruptMessageError",
    "Envelope",
    "MessageWriter",
    "QueueStore",
    "QueueWriter",
    "Recipient",
    "Spool",
    "StoreUnavailableError",
    "is_valid_queue_id",
    "new_queue_id",
]
