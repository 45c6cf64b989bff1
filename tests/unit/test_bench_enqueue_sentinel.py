"""``scripts/bench enqueue-sentinel`` refuses bad arguments before starting any server."""

from __future__ import annotations

import pytest

from bench.enqueue_sentinel import main


@pytest.mark.parametrize(
    "argv",
    [["--texts", "0"], ["--rounds", "0"], ["--texts", "10", "--singles", "20"]],
)
def test_bad_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "must be positive" in capsys.readouterr().err
