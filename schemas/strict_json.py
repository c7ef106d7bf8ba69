"""Reading JSON from outside without guessing: bounded nesting, no duplicate keys. No I/O.

Two JSON parsers read a request body: pydantic's (``model_validate_json``) and the standard
library's ``json``. They differ where JSON itself is vague, and a difference between them is a
place where a hostile message can mean one thing to one reader and another to the next:

- **nesting**: ``json.loads`` raises ``RecursionError`` at about 1,000 levels, pydantic's
  parser fails with "recursion limit exceeded" at a few hundred. A request needs a handful of
  levels, so bodies nested deeper than :data:`MAX_DEPTH` are refused *before* either parser
  sees them (:func:`too_deep`, a scan that costs under a microsecond for a typical body);
- **duplicate keys**: both parsers let the last value win; a request with a key twice in one
  object is refused, naming the key (:func:`duplicate_key`).

:func:`read_object` is the never-raising reader for operator tools (``status``, ``dlq``):
any bytes in, a dict or a reason out. :func:`top_level_strings` salvages the top-level string
fields of a body that cannot be parsed at all (too deep, duplicated keys, broken JSON), so a
refusal can still be sent to the body's ``reply_to``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "DuplicateKey",
    "duplicate_key",
    "read_object",
    "too_deep",
    "top_level_strings",
]

#: Deepest nesting of objects and arrays a body may have. A request needs 4 (envelope,
#: payload, items, item); the margin is for future fields, not for data.
MAX_DEPTH: Final = 32

_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """True if objects and arrays in ``text`` nest deeper than ``limit``.

    Fast path: fewer brackets than the limit cannot nest deeper (two ``str.count`` calls).
    Otherwise strings are cut out (brackets inside them do not count) and the running depth
    of the remaining brackets is measured, all in C loops. Broken JSON gives some depth too;
    the parser then reports what is broken.
    """
    if text.count("{") + text.count("[") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


class DuplicateKey(ValueError):
    """A key appears twice in one JSON object; ``loc`` is its path (keys and list indexes)."""

    def __init__(self, key: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.loc = loc or (key,)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


class _Pairs(list):
    """An object as parsed, every pair kept (used only to locate a duplicate)."""


def _locate(value: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, item in value:
            if key in seen:
                return (*loc, key)
            seen.add(key)
        children: Iterable[tuple[str | int, Any]] = value
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return None
    for step, item in children:
        found = _locate(item, (*loc, step))
        if found is not None:
            return found
    return None


def duplicate_key(text: str) -> Any:
    """Parse ``text`` (nested at most :data:`MAX_DEPTH`: call :func:`too_deep` first) with
    the standard library and return the value.

    Raises:
        DuplicateKey: a key appears twice in one object; ``loc`` is the path to it.
        ValueError: not JSON (``json.JSONDecodeError``, or too many digits in an integer).
    """
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except DuplicateKey as exc:
        # The hook sees objects innermost first and does not know where they are: the error
        # path parses again, keeping every pair, to name the duplicate's path.
        loc = _locate(json.loads(text, object_pairs_hook=_Pairs), ())
        raise DuplicateKey(exc.key, loc or ()) from None


def read_object(data: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """``(object, "")``, or ``(None, why it is unreadable)``. Never raises, whatever ``data``."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    else:
        text = data
    if too_deep(text):
        return None, f"JSON nested deeper than {MAX_DEPTH} levels"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: cannot happen, by the scan
        return None, f"not JSON ({type(exc).__name__}: {str(exc)[:120]})"
    if not isinstance(value, dict):
        return None, f"JSON {type(value).__name__}, not an object"
    return value, ""


# One token of a JSON text: a key (string then colon), a string value, or a bracket.
_TOKEN: Final = re.compile(r'("(?:[^"\\]|\\.)*")\s*:|("(?:[^"\\]|\\.)*")|([\[{])|([\]}])',
                           re.DOTALL)


def _unquote(token: str) -> str | None:
    if "\\" not in token:
        return token[1:-1]
    try:
        value = json.loads(token)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def top_level_strings(text: str, wanted: frozenset[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """String values at the ``wanted`` key paths (e.g. ``("reply_to",)``,
    ``("payload", "type")``) of a body that may be too deep, hold duplicate keys or be broken.

    A value is returned only when its path holds one string, or the same string each time:
    of two different ``reply_to`` values neither can be trusted. Never raises; the cost is one
    regular-expression scan of the text, paid only for a body already refused.
    """
    longest = max((len(p) for p in wanted), default=0)
    found: dict[tuple[str, ...], set[str]] = {}
    path: list[str | None] = []  # the key of each open container (None: the outermost one,
    key: str | None = None       # or an element of an array)
    root_is_object = text.lstrip()[:1] == "{"
    for m in _TOKEN.finditer(text):
        k, s, opening, closing = m.groups()
        if k is not None:
            key = _unquote(k)
            continue
        if s is not None:
            if key is not None and path and len(path) <= longest:
                here = (*path[1:], key)
                if here in wanted:
                    value = _unquote(s)
                    if value is not None:
                        found.setdefault(here, set()).add(value)  # type: ignore[arg-type]
        elif opening is not None:
            path.append(key)
        elif path:
            path.pop()
        key = None
    if not root_is_object:
        return {}
    return {p: next(iter(v)) for p, v in found.items() if len(v) == 1}
