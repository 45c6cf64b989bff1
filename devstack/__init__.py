"""Start the pieces of a local stack as real processes: the stub API, Celery workers, the gateway.

Used by the demo, the benchmark and the integration tests.
"""

from devstack.processes import (
    REPO_ROOT,
    GatewayProcess,
    StubProcess,
    WorkerProcess,
    free_port,
    wait_for,
)

__all__ = [
    "REPO_ROOT",
    "GatewayProcess",
    "StubProcess",
    "WorkerProcess",
    "free_port",
    "wait_for",
]
