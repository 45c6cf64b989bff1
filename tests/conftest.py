"""Fixtures for every test."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _sigint_restored() -> Iterator[None]:
    """Put back SIGINT's handler after each test.

    A child inherits an ignored SIGINT across exec. Beside a CPU hog, some test left this
    process ignoring it, and every later test in the same xdist worker that Ctrl-C's an
    ``embed-file`` child saw it run to the end (exit 0, or 30 s without exiting) instead of
    exiting 130. Whatever leaves it so, it stops at the test that did it.
    """
    before = signal.getsignal(signal.SIGINT)
    if before in (signal.SIG_IGN, None):
        # Left so at import time, or by a test before this fixture ran: pytest's own default.
        before = signal.default_int_handler
        signal.signal(signal.SIGINT, before)
    yield
    if signal.getsignal(signal.SIGINT) is not before:
        signal.signal(signal.SIGINT, before)
