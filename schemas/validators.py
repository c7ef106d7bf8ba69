"""Domain validators: TAJ, BNO codes, doctor stamp ids and the project's identifier shapes.

Each ``Annotated`` type below validates a ``str`` field and, when the value is wrong, raises
:class:`pydantic_core.PydanticCustomError`. Pydantic turns that into a ``ValidationError`` whose
``loc`` names the field, whose ``type`` is a stable code (``taj_check_digit``, ``bno_format``, ...)
and whose message says why, e.g. ``TAJ check digit is 3, expected 5``.

The messages never repeat a TAJ or a diagnosis code: validation errors end up in logs and in
replies, and patient data must not (patient identifiers stay out of logs). The shapes match ``soap/common.xsd``, so
a message that passes here also passes the SOAP schema.

Plain helpers (:func:`taj_check_digit`, :func:`is_valid_taj`, :func:`make_taj`, :func:`mask_taj`,
:func:`normalize_bno`, :func:`is_valid_bno`) work without pydantic models. Names without a
leading underscore are public; ``schemas`` re-exports them.
"""

from __future__ import annotations

import re
from datetime import datetime
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from pydantic import AfterValidator, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# `str.isdigit()` also accepts "²" and Arabic-Indic digits; every rule here means ASCII 0-9.
_ASCII_DIGITS: Final = re.compile(r"[0-9]*")


def _is_digits(value: str, length: int) -> bool:
    return len(value) == length and _ASCII_DIGITS.fullmatch(value) is not None


def _string_schema(pattern: str, description: str, *examples: str) -> WithJsonSchema:
    # The validators below give better errors than a pattern would, so the pattern is only
    # documentation for JSON Schema users.
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": pattern,
            "description": description,
            "examples": list(examples),
        }
    )


# --- TAJ ----------------------------------------------------------------------------------------

#: Weights of the first eight TAJ digits; the weighted sum mod 10 is the ninth digit.
TAJ_WEIGHTS: Final = (3, 7, 3, 7, 3, 7, 3, 7)


def taj_check_digit(first8: str) -> int:
    """Return the TAJ check digit for the first eight digits.

    Raises:
        ValueError: ``first8`` is not exactly eight ASCII digits.
    """
    if not _is_digits(first8, 8):
        raise ValueError("the first part of a TAJ must be exactly 8 digits")
    return sum(int(d) * w for d, w in zip(first8, TAJ_WEIGHTS, strict=True)) % 10


def make_taj(first8: str) -> str:
    """Return a valid 9-digit TAJ: ``first8`` followed by its check digit.

    Raises:
        ValueError: ``first8`` is not exactly eight ASCII digits.
    """
    return f"{first8}{taj_check_digit(first8)}"


def is_valid_taj(value: object) -> bool:
    """True if ``value`` is a 9-digit string with a correct check digit. Never raises."""
    if not isinstance(value, str) or not _is_digits(value, 9):
        return False
    return taj_check_digit(value[:8]) == int(value[8])


def mask_taj(taj: str) -> str:
    """Mask a TAJ for logs, keeping only the last 3 characters (``"******789"``).

    Works on any string, valid TAJ or not, and never raises for a ``str``. Strings of 3
    characters or fewer are masked entirely, since the tail would then be the whole value.
    """
    if len(taj) <= 3:
        return "*" * len(taj)
    return "*" * (len(taj) - 3) + taj[-3:]


def _check_taj(value: str) -> str:
    if len(value) != 9:
        raise PydanticCustomError(
            "taj_format",
            "TAJ must be exactly 9 digits; got {length} characters",
            {"length": len(value)},
        )
    if not _is_digits(value, 9):
        raise PydanticCustomError("taj_format", "TAJ must contain only the digits 0-9")
    expected = taj_check_digit(value[:8])
    actual = int(value[8])
    if actual != expected:
        raise PydanticCustomError(
            "taj_check_digit",
            "TAJ check digit is {actual}, expected {expected}",
            {"actual": actual, "expected": expected},
        )
    return value


#: Hungarian social security number: 9 digits, the last one a weighted check digit.
Taj = Annotated[
    str,
    AfterValidator(_check_taj),
    _string_schema(
        "^[0-9]{9}$",
        "TAJ number: 9 digits; the 9th is (sum of digits 1-8 weighted 3,7,3,7,3,7,3,7) mod 10.",
        "111111110",
    ),
]


# --- BNO ----------------------------------------------------------------------------------------

