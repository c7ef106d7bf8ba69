"""The eSZIG card contract: the applet's APDUs, and the challenge/answer messages on the broker.

Pure data, no I/O. The virtual card (``simulator/card``) implements the applet; the card bridge
(``card_bridge``) drives it through PC/SC or in-process; the workers send challenges and read
answers. The real eSZIG applet is not public: this is the project's own, modelled on ISO 7816-4
and on what the eSzemélyi card does (6-digit PIN, CAN after 2 wrong tries, PUK to unblock).

APDU summary (short APDUs; CLA 00)::

    SELECT applet          00 A4 04 00 0A <AID>                  -> 9000
    SELECT file            00 A4 02 0C 02 <FID>                  -> 9000 | 6A82
    READ BINARY            00 B0 <off hi> <off lo> <Le>          -> data 9000 | 6B00
    VERIFY PIN             00 20 00 81 06 <6 ASCII digits>       -> 9000 | 63Cx | 6985 | 6983
    VERIFY PIN (status)    00 20 00 81                           -> 9000 (verified) | 63Cx | 6985 | 6983
    VERIFY CAN             00 20 00 82 06 <6 ASCII digits>       -> 9000 | 6A80
    RESET RETRY COUNTER    00 2C 00 81 0E <8-digit PUK><6-digit new PIN> -> 9000 | 63Cx | 6983
    INTERNAL AUTHENTICATE  00 88 00 00 20 <32-byte nonce> 00     -> ECDSA-P256-SHA256 DER sig 9000 | 6982

PIN rules: 3 tries. After 2 wrong tries the PIN is suspended (6985) until the CAN is verified;
then one last try; a third wrong PIN blocks it (6983) until RESET RETRY COUNTER with the PUK
(10 tries), which also sets a new PIN. A correct PIN resets the counter. The verified state lasts
until the card is powered off (disconnect), as on a real card.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# --- the applet ---------------------------------------------------------------------------------
AID: Final = bytes.fromhex("A000000777455A494701")  # project-private RID + "EZIG" + 01
FID_CERTIFICATE: Final = bytes.fromhex("C001")  # DER X.509 of the card's authentication key
FID_DOCUMENT: Final = bytes.fromhex("D001")  # UTF-8 JSON: name, document_id, taj, card_serial
PIN_LENGTH: Final = 6
CAN_LENGTH: Final = 6
PUK_LENGTH: Final = 8
PIN_TRIES: Final = 3
PUK_TRIES: Final = 10
NONCE_LENGTH: Final = 32
MAX_READ: Final = 0xE0  # bytes per READ BINARY

INS_SELECT: Final = 0xA4
INS_READ_BINARY: Final = 0xB0
INS_VERIFY: Final = 0x20
INS_RESET_RETRY_COUNTER: Final = 0x2C
INS_INTERNAL_AUTHENTICATE: Final = 0x88
P2_PIN: Final = 0x81
P2_CAN: Final = 0x82


class SW(enum.IntEnum):
    """Status words the applet answers with (ISO 7816-4 meanings)."""

    OK = 0x9000
    WRONG_PIN = 0x63C0  # low nibble: tries left (63Cx)
    SECURITY_NOT_SATISFIED = 0x6982  # INTERNAL AUTHENTICATE before VERIFY PIN
    BLOCKED = 0x6983  # PIN (or PUK) blocked
    CAN_REQUIRED = 0x6985  # conditions of use: verify the CAN first
    WRONG_DATA = 0x6A80  # wrong CAN, malformed data
    FILE_NOT_FOUND = 0x6A82
    WRONG_LENGTH = 0x6700
    WRONG_OFFSET = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NOT_SELECTED = 0x6999  # applet not selected


# --- messages on the broker ---------------------------------------------------------------------
#: direct exchange; routing key = workstation id; one queue per workstation: eeszt.card.<WS>
CARD_EXCHANGE: Final = "eeszt.card"
#: where bridges' answers (and the workers' own login events) land; consumed by the workers.
#: Bridges publish to exchange ``schemas.wire.LOGIN_EXCHANGE`` with key ``LOGIN_ANSWER_KEY``.
LOGIN_ANSWERS_QUEUE: Final = "eeszt.login.answers"


def workstation_queue(workstation: str) -> str:
    return f"{CARD_EXCHANGE}.{workstation}"


class LoginMethod(str, enum.Enum):
    """How a doctor logs in at the workstation: the bridge's setting (``--login-method``), not
    the gateway's. Either way the eID server hands the bridge an rID that records the method."""

    ESZIG = "eszig"  # card + PIN: the card signs the package's nonce (POST /eid/authenticate)
    MOBILTOKEN = "mobiltoken"  # the doctor types the phone's code (POST /eid/mobiltoken)


class CardChallenge(BaseModel):
    """Sent by a worker to one workstation's queue, signed with the gateway's challenge key.

    Every doctor login is one challenge with EESZT's eID request package; the workstation
    decides how the doctor proves who they are (card or MobilToken) and answers with an rID.
    ``signature`` is Ed25519 over :meth:`signing_bytes` (every other field). The bridge pins the
    gateway's public key and refuses anything else, expired, or seen before.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    challenge_id: UUID
    user_id: str
    workstation: str
    institution: str
    purpose: str = Field(description="shown to the doctor: who asks and why")
    eid_package: str = Field(description="EESZT's eID request package (opaque to the gateway)")
    created_at: AwareDatetime
    expires_at: AwareDatetime
    signature: str = ""

    def signing_bytes(self) -> bytes:
        return self.model_copy(update={"signature": ""}).model_dump_json().encode()


class CardErrorCode(str, enum.Enum):
    NO_READER = "no_reader"
    NO_CARD = "no_card"
    WRONG_PIN = "wrong_pin"
    CAN_REQUIRED = "can_required"
    PIN_BLOCKED = "pin_blocked"
    CARD_NOT_ACTIVATED = "card_not_activated"
    WRONG_CODE = "wrong_code"  # the eID server refused the MobilToken code (wrong, used, late)
    MOBILTOKEN_NOT_ENROLLED = "mobiltoken_not_enrolled"  # the doctor has no MobilToken
    EID_UNREACHABLE = "eid_unreachable"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REFUSED = "refused"  # the challenge itself was refused (signature, expiry, replay)
    CARD_ERROR = "card_error"  # anything else the card or eID server said


class CardAnswer(BaseModel):
    """A bridge's answer to one challenge: an rID, or an error.

    Never carries a PIN, CAN, PUK, MobilToken code or key (``extra="forbid"``: an answer with
    any other field is refused). ``method`` is informational (what the workstation did); the
    STS takes the method from the rID the eID server signed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    challenge_id: UUID
    user_id: str
    workstation: str
    outcome: Literal["rid", "error"]
    rid_package: str | None = None
    method: LoginMethod | None = None
    error: CardErrorCode | None = None
    tries_left: int | None = None
    message: str = ""
    at: datetime
