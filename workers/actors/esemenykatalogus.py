"""Eseménykatalógus (care-event catalogue): start and end of care events, as the institution; mostly overnight batches."""

from schemas.wire import BATCH_QUEUE

ACTOR = "esemenyKatalogus"
QUEUE = BATCH_QUEUE
#: dramatiq priority: lower runs first; interactive work overtakes prefetched batch work
PRIORITY = 10