_BNO: Final = re.compile(r"([A-Z][0-9]{2})(?:\.?([0-9A-Z]{1,2}))?")
_BNO_RULE: Final = (
    "a capital letter, 2 digits, then up to 2 more of 0-9 or A-Z (e.g. J069 or J06.9)"
)


def _bno_problem(code: str) -> str | None:
    """Why ``code`` is not a BNO code, or None. Says where, never repeats the code."""
    if _BNO.fullmatch(code):
        return None
    if "." in code and (code.find(".") != 3 or code.count(".") > 1 or len(code) == 4):
        return "a dot is only allowed once, after the 3rd character and before more characters"
    bare = code.replace(".", "")
    if not 3 <= len(bare) <= 5:
        return f"it must be 3 to 5 characters without the dot; got {len(bare)}"
    if not ("A" <= bare[0] <= "Z"):
        return "it must start with a capital letter A-Z"
    if not _is_digits(bare[1:3], 2):
        return "characters 2 and 3 must be digits"
    return "characters 4 and 5 may only be 0-9 or A-Z"


def is_valid_bno(value: object) -> bool:
    """True if ``value`` is a BNO code, with or without the dot after the 3rd character."""
    return isinstance(value, str) and _BNO.fullmatch(value) is not None


def normalize_bno(code: str) -> str:
    """Return the BNO code without its dot (``"J06.9"`` -> ``"J069"``).

    Raises:
        ValueError: ``code`` is not a BNO code; the message says why.
    """
    problem = _bno_problem(code)
    if problem is not None:
        raise ValueError(f"not a BNO code: {problem}")
    return code.replace(".", "")


def _check_bno(value: str) -> str:
    problem = _bno_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "bno_format",
            "BNO code must be {rule}: {problem}",
            {"rule": _BNO_RULE, "problem": problem},
        )
    # The contract (and the SOAP XSD) carry the code without the dot; HIS users type both.
    return value.replace(".", "")


#: BNO (Hungarian ICD-10) code; "J06.9" is accepted and stored as "J069".
BnoCode = Annotated[
    str,
    AfterValidator(_check_bno),
    _string_schema(
        r"^[A-Z][0-9]{2}(\.?[0-9A-Z]{1,2})?$",
        "BNO (Hungarian ICD-10) code; an optional dot after the 3rd "
        "character is removed (J06.9 -> J069).",
        "J069",
        "I10",
    ),
]


# --- doctor stamp number and user id ------------------------------------------------------------


def _stamp_problem(value: str) -> str | None:
    if len(value) != 5:
        return f"it must be exactly 5 digits; got {len(value)} characters"
    if not _is_digits(value, 5):
        return "it must contain only the digits 0-9"
    if value == "00000":
        return "00000 is not issued"
    return None


def _check_stamp(value: str) -> str:
    problem = _stamp_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "stamp_number", "invalid doctor stamp number: {problem}", {"problem": problem}
        )
    return value


def _check_doctor_user_id(value: str) -> str:
    if not value.startswith("O"):
        hint = " (it starts with the digit 0, not the letter O)" if value.startswith("0") else ""
        raise PydanticCustomError(
            "doctor_user_id",
            "doctor user id must be the letter O followed by the 5-digit stamp number, "
            "e.g. O12345{hint}",
            {"hint": hint},
        )
    problem = _stamp_problem(value[1:])
    if problem is not None:
        raise PydanticCustomError(
            "doctor_user_id",
            "doctor user id has an invalid stamp number: {problem}",
            {"problem": problem},
        )
    return value


#: Doctor stamp number (pecsétszám): 5 digits, not 00000. Shape only: the real stamp numbers
#: carry a check digit too, but its rule is not public, so it is not modelled here.
StampNumber = Annotated[
    str,
    AfterValidator(_check_stamp),
    _string_schema(
        "^(?!00000)[0-9]{5}$",
        "Doctor stamp number: 5 digits, not 00000 (shape only).",
        "12345",
    ),
]

#: Doctor user id at EESZT: "O" followed by the stamp number. Shape only, like StampNumber.
DoctorUserId = Annotated[
    str,
    AfterValidator(_check_doctor_user_id),
    _string_schema(
        "^O(?!00000)[0-9]{5}$",
        "Doctor user id: the letter O followed by the 5-digit stamp number.",
        "O12345",
    ),
]


