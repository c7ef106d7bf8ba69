"""eRecept (ePrescription): submit and revoke prescriptions, in the doctor's name."""

from schemas.wire import INTERACTIVE_QUEUE

ACTOR = "eRecept"
QUEUE = INTERACTIVE_QUEUE
#: dramatiq priority: lower runs first; interactive work overtakes prefetched batch work
PRIORITY = 0
