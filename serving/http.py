"""The HTTP API: one FastAPI app over a backend, in a Serve ingress replica or a bare process.

``create_app(backend)`` defines the routes, parameter validation and the JSON error format; the
backend answers ``(status, body)`` pairs. In Serve the backend forwards to the model deployments'
handles (``serving.handles.HandleBackend``); :class:`LocalBackend` calls the services in
this process, which is what ``python -m serving --no-ray`` and the benchmark's reference run.

Errors are JSON ``{"error": code, "message": text}`` with a 4xx status: 404 for an unknown
``user_id``/``item_id`` in the path, 422 for invalid parameters or body (the message names the
field, the problem and the value received), 400 for a request the chosen model cannot answer,
413 for a body over ``max_body_bytes``.
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
import time
from typing import Any, Protocol

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.event_feed import EventFeed
from serving.fresh import UserEvents
from serving.recommenders import Answer, ModelService, answer
from serving.schemas import (
    K_MAX,
    MAX_BODY_BYTES,
    ColdStartRequest,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    HistoryResponse,
    ModelName,
    RecommendResponse,
    SimilarResponse,
    UsersResponse,
    described_user,
)
from towers.storage.events import EventLog

log = logging.getLogger("serving")
# The page at "/": plain HTML and JavaScript over this API, no build step (serving/web/).
PAGE = (pathlib.Path(__file__).with_name("web") / "index.html").read_text()
Reply = tuple[int, dict[str, Any] | bytes]  # (status, JSON body as a dict or already encoded)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503, 504)
}


class Backend(Protocol):
    """What the routes need; every method answers ``(status, JSON body)``."""

    async def recommend(self, model: str, user_id: Any, k: int) -> Reply: ...

    async def recommend_cold_start(self, model: str, body: dict[str, Any], k: int) -> Reply: ...

    async def similar(self, item_id: Any, k: int) -> Reply: ...

    async def health(self) -> Reply: ...

    async def history(self, user_id: Any, k: int) -> Reply: ...

    async def users(self, k: int) -> Reply: ...

    async def post_events(self, events: list[dict[str, Any]]) -> Reply:
        """Checks a batch, stores it durably, and answers once the models reflect it."""
        ...

    async def user_features(self) -> dict[str, dict[str, Any]]:
        """Allowed values of the cold-start body's categorical features, from the served model."""
        ...


def encode(result: Answer) -> tuple[int, bytes]:
    """``(status, body)`` with the body as compact UTF-8 JSON, as ``JSONResponse`` renders it.

    Model replicas encode their answers, so the ingress (one hop, often the bottleneck) only
    copies bytes instead of unpickling and re-serializing nested dicts.
    """
    status, body = result
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return status, text.encode()


class LocalBackend:
    """Calls the services directly in this process (no Ray, no batching); with ``event_log``,
    ``POST /events`` appends to it and the services answer from its events at once.

    Appends go through the same group commit as the Serve app's ``EventStore``
    (``serving.event_feed.EventFeed``, with no followers to wait for): the batches of requests
    that arrive while a commit's fsync runs are committed together in the next one, each
    request answered once its own batch is durable."""

    def __init__(self, services: dict[str, ModelService], event_log: EventLog | None = None):
        self.services = services
        self.feed = None if event_log is None else EventFeed(event_log)
        self.events = UserEvents()
        if self.feed is not None:
            self.events.apply(self.feed.events)
            for service in services.values():
                service.events = self.events

    async def post_events(self, events: list[dict[str, Any]]) -> Answer:
        if self.feed is None:
            return 400, {"error": "events_unsupported", "message": "no event log configured"}
        status, rows = answer(self.services["two_tower"].check_events, events, int(time.time()))
        if status != 200:
            return status, rows
        status, body = await self.feed.append(rows)  # durable (fsync'd) when it returns
        self.events.apply(self.feed.after(self.events.seq))
        return status, body

    async def recommend(self, model: str, user_id: Any, k: int) -> Answer:
        return answer(self.services[model].recommend, user_id, k)

    async def recommend_cold_start(self, model: str, body: dict[str, Any], k: int) -> Answer:
        return answer(self.services[model].recommend_cold_start, body, k)

    async def similar(self, item_id: Any, k: int) -> Answer:
        return answer(self.services["two_tower"].similar_items, item_id, k)

    async def health(self) -> Answer:
        models = {n: s.health() for n, s in self.services.items()}
        events = {"last_seq": self.events.seq, "users": len(self.events)}
        return 200, {"status": "ok", "models": models, "events": events}

    async def history(self, user_id: Any, k: int) -> Answer:
        return answer(self.services["two_tower"].history, user_id, k)

    async def users(self, k: int) -> Answer:
        return answer(self.services["two_tower"].users, k)

    async def user_features(self) -> dict[str, dict[str, Any]]:
        service = self.services.get("two_tower")
        return service.user_features() if service is not None else {}