# --- identifier shapes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """``Annotated`` marker for "one character class, then another, with a length range".

    It validates (after the ``str`` check) and describes itself in JSON Schema with the
    equivalent regular expression. The error says which rule broke (the length, or the first
    bad character and its position), so a HIS developer can fix the value without reading a
    regular expression.
    """

    code: str  # the pydantic error type
    label: str
    rule: str  # human-readable; also the JSON Schema description
    rest: str  # character class of every character (after the first, if `first` is given)
    min_len: int
    max_len: int
    example: str
    first: str | None = None
    #: the compiled :attr:`pattern`, once per marker: ``check`` runs several times per request
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    @property
    def pattern(self) -> str:
        if self.first is None:
            return f"^{self.rest}{{{self.min_len},{self.max_len}}}$"
        return f"^{self.first}{self.rest}{{{self.min_len - 1},{self.max_len - 1}}}$"

    def check(self, value: str) -> str:
        if self._regex.match(value) and not value.endswith("\n"):
            return value  # the common case: one compiled match instead of one per character
        ctx = {"label": self.label, "rule": self.rule}
        if not self.min_len <= len(value) <= self.max_len:
            raise PydanticCustomError(
                self.code,
                "{label} must be {rule}; got {length} characters",
                {**ctx, "length": len(value)},
            )
        for pos, char in enumerate(value):
            allowed = self.first if pos == 0 and self.first is not None else self.rest
            if not re.fullmatch(allowed, char):
                raise PydanticCustomError(
                    self.code,
                    "{label} must be {rule}; character {position} ({char}) is not allowed",
                    {**ctx, "position": pos + 1, "char": repr(char)},
                )
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "pattern": self.pattern,
            "description": f"{self.label[0].upper()}{self.label[1:]}: {self.rule}.",
            "examples": [self.example],
        }


_LETTERS_DIGITS: Final = "A-Z, a-z, 0-9"

#: Institution (provider) id as registered at EESZT, e.g. "H100200".
InstitutionId = Annotated[str, _Shape(
    code="institution_id", label="institution id",
    rule="3 to 16 characters of A-Z and 0-9 (e.g. H100200)", rest="[A-Z0-9]", min_len=3,
    max_len=16, example="H100200")]

#: Workstation id: names the card bridge's challenge queue, so it must be a safe queue name.
WorkstationId = Annotated[str, _Shape(
    code="workstation_id", label="workstation id",
    rule=f"1 to 64 characters of {_LETTERS_DIGITS}, '.', '_' or '-', starting with a letter "
         "or digit",
    first="[A-Za-z0-9]", rest="[A-Za-z0-9._-]", min_len=1, max_len=64, example="WS-01")]

#: The HIS's key for "this business action"; the gateway sends each key to EESZT at most once.
IdempotencyKey = Annotated[str, _Shape(
    code="idempotency_key", label="idempotency key",
    rule=f"1 to 128 characters of {_LETTERS_DIGITS}, '.', '_', ':', '/' or '-'",
    rest="[A-Za-z0-9._:/-]", min_len=1, max_len=128, example="his-7/rx/2025-0001")]

#: Routing key of the HIS's own queue on the replies exchange.
ReplyRoutingKey = Annotated[str, _Shape(
    code="reply_routing_key", label="reply routing key",
    rule=f"1 to 128 characters of {_LETTERS_DIGITS}, '.', '_' or '-', starting with a letter "
         "or digit",
    first="[A-Za-z0-9]", rest="[A-Za-z0-9._-]", min_len=1, max_len=128, example="his.h100200")]

#: An id assigned by the submitting HIS (case number, event id, document id); XSD ``LocalId``.
LocalId = Annotated[str, _Shape(
    code="local_id", label="local id",
    rule=f"1 to 64 characters of {_LETTERS_DIGITS}, '.', '_', '/' or '-'",
    rest="[A-Za-z0-9._/-]", min_len=1, max_len=64, example="2025/000123")]

#: Product code from the TTT (the national medicine register): 9 digits.
TttCode = Annotated[str, _Shape(
    code="ttt_code", label="TTT product code", rule="exactly 9 digits", rest="[0-9]",
    min_len=9, max_len=9, example="204957123")]


def ensure_after(value: datetime, earlier: datetime | None, *, code: str, name: str,
                 earlier_name: str) -> datetime:
    """``value`` if it is later than ``earlier`` (or ``earlier`` failed its own validation and
    is None); else a ``code`` error that names both fields and both times."""
    if earlier is not None and value <= earlier:
        raise PydanticCustomError(
            code, "{name} ({value}) must be after {earlier_name} ({earlier})",
            {"name": name, "value": value.isoformat(), "earlier_name": earlier_name,
             "earlier": earlier.isoformat()})
    return value
