"""Planning batches within the limits, the resume journal and reading result lines."""

from __future__ import annotations

import base64
import json
from array import array
from pathlib import Path

import pytest

from producers.batch_api import (
    BatchLimits,
    Journal,
    custom_id_for,
    journal_path,
    plan_batches,
    read_result,
)
from producers.batch_api.plan import request_body
from worker.errors import EmbeddingConfigError
from worker.settings import Settings

REAL = BatchLimits.from_settings(Settings())
BODY = {"model": "text-embedding-3-small", "encoding_format": "base64"}


def test_sixty_thousand_lines_are_planned_into_fifty_thousand_and_ten_thousand() -> None:
    pairs = ((f"c{n}", f"l{n}") for n in range(60_000))
    planned = list(plan_batches(pairs, BODY, REAL))
    assert [len(p.custom_ids) for p in planned] == [50_000, 10_000]
    assert planned[1].custom_ids[0] == "c50000"
    first = json.loads(planned[0].data.splitlines()[0])
    assert first == {"custom_id": "c0", "method": "POST", "url": "/v1/embeddings",
                     "body": {**BODY, "input": "l0"}}  # fmt: skip


def test_a_batch_is_cut_before_its_file_would_pass_the_byte_limit() -> None:
    one_line = len(next(plan_batches([("c0", "x" * 100)], BODY, REAL)).data)
    limits = BatchLimits(max_requests=50_000, max_inputs=50_000, max_file_bytes=one_line * 3)
    planned = list(plan_batches(((f"c{n}", "x" * 100) for n in range(7)), BODY, limits))
    assert [len(p.custom_ids) for p in planned] == [3, 3, 1]
    assert all(len(p.data) <= one_line * 3 for p in planned)


def test_the_request_body_carries_the_workers_encoding_and_dimensions() -> None:
    settings = Settings(dimensions=256, encoding_format="float")
    body = request_body(settings, "my%model")
    line = next(plan_batches([("c", 'a "quoted" text')], body, REAL)).data
    assert json.loads(line)["body"] == {"model": "my%model", "encoding_format": "float",
                                        "dimensions": 256, "input": 'a "quoted" text'}  # fmt: skip


def test_a_custom_id_changes_with_the_text_so_an_edited_line_is_a_new_request() -> None:
    assert custom_id_for(3, "abc") == custom_id_for(3, "abc")
    assert custom_id_for(3, "abc") != custom_id_for(3, "abd")
    assert custom_id_for(3, "abc").startswith("line-3-")


def test_limits_above_the_apis_and_a_bad_price_table_are_configuration_errors() -> None:
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_BATCH_MAX_INPUTS"):
        Settings.from_env({"EMBEDDINGS_BATCH_MAX_INPUTS": "50001"})
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_PRICE_TABLE"):
        Settings.from_env({"EMBEDDINGS_PRICE_TABLE": "m=0.02"})
    settings = Settings.from_env({"EMBEDDINGS_PRICE_TABLE": "m=0.5:0.25"})
    assert settings.prices_for("m") == (0.5, 0.25)
    assert settings.prices_for("text-embedding-3-small") is None


def test_the_journal_replays_each_step_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.jsonl")
    journal = Journal(path)
    a = journal.planned(["x", "y"])
    journal.uploaded(a, "file-a")
    journal.created(a, "batch_a")
    b = journal.planned(["z"], attempt=2)
    journal.uploaded(b, "file-b")
    with path.open("a") as f:
        f.write('{"kind": "created", "plan": "')  # a crash mid-write
    again = Journal(path)
    assert [(p.custom_ids, p.file_id, p.batch_id, p.attempt) for p in again.live()] == [
        (["x", "y"], "file-a", "batch_a", 1),
        (["z"], "file-b", None, 2),
    ]
    again.finished(again.plans[a.plan], "completed")
    assert not again.remove_if_done()
    again.finished(again.plans[b.plan], "completed")
    assert again.remove_if_done() and not path.exists()


def _b64(values: list[float]) -> str:
    return base64.b64encode(array("f", values).tobytes()).decode()


def test_result_lines_give_vectors_errors_or_unfinished() -> None:
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": {
        "data": [{"embedding": _b64([0.5, -0.25])}], "usage": {"total_tokens": 7}}}}  # fmt: skip
    custom_id, result = read_result(json.dumps(ok).encode())
    assert (custom_id, result.vector, result.tokens) == ("a", [0.5, -0.25], 7)
    rejected = {"custom_id": "b", "response": {"status_code": 400,
                "body": {"error": {"message": "disallowed content"}}}}  # fmt: skip
    assert "400" in (read_result(json.dumps(rejected).encode())[1].error or "")
    expired = {"custom_id": "c", "response": None, "error": {"code": "batch_expired"}}
    assert read_result(json.dumps(expired).encode())[1].unfinished
    busy = {"custom_id": "d", "response": {"status_code": 503, "body": {}}}
    assert read_result(json.dumps(busy).encode())[1].unfinished
    with pytest.raises(ValueError):
        read_result(b'{"response": null}')
