"""``embed-file --batch-api``: a file embedded through OpenAI's Batch API, at half price.

``plan`` cuts the lines into batches within the API's limits, ``client`` speaks the Files
and Batches endpoints, ``journal`` keeps the ids beside the output so a re-run re-attaches,
``submit`` and ``collect`` start and finish batches, ``run`` polls them with progress, and
``summary`` prints the tokens and the price at both rates. See docs/batch-api.md.
"""

from producers.batch_api.client import BatchClient
from producers.batch_api.journal import Journal, PlanState, journal_path
from producers.batch_api.plan import BatchLimits, PlannedBatch, custom_id_for, plan_batches
from producers.batch_api.results import LineResult, read_result
from producers.batch_api.run import BatchRunOptions, run_batch_api

__all__ = [
    "BatchClient",
    "BatchLimits",
    "BatchRunOptions",
    "Journal",
    "LineResult",
    "PlanState",
    "PlannedBatch",
    "custom_id_for",
    "journal_path",
    "plan_batches",
    "read_result",
    "run_batch_api",
]
