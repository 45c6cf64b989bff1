"""A ``TextStream`` (``producers.sliding``) without a queue, for ``embed-file``'s tests."""

from __future__ import annotations

import io
from collections.abc import Sequence

from producers.sliding import Outcome, OutcomeSink


class FakeStream:
    """Embeds each text as ``[len(text)]``; texts containing ``FAIL`` get an error.

    Outcomes come out on ``wait`` (last sent first with ``reverse``, as a queue may finish
    them). ``windows`` holds each send's texts; ``most_in_flight`` the most texts out at once;
    ``seen_mid_window`` the lines in ``out`` after each outcome handed out.
    """

    def __init__(self, *, reverse: bool = False, out: io.StringIO | None = None) -> None:
        self.windows: list[list[str]] = []
        self.reverse = reverse
        self.out = out
        self.seen_mid_window: list[int] = []
        self.most_in_flight = 0
        self._due: list[tuple[OutcomeSink, int, Outcome]] = []

    @property
    def texts(self) -> list[str]:
        return [t for window in self.windows for t in window]

    @property
    def in_flight(self) -> int:
        return len(self._due)

    def send(
        self,
        texts: Sequence[str],
        timeout_s: float,
        on_outcome: OutcomeSink,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> None:
        self.windows.append(list(texts))
        for position, text in enumerate(texts):
            outcome: Outcome = (
                "EmbeddingAPIError: rejected" if "FAIL" in text else [float(len(text))]
            )
            self._due.append((on_outcome, position, outcome))
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def wait(self, max_wait_s: float = 1.0) -> None:
        due, self._due = self._due, []
        for on_outcome, position, outcome in reversed(due) if self.reverse else due:
            on_outcome(position, outcome)
            if self.out is not None:
                self.seen_mid_window.append(len(self.out.getvalue().splitlines()))

    def close(self) -> None:
        return None
