"""The dashboard's HTTP routes under /ui: log-in, the five pages, their JSON endpoints and the static files."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from jijian.guard.http_auth import AuthError, HttpAuth, client_address
from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal
from jijian.serve.cpu_threads import to_side_thread
from jijian.serve.dashboard import views
from jijian.serve.dashboard.charts import format_number, line_chart
from jijian.serve.dashboard.sessions import SESSION_COOKIE, SessionStore
from jijian.serve.dashboard.sources import DashboardSources
from jijian.serve.rag import Retriever

PAGES = (("training", "Training"), ("kb", "Knowledge base"), ("serving", "Serving"), ("guard", "Guard"),
         ("chat", "Chat playground"))  # fmt: skip
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


LOGIN_CSRF_COOKIE = "jijian_login_csrf"


@dataclass
class DashboardAuth:
    """How the dashboard authenticates: the server's one key ring (through `HttpAuth`) and its session store."""

    sessions: SessionStore
    http_auth: HttpAuth

    def keys_required(self) -> bool:
        """True when the deployment has API keys (then every page needs a log-in)."""
        return self.http_auth.keys_required

    def principal_for_key(self, key: str | None) -> Principal | None:
        """The principal holding an API key, or None."""
        return self.http_auth.principal_for_key(key)


class NotLoggedIn(Exception):
    """A page or endpoint was requested without a valid session on a deployment with API keys."""


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jijian.serve.dashboard", "templates"),
        autoescape=True,
    )
    env.filters["num"] = lambda v, digits=3: "—" if v is None else format_number(float(v)) if digits else v
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * float(v):.1f}%"
    env.filters["ms"] = lambda v: "—" if v is None else f"{1000 * float(v):.1f} ms"
    env.filters["utc"] = lambda ts: (
        "—" if ts is None else dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    )
    env.filters["bytes"] = lambda n: f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
    return env


@dataclass
class Dashboard:
    """What every dashboard route reads: the deployment's sources, authentication, templates and the server."""

    app: FastAPI
    sources: DashboardSources
    auth: DashboardAuth
    model_name: str
    policy: GuardPolicy | None = None
    retriever: Retriever | None = None
    env: jinja2.Environment = field(default_factory=_templates)

    def viewer(self, request: Request) -> views.Viewer:
        """The dependency of every page and endpoint: who is looking (the server's one authentication, with
        the log-in cookie or a Bearer key); raises NotLoggedIn on a deployment with keys and no log-in."""
        if not self.auth.keys_required():
            return views.Viewer(None, open_deployment=True)
        try:
            principal = self.auth.http_auth.authenticate(request, rate_limited=False)
        except AuthError:
            raise NotLoggedIn from None
        if principal.anonymous:
            raise NotLoggedIn
        return views.Viewer(principal, open_deployment=False)

    def render(
        self, template: str, who: views.Viewer, context: Callable[[views.Viewer], dict[str, Any]], status: int = 200
    ) -> HTMLResponse:
        """A page rendered for `who`."""
        html = self.env.get_template(template).render(
            viewer=who, pages=PAGES, deployment=self.sources.name, model_name=self.model_name, **context(who)
        )
        return HTMLResponse(html, status_code=status)

    def serving(self, who: views.Viewer) -> dict[str, Any]:
        """The live serving figures for `who`."""
        state = self.app.state
        return views.serving_view(state.engine, state.metrics, state.usage, who, self.sources.currency)


def _safe_next(target: str | None) -> str:
    # Only redirect inside the dashboard: an open redirect would help phishing.
    return target if target and target.startswith("/ui/") and not target.startswith("/ui//") else "/ui/training"


