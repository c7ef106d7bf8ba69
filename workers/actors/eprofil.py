"""eProfil: update a patient's summary (allergies, chronic conditions, blood type), in the doctor's name."""

from schemas.wire import INTERACTIVE_QUEUE

ACTOR = "eProfil"
QUEUE = INTERACTIVE_QUEUE
#: dramatiq priority: lower runs first; interactive work overtakes prefetched batch work
PRIORITY = 0
