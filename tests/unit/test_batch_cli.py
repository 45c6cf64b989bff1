"""``embed-file``'s Batch API flags: what cannot start is a clear error, exit status 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from producers.cli import main


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMBEDDINGS_") or name == "OPENAI_API_KEY":
            monkeypatch.delenv(name)


def test_cancel_without_batch_api_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    assert main([str(source), "--cancel"]) == 2
    assert "--cancel and --poll-interval go with --batch-api" in capsys.readouterr().err


def test_the_batch_api_without_a_key_stops_before_reading_or_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("a\n")
    assert main([str(source), "-o", str(output), "--batch-api", "--no-progress"]) == 2
    assert "no API key" in capsys.readouterr().err
    assert not output.exists()
    assert not output.with_name(output.name + ".batches").exists()


def test_a_negative_poll_interval_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMBEDDINGS_API_KEY", "sk-test")
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    assert main([str(source), "--batch-api", "--poll-interval", "-1"]) == 2
    assert "--poll-interval must be positive" in capsys.readouterr().err
