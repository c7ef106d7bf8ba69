"""Card and login errors, one class per answer the bridge can give.

::

    CardError (code: schemas.card.CardErrorCode)
    ├── NoReader            no PC/SC reader (or pcscd is not running)
    ├── NoCard              no card in the reader, or it was removed mid-login
    ├── WrongPin            the card refused the PIN; ``tries_left``
    ├── CanRequired         two wrong PINs: the CAN is needed before the last try
    ├── PinBlocked          three wrong PINs: unblock with the PUK
    ├── CardNotActivated    the eID server does not know this card as the user's, activated
    ├── WrongCode           the eID server refused the MobilToken code (wrong, used, too old)
    ├── MobilTokenNotEnrolled  the doctor has no MobilToken registered
    ├── EidUnreachable      the eID server did not answer
    ├── Cancelled           the doctor cancelled the prompt
    ├── TimedOut            nobody answered the prompt, or no card came, in time
    └── ChallengeRefused    the challenge itself was refused (signature, expiry, replay)

pyscard's exceptions are translated in :mod:`card_bridge.card`, and nowhere else.
"""

from __future__ import annotations

from schemas.card import CardErrorCode


class CardError(Exception):
    code: CardErrorCode = CardErrorCode.CARD_ERROR

    def __init__(self, message: str = "", *, tries_left: int | None = None) -> None:
        super().__init__(message or self.code.value)
        self.message = message or self.code.value
        self.tries_left = tries_left


class NoReader(CardError):
    code = CardErrorCode.NO_READER


class NoCard(CardError):
    code = CardErrorCode.NO_CARD


class WrongPin(CardError):
    code = CardErrorCode.WRONG_PIN


class CanRequired(CardError):
    code = CardErrorCode.CAN_REQUIRED


class PinBlocked(CardError):
    code = CardErrorCode.PIN_BLOCKED


class CardNotActivated(CardError):
    code = CardErrorCode.CARD_NOT_ACTIVATED


class WrongCode(CardError):
    code = CardErrorCode.WRONG_CODE


class MobilTokenNotEnrolled(CardError):
    code = CardErrorCode.MOBILTOKEN_NOT_ENROLLED


class EidUnreachable(CardError):
    code = CardErrorCode.EID_UNREACHABLE


class Cancelled(CardError):
    code = CardErrorCode.CANCELLED


class TimedOut(CardError):
    code = CardErrorCode.TIMED_OUT


class ChallengeRefused(CardError):
    code = CardErrorCode.REFUSED
