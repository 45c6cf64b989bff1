"""Local OpenAI-compatible embeddings stub server for development, demos, tests and benchmarks."""

from stubapi.faults import CallStats, FaultPlan, FaultRule, StubConfig
from stubapi.ratelimit import AccountLimit
from stubapi.server import StubServer, serve
from stubapi.vectors import vector_for

__all__ = [
    "AccountLimit",
    "CallStats",
    "FaultPlan",
    "FaultRule",
    "StubConfig",
    "StubServer",
    "serve",
    "vector_for",
]
