"""The wire contract between producers and workers: the task's registered name and its queue.

Defined once, here, in a module that imports nothing, so ``producers`` can send by name
without importing the worker's task module (or Celery, to read a constant).
"""

from __future__ import annotations

__all__ = ["EMBED_TEXT_TASK", "TASK_QUEUE"]

# Producers send this name and workers register their task under it; renaming it strands
# every message already queued under the old one.
EMBED_TEXT_TASK = "embeddings.embed_text"
# The broker queue the texts wait in (Celery's task_default_queue).
TASK_QUEUE = "embeddings"
