"""The result serializer packs float vectors, and workers show vectors in short."""

from __future__ import annotations

import json

from celery.app import trace

from worker.celery_ext.serialization import dumps, install_short_result_repr, loads

VECTOR = [0.5, -0.25, 0.125, 1.0, 0.0, -1.0, 0.75, 0.375] * 192  # 1,536 exact float32 values


def test_a_float_vector_is_stored_as_base64_and_read_back_as_the_same_floats():
    meta = {"status": "SUCCESS", "result": VECTOR, "task_id": "t1"}
    stored = dumps(meta)
    assert len(stored) < 9 * 1024
    assert loads(stored) == meta
    assert type(loads(stored)["result"][0]) is float


def test_a_list_holding_anything_but_floats_stays_plain_json():
    mixed = [*VECTOR[:10], 3]
    flags = [True] * 10
    stored = dumps({"result": mixed, "other": flags})
    assert json.loads(stored) == {"result": mixed, "other": flags}
    assert loads(stored)["result"][-1] == 3
    assert type(loads(stored)["result"][-1]) is int


def test_celery_shows_a_vector_result_as_its_first_values_and_length():
    install_short_result_repr()
    assert trace.saferepr(VECTOR, 1024) == "[0.5, -0.25, ... 1536 floats]"


def test_celery_renders_other_results_as_before_and_the_patch_applies_once():
    install_short_result_repr()
    patched = trace.saferepr
    install_short_result_repr()
    assert trace.saferepr is patched
    assert trace.saferepr({"a": [1, 2]}, 1024) == "{'a': [1, 2]}"
    assert trace.saferepr([1.0, 2.0], 1024) == "[1.0, 2.0]"
    assert trace.saferepr("x" * 50, 10).startswith("'xxxxxxx")
