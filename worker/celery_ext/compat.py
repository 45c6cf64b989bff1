"""The Celery and kombu internals the adaptations rely on, checked when this module is imported.

The adaptations subclass or replace parts of celery 5.7 and kombu 5.7 that are not public
API: a name below may be renamed or dropped in any release. ``pyproject.toml`` pins both to
5.7.*; this check catches an environment that ignored the pin (a vendored copy, ``pip
install --no-deps``) at start-up, with the versions in the message, instead of with an
``AttributeError`` in the middle of a fetch or a result write.

An attribute that only instances carry counts as present when a method of its class or of
a base class assigns it (``self.name = …``): its ``__init__``, or a helper such as Celery's
``ResultConsumer._reset_sync``.
"""

from __future__ import annotations

import dis
import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = [
    "SUPPORTED_VERSIONS",
    "USED_INTERNALS",
    "Internal",
    "check",
    "check_once",
    "missing_internals",
]

# The distributions the adaptations were written against, and the releases they support.
SUPPORTED_VERSIONS = {"celery": "5.7.*", "kombu": "5.7.*"}


@dataclass(frozen=True)
class Internal:
    """One name the adaptations use: ``module:owner.name`` (``owner`` empty: a module global)."""

    module: str
    owner: str
    name: str
    used_by: str

    def __str__(self) -> str:
        path = f"{self.owner}.{self.name}" if self.owner else self.name
        return f"{self.module}:{path}"


def _uses(module: str, owner: str, names: str, used_by: str) -> list[Internal]:
    return [Internal(module, owner, name, used_by) for name in names.split()]


_KOMBU_REDIS = "kombu.transport.redis"
_TRANSPORT = "worker.celery_ext.transport"
_BACKEND = "worker.celery_ext.result_backend"

USED_INTERNALS: tuple[Internal, ...] = (
    *_uses(
        _KOMBU_REDIS,
        "Channel",
        "_brpop_start _brpop_read _flush_brpop_reauth _q_for_pri _queue_cycle _in_poll "
        "_brpop_sent_at _create_client _qos ack_emulation global_keyprefix priority_steps "
        "brpop_timeout unacked_key unacked_index_key conn_or_acquire sep connection_errors "
        "from_transport_options active_queues",
        _TRANSPORT,
    ),
    *_uses(
        _KOMBU_REDIS,
        "Channel",
        "_size _queue_bind _delete _has_queue auto_delete_queues keyprefix_queue "
        "keyprefix_binding_permanent",
        "worker.celery_ext.full_redis",
    ),
    *_uses(
        _KOMBU_REDIS,
        "QoS",
        "append ack pipe_or_acquire can_consume_max_estimate unacked_key unacked_index_key "
        "restore_visible",
        _TRANSPORT,
    ),
    *_uses(_KOMBU_REDIS, "Transport", "register_with_event_loop channels", _TRANSPORT),
    *_uses(_KOMBU_REDIS, "SentinelChannel", "_get_pool", "worker.celery_ext.sentinel"),
    *_uses(_KOMBU_REDIS, "SentinelTransport", "Channel", "worker.celery_ext.sentinel"),
    *_uses("kombu.transport", "", "TRANSPORT_ALIASES", "worker.celery_ext.sentinel"),
    *_uses("celery.backends.redis", "SentinelBackend", "_get_pool", "worker.celery_ext.sentinel"),
    *_uses("kombu.transport", "", "TRANSPORT_ALIASES _transport_cache", _TRANSPORT),
    *_uses("kombu.transport.virtual", "Transport", "_deliver", _TRANSPORT),
    *_uses(
        "celery.backends.redis",
        "RedisBackend",
        "_store_result _get_result_meta _ensure_retryable _MAX_STR_VALUE_SIZE failure_expires "
        "ensure get_key_for_task encode_result client",
        _BACKEND,
    ),
    *_uses("celery.worker.request", "Request", "on_failure reject", "worker.celery_ext.outages"),
    *_uses("celery.worker.request", "Request", "info", "worker.celery_ext.privacy"),
    *_uses("celery.worker.state", "", "task_ready", "worker.celery_ext.outages"),
    *_uses("billiard.einfo", "", "ExceptionWithTraceback", "worker.celery_ext.outages"),
    *_uses(
        "celery.worker.consumer.consumer",
        "Consumer",
        "on_send_event_buffered _flush_events hub",
        "worker.celery_ext.consumer",
    ),
    # The consumer's event dispatcher is set by the Events bootstep, not by the consumer.
    *_uses(
        "celery.worker.consumer.events", "Events", "event_dispatcher", "worker.celery_ext.consumer"
    ),
    *_uses(
        "celery.events.dispatcher", "EventDispatcher", "buffer_limit", "worker.celery_ext.consumer"
    ),
    # Channel._put hands its final Redis commands to a publish batch when given one.
    *_uses(_KOMBU_REDIS, "PublishBatch", "add", "worker.celery_ext.bulk_publish"),
    *_uses(_KOMBU_REDIS, "Channel", "create_publish_batch", "worker.celery_ext.bulk_publish"),
    # Behind Sentinel the same collector path: SentinelChannel inherits it from Channel.
    *_uses(
        _KOMBU_REDIS, "SentinelChannel", "create_publish_batch", "worker.celery_ext.bulk_publish"
    ),
    # A chunk's result channels go to Celery's result consumer in one SUBSCRIBE.
    *_uses(
        "celery.backends.redis",
        "ResultConsumer",
        "_pubsub _locked _pending_unsubscribe subscribed_to _get_key_for_task reconnect_on_error",
        "worker.celery_ext.subscriptions",
    ),
    *_uses("celery._state", "", "task_join_will_block", "worker.celery_ext.subscriptions"),
    *_uses("celery.app.trace", "", "saferepr logger", "worker.celery_ext.serialization"),
    *_uses("celery.worker.strategy", "", "logger", "worker.celery_ext.tasklog"),
)


def _resolve(internal: Internal) -> Any:
    owner: Any = importlib.import_module(internal.module)
    for part in filter(None, internal.owner.split(".")):
        owner = getattr(owner, part)
    return owner


def _has(owner: Any, name: str) -> bool:
    if hasattr(owner, name):
        return True
    for cls in getattr(owner, "__mro__", ()):
        for member in vars(cls).values():
            code = getattr(member, "__code__", None)
            if code is not None and any(
                op.opname == "STORE_ATTR" and op.argval == name for op in dis.get_instructions(code)
            ):
                return True
    return False


def missing_internals(internals: tuple[Internal, ...] = USED_INTERNALS) -> list[Internal]:
    """The internals of ``internals`` that the installed packages do not provide."""
    missing = []
    for internal in internals:
        try:
            present = _has(_resolve(internal), internal.name)
        except (ImportError, AttributeError):
            present = False
        if not present:
            missing.append(internal)
    return missing


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def check() -> None:
    """Raise ``ImportError`` naming every missing internal and the installed versions."""
    missing = missing_internals()
    if not missing:
        return
    installed = ", ".join(f"{name} {_installed(name)}" for name in SUPPORTED_VERSIONS)
    supported = ", ".join(f"{name} {spec}" for name, spec in SUPPORTED_VERSIONS.items())
    names = "; ".join(f"{internal} (used by {internal.used_by})" for internal in missing)
    raise ImportError(
        f"worker.celery_ext needs {supported}, but {installed} is installed and lacks: {names}. "
        "Install the versions pinned in pyproject.toml."
    )


@functools.cache
def check_once() -> None:
    """``check``, once per process: each module relying on the internals calls it at import."""
    check()


check_once()
