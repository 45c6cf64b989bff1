"""``SharedBudget``: one request and token budget per model for every worker, kept in Redis.

The API limits the account, not the process, so every worker process on every host draws on
one budget: two Lua scripts (``acquire.lua``, ``report.lua``) run atomically on Redis's own
clock. Why Lua and not a rate-limit library: docs/design.md, "The shared budget".

Limits come from settings (``EMBEDDINGS_RPM_LIMIT``/``_TPM_LIMIT``, per model through
``EMBEDDINGS_MODEL_LIMITS``) or, when those are 0, from the ``x-ratelimit-limit-*`` headers
the API sends, which every worker then shares. A 429, or a response saying nothing remains,
pauses the model for the whole cluster.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

import redis

from worker.embeddings.ratelimit_headers import RateLimitHeaders
from worker.errors import EmbeddingBudgetWaitError
from worker.names import LANE_INTERACTIVE
from worker.redis_client import bounded_client
from worker.settings import Settings
from worker.tokens import estimate_tokens, loaded_counter
from worker.waiting import floor_every

__all__ = [
    "Admission",
    "SharedBudget",
    "estimate_tokens",
    "pause_for_exhausted_s",
]

# A model's state outlives its last call by this long, so learned limits survive a lull.
STATE_TTL_MS = 3_600_000
# The provider's quantization window we assume: OpenAI enforces per-minute limits over
# periods as short as a second. Paced at (1 - headroom) of the limit, a second holds a
# headroom's worth of slack (52.6 ms at 5%). A tenth of it lets a late call catch up (a
# slot's lateness is otherwise lost for good; a thread's wake-up is a few ms); the rest is
# margin for the jitter between an admission and its call reaching the provider, which four
# busy workers on two cores showed (docs/design.md, "The shared budget").
_QUANTUM_MS = 1000.0
_TOLERANCE_SHARE = 0.1
_Arg = str | int | float
# A waiting interactive call's demand entry outlives the wait it was told by this much, so it
# is still there when it asks again; a process that died leaves it only this long.
DEMAND_MARGIN_MS = 1000
# A bulk call yielding to a waiting interactive one asks again after at least this long.
YIELD_RECHECK_MS = 20


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def pause_for_exhausted_s(limits: RateLimitHeaders, tokens_used: int) -> float:
    """Seconds to pause the cluster when the API says the next call would be refused, else 0.

    That is when no request remains, or fewer tokens remain than this call used. The pause
    lasts until the next such call would be allowed, not until the limit is full again:
    OpenAI's ``x-ratelimit-reset-*`` is the time until the bucket is *full* (0 of 600 RPM
    left reads "59.8s" while a request comes back every 0.1 s), so waiting for the reset
    stalled every worker for a minute. With the limit known, the bucket refills at
    ``(limit - remaining) / reset`` per second, and the pause is what is missing at that
    rate: one request, or this call's tokens less those remaining. Without the limit the
    rate is unknown and the pause is the whole reset. A server whose reset is the end of a
    fixed window answers a call sent too early with a 429, whose own hint then pauses the
    cluster (``BudgetGate.after_rate_limit``).
    """
    pauses = [0.0]
    if limits.remaining_requests == 0 and limits.reset_requests_s is not None:
        pauses.append(
            _refill_s(1, limits.limit_requests, limits.remaining_requests, limits.reset_requests_s)
        )
    if (
        limits.remaining_tokens is not None
        and limits.remaining_tokens < tokens_used
        and limits.reset_tokens_s is not None
    ):
        missing = tokens_used - limits.remaining_tokens
        pauses.append(
            _refill_s(missing, limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens_s)
        )
    return max(pauses)


def _refill_s(missing: int, limit: int | None, remaining: int, reset_s: float) -> float:
    """Seconds until ``missing`` more units are back, if the bucket refills evenly until full."""
    if limit is None or limit <= remaining:
        return reset_s
    return min(reset_s, reset_s * missing / (limit - remaining))


@dataclass(frozen=True)
class Admission:
    """The budget's answer: ``admitted``, or how long to wait (``wait_s``) and whether that
    wait is a cluster-wide pause after a 429 (``paused``) rather than the limit's pacing."""

    admitted: bool
    wait_s: float = 0.0
    paused: bool = False


