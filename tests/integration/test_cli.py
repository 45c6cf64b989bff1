"""``embed-file`` end to end: a real CLI process, the queue, a real worker and the stub API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import wait_for
from producers.cli import task_id_for
from stubapi.vectors import vector_for
from tests.integration.harness import REPO_ROOT, TEST_REDIS_URL

pytestmark = pytest.mark.integration

DIMS = 16


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env["REDIS_URL"] = TEST_REDIS_URL
    return env


def _cli_argv(*args: str, timeout_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "producers.cli",
        *args,
        "--no-progress",
        "--timeout",
        str(timeout_s),
    ]


def _run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli_argv(*args, timeout_s=timeout_s),
        cwd=REPO_ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_jsonl_file_is_embedded_with_its_bad_line_reported_and_a_rerun_resumes(
    start_worker, stub, tmp_path
):
    start_worker(stub.base_url)
    docs = [{"id": f"doc-{i}", "text": f"backfilled document {i}"} for i in range(12)]
    lines = [json.dumps(d) for d in docs]
    lines.insert(5, '{"id": "broken", "text": ')  # line 6
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "corpus.out.jsonl"

    first = _run_cli(str(source), "-o", str(output), "--window", "5")
    assert first.returncode == 1, first.stderr  # one bad line
    assert "line 6: not valid JSON" in first.stderr
    records = _records(output)
    assert sorted(r["line"] for r in records) == list(range(1, 14))  # in finishing order
    by_id = {r["id"]: r for r in records}
    for doc in docs:
        assert by_id[doc["id"]]["embedding"] == pytest.approx(
            vector_for(doc["text"], DIMS), rel=1e-6, abs=1e-7
        )
    assert by_id[6] == {"id": 6, "line": 6, "error": by_id[6]["error"]}
    assert by_id[6]["error"].startswith("line 6: not valid JSON")
    assert stub.stats()["total_inputs"] == 12

    second = _run_cli(str(source), "-o", str(output))
    assert second.returncode == 0, second.stderr
    assert stub.stats()["total_inputs"] == 12  # nothing embedded again
    assert _records(output) == records

    with source.open("a") as f:
        f.write(json.dumps({"id": "doc-new", "text": "added later"}) + "\n")
    third = _run_cli(str(source), "-o", str(output))
    assert third.returncode == 0, third.stderr
    assert stub.stats()["total_inputs"] == 13
    assert _records(output)[-1]["id"] == "doc-new"
    assert _records(output)[-1]["embedding"] == pytest.approx(
        vector_for("added later", DIMS), rel=1e-6, abs=1e-7
    )


def test_a_text_the_api_rejects_is_an_error_line_and_its_neighbours_are_embedded(
    start_worker, stub, tmp_path
):
    start_worker(stub.base_url)
    source = tmp_path / "lines.txt"
    source.write_text("alpha\nthis is __REJECT__ed\ngamma\n")
    output = tmp_path / "lines.out.jsonl"
    done = _run_cli(str(source), "-o", str(output))
    assert done.returncode == 1
    records = sorted(_records(output), key=lambda r: r["line"])
    assert [r["id"] for r in records] == [1, 2, 3]
    assert "embedding" in records[0] and "embedding" in records[2]
    assert "EmbeddingAPIError" in records[1]["error"] and "disallowed" in records[1]["error"]
    assert "line 2:" in done.stderr


def test_texts_without_a_result_in_time_are_error_lines_and_are_re_tried_later(
    clean_redis, start_worker, stub, tmp_path
):
    source = tmp_path / "wait.txt"
    source.write_text("first\nsecond\n")
    output = tmp_path / "wait.out.jsonl"
    # No worker yet: the window times out and says so for each text.
    timed_out = _run_cli(str(source), "-o", str(output), timeout_s=1)
    assert timed_out.returncode == 1
    assert [r.get("error", "") for r in _records(output)] == [
        "line 1: no result within 1s (the task may still finish)",
        "line 2: no result within 1s (the task may still finish)",
    ]
    pending = output.with_name(output.name + ".pending")
    ids = {task_id_for(source, n, text, None) for n, text in ((1, "first"), (2, "second"))}
    assert set(pending.read_text().split()) == ids  # still queued: a re-run must wait for them
    start_worker(stub.base_url)
    retried = _run_cli(str(source), "-o", str(output), "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    # Each retried line's error record is replaced by its embedding.
    assert sorted((r["line"], "embedding" in r) for r in _records(output)) == [
        (1, True),
        (2, True),
    ]
    # The re-run collected the tasks the first run queued: each text was paid for once.
    assert stub.stats()["total_inputs"] == 2
    assert not pending.exists()


def test_a_rerun_collects_results_already_stored_instead_of_enqueueing_the_texts_again(
    clean_redis, start_worker, stub, tmp_path
):
    source = tmp_path / "stored.txt"
    source.write_text("one\ntwo\nthree\n")
    output = tmp_path / "stored.out.jsonl"
    assert _run_cli(str(source), "-o", str(output), timeout_s=1).returncode == 1
    start_worker(stub.base_url)
    ids = [task_id_for(source, n, t, None) for n, t in ((1, "one"), (2, "two"), (3, "three"))]
    keys = [f"celery-task-meta-{task_id}" for task_id in ids]
    wait_for(lambda: clean_redis.exists(*keys) == 3, 60, "the three results stored")
    # Without the sidecar only the stored results can say these texts were paid for.
    output.with_name(output.name + ".pending").unlink()
    retried = _run_cli(str(source), "-o", str(output), "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert stub.stats()["total_inputs"] == 3
    assert sorted((r["line"], "embedding" in r) for r in _records(output)) == [
        (1, True),
        (2, True),
        (3, True),
    ]
    assert clean_redis.exists(*keys) == 0  # collected results are deleted


def _lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_an_interrupted_run_and_its_rerun_pay_for_each_line_at_most_once_plus_one_window(
    clean_redis, start_worker, stub, tmp_path
):
    """Also the measurement in docs/operations.md: run with ``-s`` to see the numbers."""
    # 60 ms a call: the run lasts long enough past 40% for the Ctrl-C to land in it even on a
    # machine so busy that this process polls late (it once saw the run end first).
    stub.set_latency_ms(60)
    start_worker(stub.base_url)
    total, window = 1000, 100
    source = tmp_path / "big.txt"
    source.write_text("".join(f"interrupted backfill text {n}\n" for n in range(1, total + 1)))
    output = tmp_path / "big.out.jsonl"
    started = time.monotonic()
    cli = subprocess.Popen(
        _cli_argv(str(source), "-o", str(output), "--window", str(window), timeout_s=60),
        cwd=REPO_ROOT,
        env=_cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _lines_in(output) >= total * 4 // 10, 90, "~40% of the output")
        cli.send_signal(signal.SIGINT)
        _out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    interrupted_s = time.monotonic() - started
    assert cli.returncode == 130, err
    assert "still in flight" in err and "Re-run the same command" in err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    written_first = _lines_in(output)
    paid_first = stub.stats()["total_inputs"]
    written_ids = [
        task_id_for(source, r["line"], f"interrupted backfill text {r['line']}", None)
        for r in _records(output)
    ]
    # What was written is deleted from Redis, so a stale result never answers a re-run.
    assert clean_redis.exists(*[f"celery-task-meta-{i}" for i in written_ids]) == 0

    started = time.monotonic()
    rerun = _run_cli(str(source), "-o", str(output), "--window", str(window))
    rerun_s = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stderr
    records = _records(output)
    paid = stub.stats()["total_inputs"]
    print(
        f"\nembed-file {total} lines, window {window}, 1 worker: interrupted after "
        f"{interrupted_s:.1f}s with {written_first} lines written and {paid_first} texts paid; "
        f"re-run {rerun_s:.1f}s; API inputs in all {paid} (duplicates {paid - total}); "
        f"records {len(records)}"
    )
    assert sorted(r["line"] for r in records) == list(range(1, total + 1))  # one record each
    assert all("embedding" in r for r in records)
    assert paid <= total + window  # the bound
    # Stricter, and what this design gives when no worker dies: the re-run waited for the
    # interrupted window's texts instead of enqueueing them again (fresh ids paid 1,100).
    assert paid == total


def test_with_no_worker_the_cli_warns_at_start_and_again_while_nothing_moves(clean_redis, tmp_path):
    source = tmp_path / "idle.txt"
    source.write_text("waiting\n")
    output = tmp_path / "idle.out.jsonl"
    idle = _run_cli(str(source), "-o", str(output), "--stall-warning", "1", timeout_s=5)
    assert idle.returncode == 1
    assert "no worker answered a ping" in idle.stderr
    assert idle.stderr.count("no result for") >= 2, idle.stderr
