"""``embedding-gateway``: an OpenAI-compatible ``/v1/embeddings`` in front of the queue.

Any OpenAI client (``OpenAI(base_url="http://127.0.0.1:8080/v1", api_key=...)``) gets
vectors from the project's workers; each input is its own task. Run it with
``embedding-gateway`` or ``python -m gateway``; settings are ``GATEWAY_*`` variables
(see ``gateway.settings``).
"""

from gateway.app import create_app, get_service
from gateway.service import EmbeddingService, Health, QueueService
from gateway.settings import GatewaySettings

__all__ = [
    "EmbeddingService",
    "GatewaySettings",
    "Health",
    "QueueService",
    "create_app",
    "get_service",
]