def login_router(dashboard: Dashboard) -> APIRouter:
    """/ui/login (CSRF-protected, throttled per address), /ui/logout and the /ui home redirect."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    auth = dashboard.auth

    def login_form(error: str | None = None, next_url: str = "/ui/training", status: int = 200) -> HTMLResponse:
        # Log-in CSRF: the form carries a token that must match a SameSite=Strict cookie set with it,
        # so another site cannot log a browser in under the attacker's key.
        csrf = secrets.token_urlsafe(32)
        html = dashboard.env.get_template("login.html.jinja").render(
            deployment=dashboard.sources.name, keys_required=auth.keys_required(), error=error, next_url=next_url,
            csrf=csrf,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, max_age=3600, path="/ui/login", httponly=True, samesite="strict")
        return response

    @router.get("")
    @router.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/training", status_code=303)

    @router.get("/login")
    async def login_page(request: Request) -> HTMLResponse:
        return login_form(next_url=_safe_next(request.query_params.get("next")))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key = (form.get("api_key") or [""])[0].strip()
        next_values = form.get("next")
        next_url = _safe_next(next_values[0] if next_values else None)
        if not auth.keys_required():
            return RedirectResponse(next_url, status_code=303)
        sent, expected = (form.get("csrf") or [""])[0], request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return login_form("the log-in form expired or came from another site: try again", next_url, status=403)
        throttle, client = auth.http_auth.login_throttle, client_address(request)
        if throttle.blocked(client):
            return login_form("too many failed log-ins from this address: wait a minute", next_url, status=429)
        principal = auth.principal_for_key(key) if key else None
        if principal is None:
            throttle.failed(client)
            return login_form("api_key: missing or invalid API key", next_url, status=401)
        throttle.succeeded(client)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            auth.sessions.open(principal),
            max_age=int(auth.sessions.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> RedirectResponse:
        auth.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router


def training_context(sources: DashboardSources) -> dict[str, Any]:
    """The training page: every run with its charts."""
    view = views.training_view(sources)
    for run in view["runs"]:
        series, good = run["series"], run["goodput"]
        run["charts"] = {
            "loss": line_chart(
                {"train": series["loss"], "validation": series["val_loss"]}, title="loss", x_label="step"
            ),
            "throughput": line_chart({"tokens/s": series["tokens_per_s"]}, title="tokens/s", x_label="step"),
            "mfu": line_chart(
                {"MFU": series["mfu"]}, title="MFU", x_label="step", y_format=lambda v: f"{100 * v:.2g}%"
            ),
            "goodput": line_chart(
                {"goodput": good["curve"] if good else []},
                title="goodput (productive / wall time)",
                x_label="wall time (s)",
                y_format=lambda v: f"{100 * v:.0f}%",
            ),
        }
    return view


def pages_router(dashboard: Dashboard) -> APIRouter:
    """The five HTML pages, each behind the viewer dependency."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    viewer = Depends(dashboard.viewer)
    sources, policy = dashboard.sources, dashboard.policy

    @router.get("/training")
    async def training_page(who: views.Viewer = viewer) -> HTMLResponse:
        return await to_side_thread(dashboard.render, "training.html.jinja", who, lambda _: training_context(sources))

    @router.get("/kb")
    async def kb_page(request: Request, who: views.Viewer = viewer) -> HTMLResponse:
        query = request.query_params.get("q", "")
        collection = request.query_params.get("collection", "")
        hits, error, status = None, None, 200
        if query:
            try:
                hits = await views.kb_search(dashboard.retriever, who, collection, query, 5, policy)
            except views.SearchError as exc:
                error, status = str(exc), exc.status

        def context(who: views.Viewer) -> dict[str, Any]:
            found = {"query": query, "collection": collection, "hits": hits, "error": error}
            return {**views.kb_view(sources, who, policy), **found}

        return await to_side_thread(dashboard.render, "kb.html.jinja", who, context, status)

    @router.get("/serving")
    async def serving_page(who: views.Viewer = viewer) -> HTMLResponse:
        return dashboard.render("serving.html.jinja", who, dashboard.serving)

    @router.get("/guard")
    async def guard_page(who: views.Viewer = viewer) -> HTMLResponse:
        return await to_side_thread(
            dashboard.render, "guard.html.jinja", who, lambda who: views.guard_view(sources, who)
        )

    @router.get("/chat")
    async def chat_page(who: views.Viewer = viewer) -> HTMLResponse:
        return await to_side_thread(
            dashboard.render, "chat.html.jinja", who, lambda who: views.kb_view(sources, who, policy)
        )

    return router


def data_router(dashboard: Dashboard) -> APIRouter:
    """The JSON endpoints under /ui/api, behind the same viewer dependency (401 without a log-in)."""
    router = APIRouter(prefix="/ui/api", include_in_schema=False)
    viewer = Depends(dashboard.viewer)
    sources, policy = dashboard.sources, dashboard.policy

    def answer(who: views.Viewer, body: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"viewer": who.to_json(), **body})

    @router.get("/training")
    async def training_data(who: views.Viewer = viewer) -> JSONResponse:
        return answer(who, await to_side_thread(views.training_view, sources))

    @router.get("/kb")
    async def kb_data(who: views.Viewer = viewer) -> JSONResponse:
        return answer(who, await to_side_thread(views.kb_view, sources, who, policy))

    @router.get("/kb/search")
    async def kb_search_data(request: Request, who: views.Viewer = viewer) -> JSONResponse:
        params = request.query_params
        try:
            k = int(params.get("k", "5"))
            hits = await views.kb_search(dashboard.retriever, who, params.get("collection", ""), params.get("q", ""),
                                         k, policy)  # fmt: skip
        except ValueError:
            return JSONResponse({"error": {"message": "k: must be an integer", "code": "invalid"}}, 400)
        except views.SearchError as exc:
            return JSONResponse({"error": {"message": str(exc), "code": "search_failed"}}, exc.status)
        return answer(who, {"hits": hits})

    @router.get("/serving")
    async def serving_data(who: views.Viewer = viewer) -> JSONResponse:
        return answer(who, dashboard.serving(who))

    @router.get("/guard")
    async def guard_data(who: views.Viewer = viewer) -> JSONResponse:
        return answer(who, await to_side_thread(views.guard_view, sources, who))

    @router.get("/me")
    async def me(who: views.Viewer = viewer) -> JSONResponse:
        return answer(who, {"model": dashboard.model_name})

    return router


def static_router() -> APIRouter:
    """The dashboard's script and stylesheet."""
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            return JSONResponse({"error": {"message": f"no static file {name!r}", "code": "not_found"}}, 404)
        body = resources.files("jijian.serve.dashboard").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    return router


def mount_dashboard(
    app: FastAPI,
    sources: DashboardSources,
    auth: DashboardAuth,
    *,
    model_name: str,
    policy: GuardPolicy | None = None,
    retriever: Retriever | None = None,
) -> None:
    """Add the /ui routers to the API's app (which must carry `state.engine`, `state.metrics`, `state.usage`)."""
    dashboard = Dashboard(app, sources, auth, model_name, policy, retriever)

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, _: NotLoggedIn) -> Response:
        if request.url.path.startswith("/ui/api/"):
            return JSONResponse({"error": {"message": "log in at /ui/login first", "code": "not_logged_in"}}, 401)
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
        return RedirectResponse(f"/ui/login?next={target}", status_code=303)

    for router in (login_router(dashboard), pages_router(dashboard), data_router(dashboard), static_router()):
        app.include_router(router)