def error(
    status: int,
    code: str,
    message: str,
    details: list | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(err: dict[str, Any]) -> str:
    """``query.k: Input should be ... (got '0')`` from one pydantic error."""
    where = ".".join(str(p) for p in err.get("loc", ()))
    text = f"{where}: {err.get('msg', 'invalid')}"
    if err.get("type") == "json_invalid":
        return f"{text} ({err.get('ctx', {}).get('error', 'not JSON')})"
    if err.get("type") == "model_attributes_type" and where == "body":
        return "body: expected a JSON object sent with Content-Type: application/json"
    if "input" in err and err.get("type") != "missing" and where.split(".")[0] != "body":
        text += f" (got {str(err['input'])[:80]!r})"
    return text


class BodySizeLimit:
    """ASGI middleware: refuses bodies over ``max_bytes`` with a JSON 413 before a route reads them.

    Checks ``Content-Length`` first, then counts the bytes of a chunked body as they arrive, so an
    oversized body is never held in full. Accepted bodies are replayed to the app unchanged.
    (FastAPI's own ``max_body_size`` answers ``Content-Length`` overruns in plain text.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        too_large = error(413, "body_too_large", f"request body over {self.max_bytes} bytes")
        if length is not None:
            if not length.isdigit():
                bad = error(400, "bad_request", "Content-Length is not a number")
                return await bad(scope, receive, send)
            if int(length) > self.max_bytes:
                return await too_large(scope, receive, send)
        elif not chunked:
            return await self.app(scope, receive, send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


def create_app(
    backend: Backend, k_max: int = K_MAX, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The recommender API over ``backend``; OpenAPI at ``/docs`` and ``/openapi.json``."""
    app = FastAPI(
        title="Two-tower recommender",
        description="Top-k movies from a two-tower model (ScaNN index) and a UserKNN baseline.",
        version="1",
        openapi_url=None,  # served below, with the served model's feature values filled in
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return error(422, "invalid_request", "; ".join(map(_describe, errors)), details)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        code = codes.get(exc.status_code, "http_error")
        # Starlette's own headers go out too: a 405 must say which methods are allowed (Allow).
        return error(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal_error", f"{type(exc).__name__}: {exc}"[:300])

    def reply(result: Reply) -> Response:
        status, body = result
        if isinstance(body, bytes):
            return Response(body, status_code=status, media_type="application/json")
        return JSONResponse(body, status_code=status)

    k_query = Query(10, ge=1, le=k_max, description=f"number of items, 1..{k_max}")
    model_query = Query("two_tower", description="two_tower or user_knn")

    @app.get(
        "/recommend/{user_id}",
        response_model=None,
        responses={200: {"model": RecommendResponse}, **ERRORS},
        summary="Top-k items for a known user, seen items excluded",
    )
    async def recommend(
        user_id: str = Path(
            description="raw user id (an integer or a string, as the data set has them)"
        ),
        k: int = k_query,
        model: ModelName = model_query,
    ) -> Response:
        return reply(await backend.recommend(model, user_id, k))

    @app.post(
        "/recommend",
        response_model=None,
        responses={200: {"model": RecommendResponse}, **ERRORS},
        summary="Top-k items for a new (cold-start) user described by features / liked items",
    )
    async def recommend_cold_start(
        body: ColdStartRequest, k: int = k_query, model: ModelName = model_query
    ) -> Response:
        return reply(await backend.recommend_cold_start(model, body.model_dump(), k))

    @app.get(
        "/similar/{item_id}",
        response_model=None,
        responses={200: {"model": SimilarResponse}, **ERRORS},
        summary="Nearest items by two-tower item embedding, the item itself excluded",
    )
    async def similar(
        item_id: str = Path(description="raw item id (an integer or a string)"), k: int = k_query
    ) -> Response:
        return reply(await backend.similar(item_id, k))

    @app.post(
        "/events",
        response_model=None,
        responses={200: {"model": EventsResponse}, **ERRORS},
        summary="Record interactions: stored durably before the answer, reflected by the next "
        "answers of both models; a replayed event_id is ignored",
    )
    async def post_events(body: EventsRequest) -> Response:
        return reply(await backend.post_events([e.model_dump() for e in body.events]))

    @app.get(
        "/history/{user_id}",
        response_model=None,
        responses={200: {"model": HistoryResponse}, **ERRORS},
        summary="A user's most recent interactions: events, then training items",
    )
    async def history(
        user_id: str = Path(
            description="raw user id (an integer or a string, as the data set has them)"
        ),
        k: int = k_query,
    ) -> Response:
        return reply(await backend.history(user_id, k))

    @app.get(
        "/users",
        response_model=None,
        responses={200: {"model": UsersResponse}, **ERRORS},
        summary="The first k known user ids, to pick one",
    )
    async def users(k: int = k_query) -> Response:
        return reply(await backend.users(k))

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz", response_model=None, summary="Served models and versions")
    async def healthz() -> Response:
        return reply(await backend.health())

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The schema, each categorical user feature's ``enum`` taken from the served model (a
        roll-out may change them), so a body the schema accepts is one the model can answer."""
        spec = copy.deepcopy(app.openapi())
        schemas = spec["components"]["schemas"]
        features = await backend.user_features()
        schemas["UserFeatures"].update(properties=features, additionalProperties=False)
        schemas["ColdStartRequest"].update(described_user(list(features)))
        return JSONResponse(spec)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return app
