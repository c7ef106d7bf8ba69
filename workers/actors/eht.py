"""EHT (EHR documents): submit documents, as the institution; mostly overnight batches."""

from schemas.wire import BATCH_QUEUE

ACTOR = "eht"
QUEUE = BATCH_QUEUE
#: dramatiq priority: lower runs first; interactive work overtakes prefetched batch work
PRIORITY = 10
