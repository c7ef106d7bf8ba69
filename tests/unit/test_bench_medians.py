"""`eeszt-gw bench batch --repeat`: each figure is the median run of its pipeline and latency."""

import pytest

pytest.importorskip("psutil", reason="the bench extra is not installed")

from benchmarks.drain import DrainResult  # noqa: E402
from benchmarks.scenarios import _medians, _paired_ratios  # noqa: E402


def run(kind: str, latency: float, rate: float, processes: int = 2) -> DrainResult:
    return DrainResult(kind=kind, latency_ms=latency, processes=processes, threads=64,
                       events=100, stored=100, complete=True, events_per_s=rate, window_s=1.0,
                       window_events=100, window="ready→last",
                       cpu_us_per_event={"worker": rate}, publish_s=0.1)


def test_the_median_run_is_kept_whole_per_pipeline_and_latency():
    runs = [run("gateway", 20, 300), run("bare", 20, 500), run("gateway", 20, 410),
            run("bare", 20, 450), run("gateway", 20, 380), run("bare", 20, 900),
            run("gateway", 100, 200)]
    picked = {(r.kind, r.latency_ms): r for r in _medians(runs)}
    assert picked[("gateway", 20)].events_per_s == 380
    assert picked[("bare", 20)].events_per_s == 500
    # the figures of one run stay together (CPU of the same run as its events/s)
    assert picked[("bare", 20)].cpu_us_per_event == {"worker": 500}
    assert picked[("gateway", 100)].events_per_s == 200
    assert [(r.kind, r.latency_ms) for r in _medians(runs)] == [
        ("gateway", 20), ("bare", 20), ("gateway", 100)]


def test_an_even_count_keeps_the_lower_middle_run_and_process_counts_stay_apart():
    runs = [run("gateway", 20, 400), run("gateway", 20, 300), run("gateway", 20, 350, processes=4)]
    picked = {(r.kind, r.processes): r.events_per_s for r in _medians(runs)}
    assert picked == {("gateway", 2): 300, ("gateway", 4): 350}


def test_paired_ratios_compare_the_runs_of_one_round():
    rounds = [{("gateway", 20): run("gateway", 20, 270), ("bare", 20): run("bare", 20, 300)},
              {("gateway", 20): run("gateway", 20, 180), ("bare", 20): run("bare", 20, 200)},
              {("gateway", 20): run("gateway", 20, 330)}]  # its bare run is missing: skipped
    assert _paired_ratios(rounds, 20, "bare") == pytest.approx([0.9, 0.9])
    assert _paired_ratios(rounds, 20, "naive") == []
    assert _paired_ratios(rounds, 100, "bare") == []
