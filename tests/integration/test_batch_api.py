"""``embed-file --batch-api`` end to end against the stub's Batch API over real HTTP.

No worker and no queue: the route talks to the Files and Batches endpoints only. The stub
runs in this process (a thread), its batches take a tiny delay, or are held with a long one
and released by setting it to 0, and the CLI polls every 20 ms. The CLI runs in this process
(``producers.cli.main``), or as a real process where a test sends it Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from devstack.processes import wait_for
from producers.cli import main
from stubapi import StubServer, vector_for
from stubapi.batches import BatchConfig, Forced
from tests.integration.harness import REPO_ROOT, TEST_API_KEY, TEST_REDIS_URL

pytestmark = pytest.mark.integration

DIMS = 16


@pytest.fixture
def stub() -> Iterator[StubServer]:
    config = BatchConfig(delay_s=0.05)
    with StubServer(dimensions=DIMS, api_key=TEST_API_KEY, batch=config) as server:
        yield server


def _settings(stub: StubServer, **extra: str) -> dict[str, str]:
    return {
        "EMBEDDINGS_BASE_URL": stub.base_url,
        "EMBEDDINGS_API_KEY": TEST_API_KEY,
        "EMBEDDINGS_DIMENSIONS": str(DIMS),
        "EMBEDDINGS_INITIAL_BACKOFF_S": "0.05",
        # No broker: a Redis this route never needs points at a closed port.
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "COLUMNS": "200",  # the summary table on one line per figure
        **extra,
    }


def _env(stub: StubServer, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env.pop("OPENAI_API_KEY", None)
    return {**env, **_settings(stub, **extra)}


# How long a Ctrl-C'd run may take to exit: a bound on correctness, not on speed. 30 s was
# missed beside a CPU hog with three test processes (twice in one run).
CLI_EXIT_S = 120


def _args(source: Path, output: Path, *args: str) -> list[str]:
    return [str(source), "-o", str(output), "--batch-api", "--no-progress",
            "--poll-interval", "0.02", *args]  # fmt: skip


def _spawn(stub: StubServer, source: Path, output: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "producers.cli", *_args(source, output)]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, env=_env(stub), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@dataclass
class Done:
    returncode: int
    stderr: str


Runner = Callable[..., Done]


@pytest.fixture
def run(
    stub: StubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Runner:
    """``run(source, output, *flags, **env)``: the CLI in this process, with ``env`` on top."""
    for name in list(os.environ):
        if name.startswith(("EMBEDDINGS_", "CELERY_")) or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)

    def run_cli(source: Path, output: Path, *args: str, **env: str) -> Done:
        with monkeypatch.context() as patch:
            for name, value in _settings(stub, **env).items():
                patch.setenv(name, value)
            code = main(_args(source, output, *args))
        return Done(code, capsys.readouterr().err)

    return run_cli


def _write_lines(path: Path, texts: list[str]) -> None:
    path.write_text("".join(text + "\n" for text in texts))


def _records(path: Path) -> dict[Any, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_line = {record["line"]: record for record in records}
    assert len(by_line) == len(records), "a line was written twice"
    return by_line


def _assert_embedded(output: Path, texts: list[str]) -> None:
    records = _records(output)
    assert sorted(records) == list(range(1, len(texts) + 1))
    for line, text in enumerate(texts, start=1):
        # base64 float32 on the wire, as the workers ask for it
        assert records[line]["embedding"] == pytest.approx(vector_for(text, DIMS), abs=1e-6)


def _batches(stub: StubServer) -> dict[str, Any]:
    return stub.batch_routes.batches.stats()


def test_five_thousand_lines_go_in_one_batch_with_no_online_call_and_every_vector_right(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    texts = [f"backfill document {n}: a corpus line to embed at half price" for n in range(5000)]
    source, output = tmp_path / "corpus.txt", tmp_path / "corpus.out.jsonl"
    _write_lines(source, texts)
    done = run(source, output)
    assert done.returncode == 0, done.stderr
    _assert_embedded(output, texts)
    stats = _batches(stub)
    assert (stats["batches_created"], stats["batch_requests"]) == (1, 5000)
    assert stub.stats()["calls"] == 0  # not one online /embeddings call
    assert not output.with_name(output.name + ".batches").exists()  # nothing left to resume
    assert "price online" in done.stderr and "price batch" in done.stderr
    assert stub.batch_routes.files.all() == []  # input, output and error files deleted


def test_ctrl_c_while_the_batch_runs_then_a_rerun_re_attaches_and_submits_nothing_again(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    stub.batch_routes.batches.configure({"delay_s": 3600})  # held until released below
    texts = [f"interrupted line {n}" for n in range(300)]
    source, output = tmp_path / "held.txt", tmp_path / "held.out.jsonl"
    _write_lines(source, texts)
    cli = _spawn(stub, source, output)
    journal = output.with_name(output.name + ".batches")
    try:
        wait_for(
            lambda: journal.exists() and '"created"' in journal.read_text(),
            60,
            "the batch id journaled",
        )
        cli.send_signal(signal.SIGINT)
        _out, err = cli.communicate(timeout=CLI_EXIT_S)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()  # reaps it and closes its pipes
    assert cli.returncode == 130, err
    assert "submits nothing twice" in err and "Traceback" not in err
    assert _batches(stub)["batches_created"] == 1

    stub.batch_routes.batches.configure({"delay_s": 0})
    rerun = run(source, output)
    assert rerun.returncode == 0, rerun.stderr
    stats = _batches(stub)
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)  # nothing again
    _assert_embedded(output, texts)
    assert "1 re-attached" in rerun.stderr


def _split_into_batches(
    stub: StubServer, tmp_path: Path, run: Runner, lines: int, limit: int | None
) -> None:
    texts = [f"l{n}" for n in range(lines)]
    source, output = tmp_path / "big.txt", tmp_path / "big.out.jsonl"
    _write_lines(source, texts)
    env = {}
    if limit is not None:
        # The same lowered limit on both sides: a batch over it would fail at the stub.
        stub.batch_routes.batches.configure({"max_inputs": limit})
        env["EMBEDDINGS_BATCH_MAX_INPUTS"] = str(limit)
    done = run(source, output, **env)
    assert done.returncode == 0, done.stderr
    stats = _batches(stub)
    assert stats["batch_requests"] == lines
    assert stats["batches_created"] == -(-lines // (limit or 50_000)) >= 2
    assert stats["statuses"] == {"completed": stats["batches_created"]}
    records = _records(output)
    assert sorted(records) == list(range(1, lines + 1))
    assert all("embedding" in record for record in records.values())
    for line in (1, lines // 2, lines):
        assert records[line]["embedding"] == pytest.approx(
            vector_for(texts[line - 1], DIMS), abs=1e-6
        )


def test_lines_past_a_lowered_per_batch_limit_are_split_into_three_batches(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    # The same split at a tenth of the scale, under a lowered limit on both sides.
    _split_into_batches(stub, tmp_path, run, 6_000, 2_500)


@pytest.mark.slow
def test_sixty_thousand_lines_are_split_at_the_real_limit_into_two_batches(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    # The case, at the Batch API's own 50,000 inputs a batch: about 25 s here, the
    # time going per line.
    _split_into_batches(stub, tmp_path, run, 60_000, None)


def test_one_rejected_line_fails_alone_and_retry_failed_sends_it_in_a_new_batch(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    texts = [f"line {n}" for n in range(20)]
    texts[6] = "line 6 is __REJECT__ed by the API"
    source, output = tmp_path / "one.txt", tmp_path / "one.out.jsonl"
    _write_lines(source, texts)
    done = run(source, output)
    assert done.returncode == 1, done.stderr
    records = _records(output)
    assert records[7] == {"id": 7, "line": 7, "error": records[7]["error"]}
    assert records[7]["error"].startswith("line 7: EmbeddingAPIError")
    assert "disallowed" in records[7]["error"] and "line 7:" in done.stderr
    assert all("embedding" in records[n] for n in records if n != 7)
    assert _batches(stub)["batches_created"] == 1

    again = run(source, output, "--retry-failed")
    assert again.returncode == 1
    assert "1 lines with errors go in a new batch" in again.stderr
    assert _batches(stub)["batch_requests"] == 21  # the one line, not its neighbours
    assert len(_records(output)) == 20  # its old error record replaced, not kept beside


def test_an_expired_batch_is_resubmitted_for_its_unfinished_lines_only(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    stub.batch_routes.batches.force(Forced("expired", completed_fraction=0.4))
    texts = [f"expiring line {n}" for n in range(100)]
    source, output = tmp_path / "exp.txt", tmp_path / "exp.out.jsonl"
    _write_lines(source, texts)
    done = run(source, output)
    assert done.returncode == 0, done.stderr
    assert "expired: resubmitting its 60 unfinished lines of 100 in a new batch" in done.stderr
    stats = _batches(stub)
    assert (stats["batches_created"], stats["batch_requests"]) == (2, 160)
    assert stats["statuses"] == {"completed": 1, "expired": 1}
    _assert_embedded(output, texts)


def test_a_wrong_key_is_a_clear_error_before_anything_is_uploaded(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    source, output = tmp_path / "k.txt", tmp_path / "k.out.jsonl"
    _write_lines(source, ["a", "b"])
    refused = run(source, output, EMBEDDINGS_API_KEY="sk-wrong")
    assert refused.returncode == 2
    assert "the API refused the key (401)" in refused.stderr
    assert "sk-wrong" not in refused.stderr
    too_big = run(source, output, EMBEDDINGS_BATCH_MAX_INPUTS="50001")
    assert too_big.returncode == 2 and "EMBEDDINGS_BATCH_MAX_INPUTS" in too_big.stderr
    assert _batches(stub)["files_uploaded"] == 0
    assert not output.exists() or output.read_text() == ""


def test_cancel_writes_nothing_unpaid_and_a_later_run_submits_the_lines_again(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    stub.batch_routes.batches.configure({"delay_s": 3600})
    texts = [f"cancelled line {n}" for n in range(50)]
    source, output = tmp_path / "c.txt", tmp_path / "c.out.jsonl"
    _write_lines(source, texts)
    cli = _spawn(stub, source, output)
    journal = output.with_name(output.name + ".batches")
    try:
        wait_for(lambda: journal.exists() and '"created"' in journal.read_text(), 60, "a batch")
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=CLI_EXIT_S)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()  # reaps it and closes its pipes
    cancelled = run(source, output, "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert _batches(stub)["statuses"] == {"cancelled": 1}
    assert not output.exists() or output.read_text() == ""  # nothing was embedded
    stub.batch_routes.batches.configure({"delay_s": 0})
    rerun = run(source, output)
    assert rerun.returncode == 0, rerun.stderr
    assert _batches(stub)["batches_created"] == 2
    _assert_embedded(output, texts)


@pytest.fixture
def cache_url(redis_client: redis.Redis) -> Iterator[str]:
    # 8 below the test database, as tests/integration/test_cache.py takes it.
    parts = urlsplit(TEST_REDIS_URL)
    url = urlunsplit(parts._replace(path=f"/{(int(parts.path.strip('/')) - 8) % 16}"))
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_cached_lines_are_not_submitted_and_batch_results_fill_the_cache(
    stub: StubServer, tmp_path: Path, cache_url: str, run: Runner
) -> None:
    texts = [f"cached line {n}" for n in range(40)]
    source = tmp_path / "cache.txt"
    _write_lines(source, texts)
    first = run(source, tmp_path / "first.jsonl", EMBEDDINGS_CACHE_URL=cache_url)
    assert first.returncode == 0, first.stderr
    _write_lines(source, [*texts, "one new line"])
    second = run(source, tmp_path / "second.jsonl", EMBEDDINGS_CACHE_URL=cache_url)
    assert second.returncode == 0, second.stderr
    assert _batches(stub)["batch_requests"] == 41  # only the new line went in a batch
    _assert_embedded(tmp_path / "second.jsonl", [*texts, "one new line"])


def test_a_failed_batch_is_resubmitted_saying_why(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    stub.batch_routes.batches.force(Forced("failed"))
    texts = [f"failing line {n}" for n in range(20)]
    source, output = tmp_path / "f.txt", tmp_path / "f.out.jsonl"
    _write_lines(source, texts)
    done = run(source, output)
    assert done.returncode == 0, done.stderr
    assert "failed (The stub was told to fail this batch.): resubmitting its 20" in done.stderr
    assert _batches(stub)["statuses"] == {"completed": 1, "failed": 1}
    _assert_embedded(output, texts)


def test_lines_whose_batches_keep_expiring_get_error_records_after_the_last_attempt(
    stub: StubServer, tmp_path: Path, run: Runner
) -> None:
    for _ in range(2):
        stub.batch_routes.batches.force(Forced("expired", completed_fraction=0.5))
    texts = [f"unlucky line {n}" for n in range(8)]
    source, output = tmp_path / "x.txt", tmp_path / "x.out.jsonl"
    _write_lines(source, texts)
    done = run(source, output, EMBEDDINGS_BATCH_MAX_ATTEMPTS="2")
    assert done.returncode == 1
    records = _records(output)
    errors = [r["error"] for r in records.values() if "error" in r]
    assert len(records) == 8 and len(errors) == 2  # 8 → 4 unfinished → 2 unfinished
    assert all("not embedded after 2 batches" in e and "expired" in e for e in errors)
    assert _batches(stub)["batch_requests"] == 12
