"""producers.generate: realistic synthetic requests, and the `generate` command."""

from __future__ import annotations

import argparse
import base64
import json
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from producers import MALFORMED_KINDS, generate, parse_line
from producers.cli import add_commands
from schemas import RequestEnvelope, is_valid_bno, is_valid_taj, validation_problems
from schemas.payloads import BATCH_TYPES, INTERACTIVE_TYPES

NOW = datetime(2025, 3, 14, tzinfo=UTC)
MIX = {"prescriptions": 30, "revokes": 5, "referrals": 12, "profiles": 9, "events": 10,
       "documents": 7}


def _parse_all(lines: list[str]) -> list[RequestEnvelope]:
    return [parse_line(line, n) for n, line in enumerate(lines, 1)]


def test_counts_by_type_with_two_lines_per_event() -> None:
    # When a mix is generated
    lines = list(generate(**MIX, seed=1, now=NOW))

    # Then every line is a valid request and the types add up (an event is a start and an end)
    types = Counter(r.message_type for r in _parse_all(lines))
    assert types == {"erecept.submit": 30, "erecept.revoke": 5, "ebeutalo.submit": 12,
                     "eprofil.update": 9, "event.start": 10, "event.end": 10, "ehr.submit": 7}


def test_valid_requests_look_real_and_follow_the_permission_table() -> None:
    # Given a mix spread over 3 doctors
    requests = _parse_all(list(generate(**MIX, doctors=3, seed=2, now=NOW)))

    for r in requests:
        # Then doctors act for eRecept, eBeutaló and eProfil, the institution for events/EHR
        if r.message_type in INTERACTIVE_TYPES:
            assert r.acting.kind == "doctor"
            number = int(r.acting.user_id[1:]) - 10000
            assert 1 <= number <= 3 and r.acting.workstation == f"WS-{number:02d}"
        else:
            assert r.message_type in BATCH_TYPES and r.acting.kind == "institution"
        assert (r.institution, r.reply_to) == ("H100200", "his.demo")
        assert is_valid_taj(r.payload.taj)
        bno = getattr(r.payload, "bno", None)
        assert bno is None or is_valid_bno(bno)
        if r.message_type == "erecept.submit":
            assert all(len(i.product_code) == 9 and i.dosage for i in r.payload.items)
        if r.message_type == "ebeutalo.submit":
            assert r.payload.referrer_stamp == r.acting.user_id[1:]
        if r.message_type == "ehr.submit":
            assert base64.b64decode(r.payload.content_base64).decode().startswith(r.payload.title)


def test_idempotency_keys_are_unique_and_say_what_they_are() -> None:
    # When a mix is generated
    requests = _parse_all(list(generate(**MIX, seed=3, now=NOW)))

    # Then no key repeats and each starts with the kind of request
    keys = [r.idempotency_key for r in requests]
    assert len(set(keys)) == len(keys)
    prefix = {"erecept.submit": "rx-", "erecept.revoke": "rv-", "ebeutalo.submit": "ref-",
              "eprofil.update": "prof-", "event.start": "evs-", "event.end": "eve-",
              "ehr.submit": "doc-"}
    assert all(r.idempotency_key.startswith(prefix[r.message_type]) for r in requests)


def test_every_event_ends_after_it_starts_and_the_end_comes_later_in_the_file() -> None:
    # When events are generated among other requests
    requests = _parse_all(list(generate(prescriptions=20, events=25, seed=4, now=NOW)))

    # Then each event id has one start, then one end with the same times, later in the file
    starts = {r.payload.event_id: (i, r.payload) for i, r in enumerate(requests)
              if r.message_type == "event.start"}
    ends = {r.payload.event_id: (i, r.payload) for i, r in enumerate(requests)
            if r.message_type == "event.end"}
    assert starts.keys() == ends.keys() and len(starts) == 25
    for event_id, (end_at, end) in ends.items():
        start_at, start = starts[event_id]
        assert start_at < end_at
        assert end.started_at == start.started_at < end.ended_at <= NOW
        assert end.event_type == start.event_type


def test_malformed_lines_each_fail_on_a_different_field() -> None:
    # When one malformed line per kind is generated among valid ones
    lines = list(generate(prescriptions=5, malformed=len(MALFORMED_KINDS), seed=5, now=NOW))

    # Then exactly that many lines fail, each with a single problem, all on different fields
    fields = []
    for line in lines:
        try:
            RequestEnvelope.from_json(line)
        except ValidationError as exc:
            problems = validation_problems(exc)
            assert len(problems) == 1, problems
            fields.append(problems[0].field)
    assert sorted(fields) == sorted(MALFORMED_KINDS)
    assert len(set(fields)) == len(fields)
    assert {"payload.taj", "payload.bno", "payload.ended_at", "payload.valid_until"} <= set(fields)


def test_invalid_requests_pass_local_validation_half_of_each_kind() -> None:
    # When only invalid requests are generated
    requests = _parse_all(list(generate(invalid=6, seed=6, now=NOW)))

    # Then they parse, half are revokes (of ids nobody issued), half eRecepts acted by the
    # institution, which EESZT refuses (the doctor role writes eRecept)
    kinds = Counter((r.message_type, r.acting.kind) for r in requests)
    assert kinds == {("erecept.revoke", "doctor"): 3, ("erecept.submit", "institution"): 3}


def test_revokes_name_the_given_prescription_ids() -> None:
    # Given EESZT ids from earlier Accepted replies
    ids = ["RX-0001", "RX-0002"]

    # When revokes are generated, then each names one of them
    requests = _parse_all(list(generate(revokes=8, prescription_ids=ids, seed=7, now=NOW)))
    assert {r.payload.prescription_id for r in requests} <= set(ids)


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    first = list(generate(**MIX, invalid=2, malformed=3, seed=42, now=NOW))
    assert list(generate(**MIX, invalid=2, malformed=3, seed=42, now=NOW)) == first
    assert list(generate(**MIX, invalid=2, malformed=3, seed=43, now=NOW)) != first


def test_lines_leave_created_at_and_deadline_to_publish_time() -> None:
    (line,) = generate(prescriptions=1, seed=8, now=NOW)
    assert not {"created_at", "deadline"} & json.loads(line).keys()


@pytest.mark.parametrize("bad", [{"prescriptions": -1}, {"doctors": 0}, {"doctors": 90_000}])
def test_bad_arguments_raise_value_error_at_once(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate(**bad)


def test_generate_command_writes_the_file_and_a_summary(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the generate command
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "mix.jsonl"
    ns = parser.parse_args(["generate", "--prescriptions", "4", "--events", "2", "--malformed",
                            "1", "--seed", "9", "--out", str(out)])

    # When it runs
    code = ns.func(ns)

    # Then it wrote 4 + 2*2 + 1 lines and said so on stderr
    assert code == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 9
    assert "wrote 9 lines" in capsys.readouterr().err
