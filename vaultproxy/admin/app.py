"""The admin ASGI app: routes parse -> call core -> render. Errors are always
``{"error", "code"}`` JSON; no response carries a secret value (models have no such field).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.routing import Route

from vaultproxy import __version__
from vaultproxy.admin import (
    approval_routes,
    env_routes,
    health_routes,
    keystore_routes,
    proxy_route,
    source_routes,
    stream_route,
)
from vaultproxy.admin.actions import (
    audit_admin,
    refresh_keystore,
    reload_registry,
    warn_missing_secrets,
)
from vaultproxy.admin.context import AdminContext, caller, proxy_state
from vaultproxy.admin.guard import Guard
from vaultproxy.admin.mcp_route import MCP_PATH, McpEndpoint
from vaultproxy.admin.models import (
    AuditOut,
    ErrorOut,
    HealthOut,
    ReloadOut,
    ServiceOut,
    ServicesOut,
)
from vaultproxy.admin.ratelimit import TooFast
from vaultproxy.audit import metrics
from vaultproxy.audit import status as audit_status
from vaultproxy.config.models import Service
from vaultproxy.errors import (
    ConfigError,
    UsageError,
    VaultproxyError,
    error_payload,
    error_response,
    problems_text,
)
from vaultproxy.keystore.cached import has_secret

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong admin token"},
    403: {"model": ErrorOut, "description": "refused"},
    503: {"model": ErrorOut, "description": "locked or not ready"},
}


def error_json(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_payload(code, message, **extra), status_code=status,
                        headers={"X-Vaultproxy-Error": code})


def create_app(ctx: AdminContext) -> FastAPI:
    app = FastAPI(
        title="vaultproxy admin API", version=__version__, docs_url=None, redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.admin = ctx
    app.add_middleware(Guard, token=ctx.token)
    _handlers(app)
    app.include_router(_router(ctx))
    app.include_router(health_routes.router, responses=ERRORS)
    app.include_router(keystore_routes.router, responses=ERRORS)
    app.include_router(proxy_route.router, responses=ERRORS)
    app.include_router(source_routes.router, responses=ERRORS)
    app.include_router(approval_routes.router, responses=ERRORS)  # SPEC §10
    app.include_router(env_routes.router, responses=ERRORS)
    app.include_router(stream_route.router, responses=ERRORS)
    mcp = McpEndpoint(ctx)  # SPEC §11; its own caller check (admin or agent token)
    ctx.closers.append(mcp.aclose)
    app.router.routes.append(Route(MCP_PATH, mcp, methods=["GET", "POST", "DELETE"],
                                   include_in_schema=False))
    live = ctx.live
    metrics.bind(
        lambda: (s := live.state) is None or s.locked,
        lambda: len(s.registry.services) if (s := live.state) is not None else 0,
    )
    metrics.bind_audit(
        lambda: audit_status.combined(s.audit) if (s := live.state) is not None else {}
    )
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(TooFast)
    async def too_fast(request: Request, exc: TooFast) -> Response:
        r = error_json(429, "rate_limited", str(exc))
        r.headers["Retry-After"] = str(exc.retry_after)
        return r

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> Response:
        return error_json(409, "config_invalid", "services.toml is invalid; the previous "
                          "registry stays in use", problems=exc.problems)

    @app.exception_handler(UsageError)
    async def usage(request: Request, exc: UsageError) -> Response:
        return error_json(400, "invalid_request", str(exc))

    @app.exception_handler(VaultproxyError)
    async def vaultproxy_error(request: Request, exc: VaultproxyError) -> Response:
        status, code, message = error_response(exc)
        r = error_json(status, code, message)
        for name, value in exc.extra_headers:  # Retry-After, X-Vaultproxy-Approval
            r.headers[name] = value
        return r

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        lines = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            lines.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error_json(422, "invalid_request", "; ".join(lines) or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_json(exc.status_code, codes.get(exc.status_code, "http_error"),
                          str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        logger.error("admin API: %s %s failed: %s", request.method, request.url.path,
                     type(exc).__name__)
        return error_json(500, "internal", "internal error")


def _service_out(service: Service, present: bool | None) -> ServiceOut:
    return ServiceOut(
        name=service.name, hosts=list(service.hosts), mode=service.mode, auth=service.auth,
        secret=service.secret_name, header_name=service.header_name, prefix=service.prefix,
        param_name=service.param_name, placeholder=service.placeholder_text,
        substitute_in=list(service.substitute_in), env=service.env,
        connect_to=service.connect_to, allow_private=service.allow_private,
        allow_loopback=service.allow_loopback, ca_cert=service.ca_cert,
        insecure_tls=service.insecure_tls, secret_present=present,
    )


def _router(ctx: AdminContext) -> Any:
    from fastapi import APIRouter

    router = APIRouter(responses=ERRORS)

    @router.get("/v1/health", response_model=HealthOut, response_model_exclude_none=True)
    async def health() -> HealthOut:
        st = ctx.live.state
        problems = [] if st is None else audit_status.problems(st.audit)
        return HealthOut(
            status="degraded" if problems else "ok",
            locked=True if st is None else st.locked,
            services=0 if st is None else len(st.registry.services),
            version=__version__,
            problems=problems or None,
        )

    @router.get("/v1/services", response_model=ServicesOut)
    async def services() -> ServicesOut:
        st = ctx.live.require()
        ks = st.session.keystore
        return ServicesOut(services=[
            _service_out(s, None if ks is None else has_secret(ks, s.secret_name))
            for s in st.registry.services
        ])

    @router.post("/v1/reload", response_model=ReloadOut,
                 responses={409: {"model": ErrorOut, "description": "services.toml is invalid"}})
    async def reload(request: Request) -> ReloadOut:
        st = proxy_state(request)
        who = caller(request)
        try:
            before, after = reload_registry(st)
        except ConfigError as e:
            # In the proxy's own log too, as a refused SIGHUP is (whoever asked for it).
            logger.error("reload refused (asked by %s), keeping the previous registry "
                         "(%d services):\n%s", who, len(st.registry.services),
                         problems_text(e))
            refresh_keystore(st)  # keystore.enc is still re-read, as on SIGHUP
            audit_admin(st, caller=who, action="reload", method="POST", path="/v1/reload",
                        status=409, code="config_invalid")
            raise
        refresh_keystore(st)  # what the CLI wrote to keystore.enc meanwhile
        warn_missing_secrets(st)
        await st.settled()  # every worker process runs the new registry
        audit_admin(st, caller=who, action="reload", method="POST", path="/v1/reload", status=200)
        return ReloadOut(before=before, after=after)

    @router.get("/v1/audit", response_model=AuditOut)
    async def audit(
        limit: int = Query(100, ge=1, le=10000),
        since: str | None = Query(None, max_length=64, description="ISO-8601 UTC; ts >= since"),
        service: str | None = Query(None, max_length=64),
    ) -> AuditOut:
        st = ctx.live.require()
        await st.settled()  # records of requests that worker processes answered are in
        records = await asyncio.to_thread(st.audit.tail, limit, since, service)
        return AuditOut(records=records)

    @router.get("/metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus() -> Response:
        st = ctx.live.state
        if st is not None:
            await st.settled()  # worker processes' flows are counted from their audit records
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.post("/v1/dashboard/login", responses={
        404: {"model": ErrorOut, "description": "the dashboard is off"}})
    async def dashboard_login(request: Request) -> JSONResponse:
        """A one-time login URL for the dashboard (`vaultproxy dashboard`, SPEC §12)."""
        mint = ctx.dashboard_login
        if mint is None:
            return error_json(404, "dashboard_off", "the dashboard is off (run with "
                              "--dashboard-listen HOST:PORT)")
        st = proxy_state(request)
        audit_admin(st, caller=caller(request), action="dashboard_login", method="POST",
                    path="/v1/dashboard/login", status=200)
        return JSONResponse({"url": mint()})

    return router
