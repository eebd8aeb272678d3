"""The inference server's FastAPI app: the OpenAI-compatible router, health, metrics and the dashboard.

It drives an `AsyncEngine` and nothing else of the engine. Every route that serves a caller depends
on the one `HttpAuth` (the guard key ring); every request passes the body-size limit and the
Host/Origin check before any handler runs. Errors use OpenAI's body shape (`jijian.serve.errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from jijian.guard.http_auth import AuthError, HttpAuth
from jijian.guard.http_limits import BodySizeLimit, HostAndOriginCheck
from jijian.guard.policy import GuardPolicy
from jijian.model.tokenizer import Tokenizer
from jijian.serve.async_engine import AsyncEngine
from jijian.serve.dashboard.sessions import SESSION_COOKIE, SessionStore
from jijian.serve.dashboard.sources import DashboardSources
from jijian.serve.errors import ApiError
from jijian.serve.metrics import ServerMetrics
from jijian.serve.openai_routes import ApiSettings, Embedder, OpenAIRoutes
from jijian.serve.rag import Retriever
from jijian.serve.usage import UsageMeter

__all__ = ["ApiError", "ApiSettings", "Embedder", "create_app"]


def create_app(
    engine: AsyncEngine,
    tokenizer: Tokenizer,
    settings: ApiSettings,
    *,
    auth: HttpAuth,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    policy: GuardPolicy | None = None,
    dashboard: DashboardSources | None = None,
) -> FastAPI:
    """The FastAPI application serving `engine` under `settings.model_name`, callers authenticated by `auth`.

    With a guard `policy`, every client-supplied message is checked for injection (and audited, PII
    redacted in the log) before it reaches the engine, and every answer is checked for leakage of
    documents the caller may not read before it leaves: a non-streamed one whole, a streamed one
    incrementally. With `dashboard` sources, the operator dashboard is served at `/ui`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="jijian", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = ServerMetrics(engine, settings.price_per_hour)
    usage_meter = UsageMeter()
    sessions = SessionStore()
    # The dashboard's playground calls the API with its session cookie instead of a key.
    auth.session_principal = lambda request: sessions.principal(request.cookies.get(SESSION_COOKIE))
    app.state.engine, app.state.metrics, app.state.usage = engine, metrics, usage_meter
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostAndOriginCheck, allowed_hosts=settings.allowed_hosts)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
        return ApiError(exc.status, exc.message, kind, code=exc.code).response()

    @app.exception_handler(404)
    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return ApiError(404, f"no route {request.url.path}", "invalid_request_error", code="not_found").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, _: Exception) -> JSONResponse:
        return ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"
        ).response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        if engine.error is not None:
            raise ApiError(503, f"engine failed: {engine.error!r}", "server_error")
        return {"status": "ok", "model": settings.model_name}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = OpenAIRoutes(
        engine, tokenizer, settings, metrics, usage_meter, retriever=retriever, embedder=embedder, policy=policy
    )
    app.include_router(routes.router(auth))

    if dashboard is not None:
        from jijian.serve.dashboard import DashboardAuth, mount_dashboard

        dashboard_auth = DashboardAuth(sessions=sessions, http_auth=auth)
        mount_dashboard(app, dashboard, dashboard_auth, model_name=settings.model_name, policy=policy,
                        retriever=retriever)  # fmt: skip
    return app