class SharedBudget:
    """The cluster's budget in the Redis at ``client``, for the API at ``settings.base_url``.

    ``now_ms`` replaces Redis's clock, for tests only. Redis failures raise
    ``EmbeddingBudgetWaitError``: a call never goes around the budget silently.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        now_ms: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._now_ms = now_ms
        self._acquire = client.register_script(_script("acquire.lua"))
        # This process in the demand set; the pid tells processes of one host apart.
        self._caller_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._floor_every = floor_every(settings.bulk_floor_share)
        self._report = client.register_script(_script("report.lua"))
        # The encoding loads now, in the background: see count_tokens.
        loaded_counter(settings.encoding_for(settings.model))
        # Workers of one provider share a budget; another base URL is another account.
        self._prefix = (
            "embeddings:budget:"
            + hashlib.sha256(settings.base_url.rstrip("/").encode()).hexdigest()[:12]
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> SharedBudget:
        """A budget in the Redis at ``url``, with the project's bounded socket timeouts."""
        return cls(bounded_client(url, settings), settings)

    def key(self, model: str) -> str:
        """The Redis hash holding ``model``'s budget (braces: one cluster slot per model)."""
        return f"{self._prefix}:{{{model}}}"

    def demand_key(self, model: str) -> str:
        """The sorted set of processes whose interactive call waits for ``model``'s budget."""
        return f"{self.key(model)}:interactive"

    def close(self) -> None:
        """Close the Redis connections."""
        self._client.close()

    def count_tokens(self, model: str, texts: Iterable[str]) -> int:
        """The tokens a call of ``texts`` to ``model`` is charged before it leaves.

        Exact when the model's encoding is known (``Settings.encoding_for``: OpenAI's
        embedding models count cl100k_base), else the estimate; ``report`` settles either
        from the call's ``usage``. The process's first calls do not wait for the encoding to
        load (about 0.3 s from this budget's creation): until it has, they are charged the
        estimate, as every call was before tokens were counted exactly.
        """
        count = loaded_counter(self._settings.encoding_for(model)) or estimate_tokens
        return sum(map(count, texts))

    def _now_arg(self) -> str:
        return "" if self._now_ms is None else repr(float(self._now_ms()))

    def try_acquire(
        self, model: str, tokens: int, lane: str = LANE_INTERACTIVE, *, serves_bulk: bool = False
    ) -> Admission:
        """Take 1 request and ``tokens`` from ``model``'s budget, or say how long to wait.

        A refusal takes nothing. An interactive call told to wait makes bulk calls of every
        process yield until it is admitted, but for bulk's floor share (docs/lanes.md);
        ``serves_bulk``: the interactive call carries bulk texts too, so bulk is served.
        """
        rpm, tpm = self._settings.limits_for(model)
        headroom = self._settings.limit_headroom
        args: list[_Arg] = [rpm, tpm, tokens, headroom, self._tolerance_ms(), STATE_TTL_MS,
                            self._now_arg(), lane, self._caller_id, self._floor_every,
                            DEMAND_MARGIN_MS, YIELD_RECHECK_MS,
                            "1" if serves_bulk else "0"]  # fmt: skip
        keys = [self.key(model), self.demand_key(model)]
        try:
            admitted, wait_ms, paused = self._acquire(keys=keys, args=args)
        except redis.RedisError as exc:
            raise EmbeddingBudgetWaitError(
                f"the rate-limit budget's Redis is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        return Admission(bool(admitted), float(wait_ms) / 1000.0, bool(paused))

    def report(
        self,
        model: str,
        *,
        token_correction: int = 0,
        limits: RateLimitHeaders | None = None,
        pause_s: float = 0.0,
    ) -> bool:
        """Settle a call's tokens, share the limits the API reported, and maybe pause ``model``.

        Returns True when this report started a cluster-wide pause (none was running).
        """
        _, tpm = self._settings.limits_for(model)
        reported_rpm = (limits.limit_requests if limits else None) or 0
        reported_tpm = (limits.limit_tokens if limits else None) or 0
        headroom = self._settings.limit_headroom
        args: list[_Arg] = [token_correction, tpm, headroom, reported_rpm, reported_tpm,
                            math.ceil(pause_s * 1000), STATE_TTL_MS, self._now_arg()]  # fmt: skip
        try:
            started = self._report(keys=[self.key(model)], args=args)
        except redis.RedisError as exc:
            raise EmbeddingBudgetWaitError(
                f"the rate-limit budget's Redis is unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        return bool(started)

    def _tolerance_ms(self) -> float:
        return self._settings.limit_headroom * _QUANTUM_MS * _TOLERANCE_SHARE
