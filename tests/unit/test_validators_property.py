"""Property tests of the domain validators: TAJ check digit and BNO code shape."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import BnoCode, Taj, is_valid_bno, is_valid_taj, make_taj, mask_taj, normalize_bno


class Patient(BaseModel):
    taj: Taj


class Diagnosis(BaseModel):
    bno: BnoCode


DIGITS = "0123456789"
eight_digits = st.text(alphabet=DIGITS, min_size=8, max_size=8)
valid_tajs = eight_digits.map(make_taj)


@given(valid_tajs)
def test_generated_taj_is_accepted(taj: str) -> None:
    assert Patient(taj=taj).taj == taj
    assert is_valid_taj(taj)


@given(valid_tajs)
def test_every_single_digit_change_of_a_valid_taj_is_rejected(taj: str) -> None:
    # Given a valid TAJ, when any one digit is replaced by any other digit
    for position in range(9):
        for digit in DIGITS:
            if digit == taj[position]:
                continue
            mutated = taj[:position] + digit + taj[position + 1 :]
            # Then the TAJ type rejects it, on the taj field, as a check-digit error
            with pytest.raises(ValidationError) as info:
                Patient(taj=mutated)
            [error] = info.value.errors()
            assert error["loc"] == ("taj",)
            assert error["type"] == "taj_check_digit"
            assert not is_valid_taj(mutated)


@given(valid_tajs)
def test_check_digit_error_names_the_digit_it_expected(taj: str) -> None:
    wrong = str((int(taj[8]) + 1) % 10)
    with pytest.raises(ValidationError) as info:
        Patient(taj=taj[:8] + wrong)
    assert info.value.errors()[0]["msg"] == f"TAJ check digit is {wrong}, expected {taj[8]}"


@given(st.text(max_size=12).filter(lambda s: not re.fullmatch(r"[0-9]{9}", s)))
def test_anything_but_nine_ascii_digits_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        Patient(taj=text)
    assert info.value.errors()[0]["type"] == "taj_format"


@given(valid_tajs)
def test_mask_keeps_only_the_last_three_digits(taj: str) -> None:
    assert mask_taj(taj) == "******" + taj[-3:]


# --- BNO ----------------------------------------------------------------------------------------

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
heads = st.tuples(st.sampled_from(UPPER), st.text(alphabet=DIGITS, min_size=2, max_size=2)).map(
    "".join
)
tails = st.text(alphabet=DIGITS + UPPER, min_size=0, max_size=2)


@given(heads, tails)
def test_bno_with_or_without_dot_is_accepted_and_stored_without_it(head: str, tail: str) -> None:
    assert Diagnosis(bno=head + tail).bno == head + tail
    if tail:
        assert Diagnosis(bno=f"{head}.{tail}").bno == head + tail
        assert normalize_bno(f"{head}.{tail}") == head + tail


@given(heads, tails)
def test_lowercase_bno_is_rejected(head: str, tail: str) -> None:
    with pytest.raises(ValidationError) as info:
        Diagnosis(bno=head.lower() + tail)
    assert info.value.errors()[0]["loc"] == ("bno",)


@given(st.text(alphabet=DIGITS + UPPER + "abz.-_ ", max_size=8))
def test_bno_type_agrees_with_is_valid_bno(text: str) -> None:
    try:
        Diagnosis(bno=text)
    except ValidationError as exc:
        assert not is_valid_bno(text)
        assert exc.errors()[0]["type"] == "bno_format"
    else:
        assert is_valid_bno(text)
        assert re.fullmatch(r"[A-Z][0-9]{2}(\.?[0-9A-Z]{1,2})?", text)
