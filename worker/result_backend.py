"""Celery's Redis result backend with a one-step write, and no Redis outage stored as a failure.

**One step.** Celery stores a result with a ``GET`` (to leave an earlier SUCCESS alone) and
then ``SETEX`` + ``PUBLISH``: two round trips per text, and a race, since a write can land
between the read and its own write. Here one Lua script does the check, the write and the
publish: one round trip, and a RETRY written by a slow thread can no longer overwrite the
SUCCESS of the text's re-run.

**Outages.** A write that failed through its retries is reported as
:class:`EmbeddingResultStoreUnavailableError`, and an outage is never stored as a failure:
``worker.outages`` requeues the text instead.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils import encoding as kombu_encoding

from worker.errors import EmbeddingResultStoreUnavailableError
from worker.outages import is_redis_outage
from worker.serialization import SERIALIZER_NAME

__all__ = ["STORE_SCRIPT", "ResultBackend"]

_bytes_to_str: Any = kombu_encoding.bytes_to_str

# KEYS[1]: the result key. ARGV[1]: the encoded meta; ARGV[2]: its lifetime in seconds (0:
# none). Returns 0 and writes nothing when the stored meta already says SUCCESS.
STORE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local lifetime = tonumber(ARGV[2])
if lifetime > 0 then
    redis.call('SETEX', KEYS[1], lifetime, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

# The script reads the stored status as JSON; another result serializer keeps Celery's path.
_JSON_SERIALIZERS = frozenset({"json", SERIALIZER_NAME})


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """``celery.backends.redis.RedisBackend`` with a one-step store and outage handling."""

    _store_script: Any = None

    def store_result(self, task_id: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().store_result(task_id, *args, **kwargs)
        except Exception as exc:
            # Celery wraps a write that failed through every retry in BackendStoreError.
            if is_redis_outage(exc):
                raise EmbeddingResultStoreUnavailableError(
                    f"Redis could not be reached to store text {task_id}'s outcome "
                    f"({type(exc).__name__}); the text goes back to the queue"
                ) from exc
            raise

    def mark_as_failure(self, task_id: str, exc: BaseException, *args: Any, **kwargs: Any) -> Any:
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
        if self.serializer not in _JSON_SERIALIZERS:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = _bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend")
        lifetime = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._run_store_script, (self.get_key_for_task(task_id), value, lifetime))
        return result

    def _run_store_script(self, key: str, value: Any, lifetime: int | None) -> None:
        if self._store_script is None:
            # redis-py's Script sends EVALSHA and reloads the script after a Redis restart.
            self._store_script = self.client.register_script(STORE_SCRIPT)
        self._store_script(keys=[key], args=[value, int(lifetime or 0)])
