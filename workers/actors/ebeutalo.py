"""eBeutaló (eReferral): submit referrals, in the doctor's name."""

from schemas.wire import INTERACTIVE_QUEUE

ACTOR = "eBeutalo"
QUEUE = INTERACTIVE_QUEUE
#: dramatiq priority: lower runs first; interactive work overtakes prefetched batch work
PRIORITY = 0
