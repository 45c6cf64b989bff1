"""The cluster's shared rate-limit budget: one request and token budget per model, in Redis.

``SharedBudget`` holds the Redis side (two Lua scripts on Redis's clock); ``BudgetGate`` is
one process's side, used by the micro-batcher so texts wait for budget inside the process
and calls stay full.
"""

from worker.budget.gate import BudgetGate
from worker.budget.shared import Admission, SharedBudget, estimate_tokens, pause_for_exhausted_s

__all__ = ["Admission", "BudgetGate", "SharedBudget", "estimate_tokens", "pause_for_exhausted_s"]
