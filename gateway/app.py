"""The ASGI app: OpenAI's ``POST /v1/embeddings`` and ``GET /v1/models`` in front of the queue.

Stateless: every input of a request becomes its own ``embeddings.embed_text`` task, so the
workers batch texts across requests and across gateway replicas. Each request picks its
lane (``gateway.lanes``: the ``X-Embeddings-Lane`` header, else ``service_tier``, else
interactive). A retried request waits on its first attempt's tasks (``gateway.idempotency``);
one that times out is told why (``gateway.pace``). ``GET /healthz`` reports Redis, worker
pings and queue depth. ``/docs`` is Swagger UI served from the ``fastapi-offline`` package,
so it works without reaching a CDN.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import SERVER_ERROR, ApiError, error_body, error_for, model_not_found
from gateway.idempotency import RequestKey, request_key
from gateway.lanes import LANE_HEADER, request_lane
from gateway.limits import BodyLimit
from gateway.pace import (
    ESTIMATE_HEADER,
    LARGE_REQUEST_TEXTS,
    Pace,
    estimated_seconds,
    timeout_error,
)
from gateway.parsing import EmbeddingRequest, parse_request, render_response
from gateway.schemas import (
    IDEMPOTENCY_HEADER,
    HealthBody,
    embeddings_operation,
    models_operation,
    security_schemes,
)
from gateway.service import EmbeddingService, QueueService
from gateway.settings import MAX_IDEMPOTENCY_KEY_CHARS, GatewaySettings
from worker.errors import EmbeddingError, EmbeddingResultTimeoutError

__all__ = ["create_app", "get_service"]

log = logging.getLogger(__name__)


async def get_service(request: Request) -> EmbeddingService:
    """The running app's queue side (a FastAPI dependency).

    Dependencies are ``async def``: FastAPI runs a plain ``def`` one in a worker thread, a
    thread hop per request for a dictionary lookup.
    """
    service: EmbeddingService = request.app.state.service
    return service


# At module level: FastAPI resolves string annotations in the module's namespace.
Service = Annotated[EmbeddingService, Depends(get_service)]


def create_app(
    settings: GatewaySettings,
    service_factory: Callable[[], EmbeddingService] | None = None,
) -> FastAPI:
    """The gateway for ``settings``; ``service_factory`` builds its queue side at start-up.

    By default that is a :class:`QueueService` over the project's Celery app. Tests pass a
    fake, or override the :func:`get_service` dependency.
    """

    def default_service() -> EmbeddingService:
        from worker.celery_app import app as celery_app

        return QueueService(celery_app, ping_timeout_s=settings.worker_ping_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = (service_factory or default_service)()
        app.state.service = service
        try:
            yield
        finally:
            await service.aclose()

    app = FastAPIOffline(
        title="embedding-gateway",
        summary="OpenAI-compatible embeddings in front of the embedding queue.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    authorize = _authorizer(settings)
    pace = Pace()

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(authorize)],
        summary="Create embeddings (OpenAI-compatible)",
        **embeddings_operation(settings),
    )
    async def create_embeddings(request: Request, service: Service) -> Response:
        parsed = parse_request(await request.body(), max_text_chars=settings.max_text_chars)
        if parsed.model not in settings.models:
            raise model_not_found(parsed.model)
        lane = request_lane(request.headers.get(LANE_HEADER), parsed.service_tier_lane)
        _check_dimensions_before(parsed, settings)
        key = _request_key(request, parsed, settings)
        if settings.max_queue_depth:
            await _check_backlog(service, settings, lane)
        headers: dict[str, str] = {}
        if len(parsed.texts) >= LARGE_REQUEST_TEXTS:
            headers = await _estimate(service, settings, pace, len(parsed.texts), lane)
        started = pace.now()
        reused: list[int] = []
        try:
            vectors = await service.embed(
                parsed.texts,
                model=parsed.model,
                timeout_s=settings.request_timeout_s,
                lane=lane,
                request_key=key,
                on_reuse=reused.append,
            )
        except ApiError:
            raise  # a reused Idempotency-Key, or a concurrent attempt
        except EmbeddingResultTimeoutError as exc:
            error = await _explain_timeout(service, settings, pace, len(parsed.texts), lane)
            error.headers = {**(error.headers or {}), **headers}
            raise error from exc
        except Exception as exc:
            if not isinstance(exc, EmbeddingError):
                # A task's non-project error (revoked, a bug): answered 502, kept in the log.
                log.warning("embedding failed: %s: %s", type(exc).__name__, exc)
            raise error_for(exc, timeout_s=settings.request_timeout_s) from exc
        if not sum(reused):
            # A retry's reused texts were in flight before it started: its span would
            # overstate how fast the queue drains.
            pace.record(started, len(vectors))
        _check_dimensions_after(parsed, vectors)
        response = _json(render_response(parsed, vectors))
        response.headers.update(headers)
        return response

    @app.get(
        "/v1/models",
        dependencies=[Depends(authorize)],
        summary="List the models served (GATEWAY_MODELS)",
        **models_operation(settings),
    )
    async def list_models() -> dict[str, Any]:
        models = [
            {"id": name, "object": "model", "created": 0, "owned_by": "system"}
            for name in settings.models
        ]
        return {"object": "list", "data": models}

    @app.get(
        "/healthz",
        summary="Redis, worker pings and queue depth (no auth)",
        responses={
            200: {"model": HealthBody, "description": "Redis answers"},
            503: {"model": HealthBody, "description": "Redis does not answer"},
        },
    )
    async def healthz(service: Service) -> Response:
        health = await service.health()
        body: dict[str, Any] = {
            "status": "ok" if health.redis else "unavailable",
            "redis": health.redis,
            "workers": health.workers,
            "queue_depth": health.queue_depth,
        }
        if health.lane_depths is not None:
            body["lanes"] = health.lane_depths
        return _json(body, 200 if health.redis else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            schemes = security_schemes(settings)
            if schemes:
                schema.setdefault("components", {})["securitySchemes"] = schemes
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _authorizer(settings: GatewaySettings) -> Callable[[Request], Awaitable[None]]:
    keys = [key.encode() for key in settings.api_keys]

    async def authorize(request: Request) -> None:
        if not keys:
            return  # GATEWAY_ALLOW_NO_AUTH=1
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        given = token.strip().encode()
        # Every key compared in constant time, and no early exit: the time taken says
        # nothing about which key, or how much of one, matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    return authorize


def _request_key(
    request: Request, parsed: EmbeddingRequest, settings: GatewaySettings
) -> RequestKey | None:
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None and not (
        0 < len(idempotency_key.strip()) <= MAX_IDEMPOTENCY_KEY_CHARS
    ):
        raise ApiError(
            400,
            f"The {IDEMPOTENCY_HEADER} header must hold 1 to {MAX_IDEMPOTENCY_KEY_CHARS} "
            "characters.",
            code="invalid_idempotency_key",
        )
    # The caller is its API key (hashed in the key): two callers never share tasks by
    # accident, nor learn that another sent the same texts.
    _, _, token = request.headers.get("authorization", "").partition(" ")
    return request_key(
        api_key=token.strip(),
        model=parsed.model,
        texts=parsed.texts,
        idempotency_key=idempotency_key.strip() if idempotency_key is not None else None,
        retry_window_s=settings.retry_window_s,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )


async def _lane_state(service: EmbeddingService, lane: str) -> tuple[int | None, int | None]:
    """Workers that answered the ping and texts in ``lane``'s queue (None: unknown)."""
    health = await service.health()
    queued = (health.lane_depths or {}).get(lane) if health.redis else None
    return health.workers, queued


