"""The flush-policy model (bench/flush_model.py) drives the real policy code correctly.

Deterministic arithmetic of the model, not timings: at loads where the outcome follows from
the rules alone, the model must give exactly that outcome.
"""

from __future__ import annotations

import pytest

from bench.fifo_bound import fastest_p50_ms
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


@pytest.mark.parametrize(
    ("texts_per_call", "median_wait_gaps"),
    [
        (1.0, 0),  # every text alone
        (2.0, 1),  # pairs put exactly half at no wait, so the p50 text waits a gap
        (3.0, 1),  # waits 0, 1, 2 gaps
        (5.23, 2),  # a mix of 5s and 6s
        (7.0, 3),  # waits 0..6: four of seven at 3 gaps or less
        (7.5, 3),  # 7s and 8s, just more 7s than 8s
        (8.0, 4),  # waits 0..7: the n // 2-th waits 4 gaps
    ],
)
def test_the_fifo_bound_is_the_median_wait_of_the_best_mix(
    texts_per_call: float, median_wait_gaps: int
) -> None:
    bound = fastest_p50_ms(
        gap_ms=10.0, base_ms=50.0, min_texts_per_call=texts_per_call, batch_size=8
    )
    assert bound == pytest.approx(50.0 + 10.0 * median_wait_gaps)


def test_the_fifo_bound_refuses_more_texts_than_a_call_carries() -> None:
    with pytest.raises(ValueError, match="8 texts"):
        fastest_p50_ms(gap_ms=10.0, base_ms=50.0, min_texts_per_call=8.5, batch_size=8)


@pytest.mark.parametrize("load", [5.0, 10.0, 15.0, 25.0, 40.0, 60.0])
def test_no_modelled_policy_beats_the_fifo_bound(load: float) -> None:
    # The bound is a lower bound: every policy the model runs, at least as full per call,
    # answers no sooner than it.
    rate = 418.0 * load / 100.0
    arrivals = arrival_times(rate, 2000, "uniform", seed=1)
    for policy in FlushPolicy:
        result = project(policy, arrivals, WORKER)
        bound = fastest_p50_ms(
            gap_ms=1000.0 / rate,
            base_ms=WORKER.call_ms + WORKER.overhead_ms,
            min_texts_per_call=result.texts_per_call,
            batch_size=WORKER.batch_size,
        )
        assert result.p50_ms >= bound - 1e-6, (policy, result.texts_per_call)


def test_the_command_prints_the_bound_for_loads_below_capacity() -> None:
    lines: list[str] = []
    main(["--loads", "5,50,120", "--patterns", "uniform", "--texts", "300"], echo=lines.append)
    header = lines.index(next(line for line in lines if line.startswith("| load % |")))
    rows = [line for line in lines[header + 2 :] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == ["5", "50"]
