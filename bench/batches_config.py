"""Names and settings of the celery-batches peer, shared by ``bench.sweep`` (which sends to it
from this project's venv) and ``bench.batches_peer`` (which runs in ``.venv-batches``).

Plain constants on purpose: both environments import this module, and the peer's has no
project dependencies.
"""

__all__ = ["BATCHES_QUEUE", "BATCHES_TASK", "FLUSH_EVERY", "FLUSH_INTERVAL_S"]

BATCHES_TASK = "bench.batches_embed"
BATCHES_QUEUE = "bench-batches"
FLUSH_EVERY = 8  # texts per call: the project's batch_size
FLUSH_INTERVAL_S = 0.1  # the project's flush_interval_s
