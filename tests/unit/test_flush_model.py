"""The flush-policy model (bench/flush_model.py) drives the real policy code correctly.

Deterministic arithmetic of the model, not timings: at loads where the outcome follows from
the rules alone, the model must give exactly that outcome.
"""

from __future__ import annotations

import pytest

from bench.flush_model import Worker, arrival_times, celery_batches, main, project
from worker.flush_policy import FlushPolicy

WORKER = Worker(call_ms=50.0, overhead_ms=5.0, flush_interval_ms=100.0)


def test_arrivals_are_evenly_spaced_or_poisson_with_the_asked_mean() -> None:
    assert arrival_times(10.0, 3, "uniform", seed=1) == pytest.approx([100.0, 200.0, 300.0])
    poisson = arrival_times(10.0, 5000, "poisson", seed=1)
    assert poisson[-1] / len(poisson) == pytest.approx(100.0, rel=0.05)


def test_texts_far_apart_leave_at_once_under_nagle_and_predictive_but_wait_under_interval() -> None:
    arrivals = arrival_times(2.0, 20, "uniform", seed=1)  # 500 ms apart: idle
    for policy in (FlushPolicy.NAGLE, FlushPolicy.PREDICTIVE, FlushPolicy.CONTINUOUS):
        result = project(policy, arrivals, WORKER)
        assert result.calls == 20 and result.p50_ms == pytest.approx(55.0)
    assert project(FlushPolicy.INTERVAL, arrivals, WORKER).p50_ms == pytest.approx(155.0)
    assert celery_batches(arrivals, WORKER).p50_ms == pytest.approx(155.0)


def test_predictive_leaves_with_the_last_text_that_fits_the_interval() -> None:
    # 40 ms apart: texts at 40, 80, 120 share a call that leaves at 120 (the next, at 160,
    # is past 40 + 100); waits 80, 40 and 0.
    arrivals = arrival_times(25.0, 300, "uniform", seed=1)
    result = project(FlushPolicy.PREDICTIVE, arrivals, WORKER)
    assert result.texts_per_call == pytest.approx(3.0, abs=0.05)
    assert sorted(set(round(x) for x in result.latencies_ms[30:60])) == [55, 95, 135]


def test_a_burst_leaves_in_full_batches() -> None:
    arrivals = [0.0] * 64
    assert project(FlushPolicy.INTERVAL, arrivals, WORKER).calls == 8
    assert celery_batches(arrivals, WORKER).calls == 8
    # Under nagle the burst's first text finds the worker idle and leaves alone; the other
    # 63 leave as 7 full calls and one of 7, as in the micro-batcher.
    assert project(FlushPolicy.NAGLE, arrivals, WORKER).calls == 9


def test_the_command_prints_a_row_per_system_and_load() -> None:
    lines: list[str] = []
    main(["--loads", "1,50", "--patterns", "uniform", "--texts", "200"], echo=lines.append)
    rows = [line for line in lines if line.startswith("| uniform |")]
    assert len(rows) == 2 * (1 + len(FlushPolicy))


def test_a_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="flush-model"):
        main(["--policies", "fastest"], echo=lambda _: None)
