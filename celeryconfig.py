"""Celery's configuration module: ``celery -A worker worker`` is right as it stands.

Every setting comes from ``worker.celery_ext.config.celery_config``, built from
``worker.settings.Settings.from_env()``: broker and results in Redis (``REDIS_URL``;
``EMBEDDINGS_BROKER_URL`` and ``EMBEDDINGS_RESULT_BACKEND_URL`` override either side), JSON messages
only, late acks, events for Flower, the threads pool. The README lists every variable.
"""

# Imported names start with "_": every public name of this module is shown as a setting
# (Flower's worker Config view lists them all).
from worker.celery_ext.config import celery_config as _celery_config
from worker.settings import Settings as _Settings

globals().update(_celery_config(_Settings.from_env()))
