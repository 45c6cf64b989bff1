"""``python -m stubapi --help`` shows every default and the marker that makes it reject a text."""

from __future__ import annotations

import pytest

from stubapi.__main__ import build_parser
from stubapi.faults import DEFAULT_REJECT_SUBSTRING


def test_help_shows_the_defaults_and_the_reject_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STUB_API_HOST", "STUB_API_PORT", "STUB_API_REJECT_SUBSTRING"):
        monkeypatch.delenv(name, raising=False)
    text = " ".join(build_parser().format_help().split())
    assert "(default: 127.0.0.1)" in text
    assert "(default: 8900)" in text
    assert "(default: 50)" in text
    assert f"(default: {DEFAULT_REJECT_SUBSTRING})" in text
    assert f"reject marker ('{DEFAULT_REJECT_SUBSTRING}'" in text
    assert "fail with 400" in text


def test_help_shows_a_default_taken_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("STUB_API_REJECT_SUBSTRING", "BLOCKME")
    text = " ".join(build_parser().format_help().split())
    assert "(default: BLOCKME)" in text
