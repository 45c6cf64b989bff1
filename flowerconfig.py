"""Flower's settings file for ``celery -A worker flower`` started in this directory.

Start Flower with ``embeddings-flower`` instead (``embeddings_flower/``): it applies the rules
below from any directory. Flower reads this file only from its working directory; a plain
``celery -A worker flower`` started elsewhere gets the login and loopback rules from the
project's app (``embeddings_flower.guard.guard_celery_flower``), but not these columns. Here
(the repo root, or ``/app`` in the image) the same rules and settings apply: it refuses to
start without a login (``FLOWER_BASIC_AUTH=user:password``, or OAuth through ``FLOWER_AUTH``
and ``FLOWER_AUTH_PROVIDER``) and listens on 127.0.0.1 unless ``FLOWER_ADDRESS`` or
``--address`` says otherwise. Tornado executes this file with
the environment and the command line already applied to ``options``.
"""

from tornado.options import options

from embeddings_flower.flowerconfig import state_save_interval, tasks_columns
from embeddings_flower.guard import enforce
from worker.errors import EmbeddingConfigError

try:
    enforce(options)
except EmbeddingConfigError as exc:
    raise SystemExit(f"flower: {exc}") from None

__all__ = ["state_save_interval", "tasks_columns"]