async def _estimate(
    service: EmbeddingService, settings: GatewaySettings, pace: Pace, texts: int, lane: str
) -> dict[str, str]:
    """The estimated-time header of a large request, logged when over the timeout."""
    workers, queued = await _lane_state(service, lane)
    seconds = estimated_seconds(texts, queued or 0, workers, pace.texts_per_s())
    if seconds is None:
        return {}
    if seconds > settings.request_timeout_s:
        log.warning(
            "a request of %d texts needs about %.0f s (%s texts queued in the %s lane, %s "
            "workers), over GATEWAY_REQUEST_TIMEOUT_S=%g: it may time out",
            texts, seconds, queued, lane, workers, settings.request_timeout_s,
        )  # fmt: skip
    return {ESTIMATE_HEADER: f"{seconds:.1f}"}


async def _explain_timeout(
    service: EmbeddingService, settings: GatewaySettings, pace: Pace, texts: int, lane: str
) -> ApiError:
    try:
        workers, queued = await _lane_state(service, lane)
    except Exception:  # the answer is a 503 either way; say what is known
        workers, queued = None, None
    return timeout_error(
        timeout_s=settings.request_timeout_s,
        texts=texts,
        lane=lane,
        workers=workers,
        queued=queued,
        texts_per_s=pace.texts_per_s(),
    )


def _check_dimensions_before(request: EmbeddingRequest, settings: GatewaySettings) -> None:
    # The task takes no per-text dimensions, so the workers' size is the only one served.
    # Truncating and renormalising would be wrong for models not trained for it (non-MRL).
    if (
        request.dimensions is not None
        and settings.dimensions
        and (request.dimensions != settings.dimensions)
    ):
        raise ApiError(
            400,
            f"This deployment serves {settings.dimensions}-dimension embeddings; "
            f"'dimensions' must be {settings.dimensions} or omitted.",
            param="dimensions",
        )


def _check_dimensions_after(request: EmbeddingRequest, vectors: list[list[float]]) -> None:
    if request.dimensions is None or not vectors:
        return
    served = len(vectors[0])
    if request.dimensions != served:
        raise ApiError(
            400,
            f"This deployment serves {served}-dimension embeddings for {request.model!r}; "
            f"'dimensions' must be {served} or omitted.",
            param="dimensions",
        )


async def _check_backlog(service: EmbeddingService, settings: GatewaySettings, lane: str) -> None:
    # The lane's own queue: a backfill's backlog in the bulk lane never refuses a web app's
    # interactive request, which workers serve first.
    try:
        depth = await service.queue_depth(lane)
    except Exception as exc:
        raise error_for(exc, timeout_s=settings.request_timeout_s) from exc
    if depth >= settings.max_queue_depth:
        raise ApiError(
            429,
            f"The embedding queue's {lane} lane holds {depth} texts, over this gateway's "
            f"bound of {settings.max_queue_depth}. Please retry shortly.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": "1"},
        )


def _json(body: Any, status: int = 200) -> Response:
    # json.dumps directly: 2,048 vectors through FastAPI's jsonable_encoder would walk every
    # float in Python a second time.
    content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Response(content, status_code=status, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return JSONResponse(exc.body(), exc.status_code, headers=exc.headers)
    # Routing's own 404 and 405, in the same shape.
    kind = SERVER_ERROR if exc.status_code >= 500 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("The server had an error.", SERVER_ERROR), 500)
