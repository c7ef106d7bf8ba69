"""The PIN prompt seam: how the doctor is asked for the PIN, the CAN or a MobilToken code.

- :class:`TerminalPrompt` (default): shows who asks and why, reads without echo.
- :class:`ScriptedPrompt`: answers from a list, and records what was asked (tests, the demo).

Room is left for two more implementations of :class:`Prompt`: a **PIN-pad reader** (secure PIN
entry: the reader collects the PIN itself through PC/SC ``FEATURE_VERIFY_PIN_DIRECT``, so the PIN
never reaches the host), and a **desktop dialog** on the clinician's session. Neither is built yet.
"""

from __future__ import annotations

import getpass
import sys
import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

Kind = Literal["pin", "can", "otp"]


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the doctor is shown: who asks, for whom, and why."""

    user_id: str
    institution: str
    workstation: str
    purpose: str


class Prompt(Protocol):
    def ask(self, kind: Kind, info: PromptInfo, *, tries_left: int | None, timeout_s: float) -> str | None:
        """The secret typed by the doctor, or None when the doctor cancelled.

        Raises TimeoutError when nobody answered within ``timeout_s``.
        """


LABELS = {"pin": "eSZIG PIN (6 digits)", "can": "CAN printed on the card (6 digits)",
          "otp": "MobilToken code (6 digits)"}


class TerminalPrompt:
    def ask(self, kind: Kind, info: PromptInfo, *, tries_left: int | None, timeout_s: float) -> str | None:
        print(f"\n{info.purpose}\n  user {info.user_id} at {info.workstation} ({info.institution})",
              file=sys.stderr)
        if tries_left is not None:
            print(f"  {tries_left} tries left", file=sys.stderr)
        result: list[str | None] = []

        def read() -> None:
            try:
                result.append(getpass.getpass(f"{LABELS[kind]} (empty to cancel): ") or None)
            except (EOFError, KeyboardInterrupt):
                result.append(None)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout_s)
        if not result:
            raise TimeoutError(f"no {kind} typed within {timeout_s:g}s")
        return result[0]


@dataclass
class ScriptedPrompt:
    """Answers in order; each item is a string, None (cancel) or an exception to raise."""

    answers: list = field(default_factory=list)
    asked: list[tuple[Kind, int | None]] = field(default_factory=list)
    shown: list[PromptInfo] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, kind: Kind, info: PromptInfo, *, tries_left: int | None, timeout_s: float) -> str | None:
        with self._lock:
            self.asked.append((kind, tries_left))
            self.shown.append(info)
            if not self.answers:
                raise TimeoutError("the script has no more answers")
            answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(kind)
        return answer

    def count(self, kind: Kind) -> int:
        return sum(1 for k, _ in self.asked if k == kind)
