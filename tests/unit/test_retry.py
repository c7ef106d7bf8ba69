"""RetryPolicy.call: the first try outside tenacity, the rest under it, one bound for all."""

from __future__ import annotations

import pytest

from workers.errors import AmbiguousOutcome, ServiceRejected, ServiceUnavailable
from workers.retry import RetryPolicy

FAST = RetryPolicy(call_attempts=3, call_wait_min_s=0.001, call_wait_max_s=0.002)


def _flaky(failures: list[BaseException], answer: str = "ok"):
    tries: list[int] = []

    def fn(try_number: int) -> str:
        tries.append(try_number)
        if failures:
            raise failures.pop(0)
        return answer

    return fn, tries


def test_a_first_try_that_succeeds_is_the_only_try():
    fn, tries = _flaky([])
    assert FAST.call(fn) == "ok"
    assert tries == [1]


def test_transient_failures_are_tried_again_with_numbered_tries():
    fn, tries = _flaky([ServiceUnavailable("down", service="s"),
                        ServiceUnavailable("down", service="s")])
    assert FAST.call(fn) == "ok"
    assert tries == [1, 2, 3]


def test_the_bound_counts_the_first_try():
    failures = [ServiceUnavailable(f"down {i}", service="s") for i in range(5)]
    fn, tries = _flaky(failures)
    with pytest.raises(ServiceUnavailable, match="down 2"):
        FAST.call(fn)
    assert tries == [1, 2, 3]


@pytest.mark.parametrize("error", [
    AmbiguousOutcome("no answer", service="s"),  # the caller asks EESZT first instead
    ServiceRejected("bad", service="s", code="X"),
    ValueError("a bug"),
])
def test_other_errors_are_not_tried_again(error):
    fn, tries = _flaky([error])
    with pytest.raises(type(error)):
        FAST.call(fn)
    assert tries == [1]


def test_an_ambiguous_outcome_on_a_later_try_stops_the_tries():
    fn, tries = _flaky([ServiceUnavailable("down", service="s"),
                        AmbiguousOutcome("no answer", service="s")])
    with pytest.raises(AmbiguousOutcome):
        FAST.call(fn)
    assert tries == [1, 2]


def test_one_attempt_means_no_retry():
    fn, tries = _flaky([ServiceUnavailable("down", service="s")])
    with pytest.raises(ServiceUnavailable):
        RetryPolicy(call_attempts=1).call(fn)
    assert tries == [1]
