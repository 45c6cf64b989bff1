"""Celery's Redis result backend: one-step writes, batched writes, no outage stored as failure.

**One step.** Celery stores a result with a ``GET`` (to leave an earlier SUCCESS alone) and
then ``SETEX`` + ``PUBLISH``: two round trips per text, and a race, since a write can land
between the read and its own write. Here one Lua script (``store_result.lua``) does the
check, the write and the publish: one round trip, and a RETRY written by a slow thread can
no longer overwrite the SUCCESS of the text's re-run.

**Batches.** ``store_vectors`` writes the SUCCESS results of one API call (up to 8 texts)
in one round trip, from the micro-batcher's results thread, before the texts' tasks wake up.
The worker reaches it through ``worker.runtime.VectorStore``, never by this class. Each
text's future then says so (``worker.microbatcher.TextFuture.stored_ahead``) and its task
sets ``request.ignore_result``, so Celery skips its own write of that result; if the batched
write fails, every task stores its own result as before. Nothing is remembered here.

**Revokes.** ``remember_revoked`` and ``revoked_among`` keep the fleet's revoke list
(``worker.revocation``) in this Redis; a stored REVOKED is final like SUCCESS: the script
writes nothing over either.

**Outages.** A write that failed through its retries is reported as
:class:`EmbeddingResultStoreUnavailableError`, and an outage is never stored as a failure:
``worker.celery_ext.outages`` requeues the text instead.

Selected by ``result_backend`` (``worker.celery_ext.config``) for ``redis://`` and
``rediss://`` result URLs. Written against celery 5.7.0; ``worker.celery_ext.compat`` checks
the Celery internals used here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError, TaskRevokedError
from kombu.utils import encoding as kombu_encoding

from worker.celery_ext.lua import load_script
from worker.celery_ext.outages import is_redis_outage
from worker.celery_ext.serialization import SERIALIZER_NAME
from worker.errors import EmbeddingResultStoreUnavailableError
from worker.revocation import REVOKED_KEY

__all__ = ["STORE_SCRIPT", "ResultBackend"]

_bytes_to_str: Any = kombu_encoding.bytes_to_str

# Check for SUCCESS, write, publish; see the script for its keys and arguments.
STORE_SCRIPT = load_script("store_result.lua")

# The script reads the stored status as JSON; another result serializer keeps Celery's path.
_JSON_SERIALIZERS = frozenset({"json", SERIALIZER_NAME})

# A revoke's lifetime when results never expire: a week, in seconds.
_DEFAULT_REVOKE_LIFETIME_S = 7 * 86_400


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """``celery.backends.redis.RedisBackend`` with a one-step store and outage handling."""

    def store_result(self, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``store_result``; one that met a Redis outage raises
        ``EmbeddingResultStoreUnavailableError``."""
        try:
            return super().store_result(task_id, result, state, *args, **kwargs)
        except Exception as exc:
            # Celery wraps a write that failed through every retry in BackendStoreError.
            if is_redis_outage(exc):
                raise EmbeddingResultStoreUnavailableError(
                    f"Redis could not be reached (or was full) to store text {task_id}'s outcome "
                    f"({type(exc).__name__}); the text goes back to the queue"
                ) from exc
            raise

    def mark_as_failure(self, task_id: str, exc: BaseException, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``mark_as_failure``, except that a Redis outage stores nothing."""
        if is_redis_outage(exc):
            # Not the text's failure: store nothing; the request requeues the text.
            return None
        return super().mark_as_failure(task_id, exc, *args, **kwargs)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Adapted from celery 5.7.0 celery/backends/base.py KeyValueStoreBackend._store_result.

        The read of the current state and the write are one script; see the module.
        """
        if self.serializer not in _JSON_SERIALIZERS:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        lifetime = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._run_store_script, ([self._encoded(task_id, meta)], int(lifetime or 0)))
        return result

    def store_vectors(self, results: Sequence[tuple[str, Any]]) -> bool:
        """Store ``(task_id, vector)`` pairs as SUCCESS in one round trip.

        Returns False, storing nothing, when this backend's serializer is not JSON. Raises
        on a Redis failure after the backend's retries; then nothing is marked as stored.
        """
        if not results or self.serializer not in _JSON_SERIALIZERS:
            return False
        writes = []
        for task_id, vector in results:
            meta = self._get_result_meta(
                result=vector, state=states.SUCCESS, traceback=None, request=None
            )
            # What Celery stores from inside a task (no current task here to ask).
            meta["children"] = []
            writes.append(self._encoded(task_id, meta))
        self._ensure_retryable(self._run_store_script, writes, int(self.expires or 0))
        return True

    def remember_revoked(self, task_ids: Sequence[str], reason: str) -> None:
        """Put ``task_ids`` on the revoke list and store each as REVOKED, in one round trip.

        Each revoke is kept for the result lifetime (``result_expires``); a text already
        SUCCESS keeps its result. Raises on a Redis failure after the backend's retries.
        """
        if not task_ids:
            return
        lifetime = int(self.expires or 0) or _DEFAULT_REVOKE_LIFETIME_S
        exc = self.encode_result(TaskRevokedError(reason), states.REVOKED)
        writes = []
        for task_id in task_ids:
            meta = self._get_result_meta(
                result=exc, state=states.REVOKED, traceback=None, request=None
            )
            writes.append(self._encoded(task_id, meta))
        self._ensure_retryable(self._run_revoke, list(task_ids), writes, lifetime)

    def revoked_among(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` on the revoke list (one ``ZMSCORE``); raises on a Redis failure."""
        if not task_ids:
            return set()
        now = time.time()
        scores = self._ensure_retryable(self.client.zmscore, REVOKED_KEY, list(task_ids))
        return {
            task_id
            for task_id, score in zip(task_ids, scores, strict=True)
            if score is not None and score > now
        }

    def _run_revoke(
        self, task_ids: list[str], writes: list[tuple[str, Any]], lifetime: int
    ) -> None:
        expires_at = time.time() + lifetime
        with self.client.pipeline(transaction=False) as pipe:
            # Expired revokes leave the set as new ones arrive; the key itself outlives its
            # newest member by nothing.
            pipe.zremrangebyscore(REVOKED_KEY, "-inf", time.time())
            pipe.zadd(REVOKED_KEY, dict.fromkeys(task_ids, expires_at))
            pipe.expire(REVOKED_KEY, lifetime)
            for key, value in writes:
                pipe.eval(STORE_SCRIPT, 1, key, value, lifetime)
            pipe.execute()

    def _encoded(self, task_id: str, meta: dict[str, Any]) -> tuple[str, Any]:
        """The result key and the encoded ``meta`` for ``task_id``."""
        meta["task_id"] = _bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend")
        return self.get_key_for_task(task_id), value

    def _run_store_script(self, writes: list[tuple[str, Any]], lifetime: int) -> None:
        # One pipeline of EVALs, whether it carries one result or a call's eight. EVAL, not
        # EVALSHA: a pipeline would first ask SCRIPT EXISTS, a second round trip; Redis
        # compiles the script once and caches it by its hash either way.
        with self.client.pipeline(transaction=False) as pipe:
            for key, value in writes:
                pipe.eval(STORE_SCRIPT, 1, key, value, lifetime)
            pipe.execute()
