"""The dashboard: server-rendered pages (Starlette + Jinja2), login, CSRF, ``/metrics``.

Pages only read through :mod:`cloud_hub.db.queries` (shared with the CLI); the forms call the same functions as the CLI
(operator labels: :func:`cloud_hub.registry.labels.label_anomaly`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub import db
from cloud_hub.db import queries
from cloud_hub.home import HubHome
from cloud_hub.registry import labels as registry_labels
from cloud_hub.registry import lineage
from cloud_hub.rollout import api as rollout_api
from cloud_hub.rollout.states import ROLLOUT_TRANSITIONS
from cloud_hub.web import auth, charts

HERE = Path(__file__).parent
MAX_BODY_BYTES = 64 * 1024  # no dashboard request needs more; bounds what a client can make us buffer
PAGE_SIZE = 100
PUBLIC_PATHS = ("/login", "/static/", "/metrics", "/healthz")
LABELS = ("true_positive", "false_positive")
# Operator command → the rollout state it asks for (shown only where the transition table allows it).
ROLLOUT_COMMANDS = {db.RolloutCommand.PAUSE: db.RolloutState.PAUSED, db.RolloutCommand.RESUME: db.RolloutState.RUNNING,
                    db.RolloutCommand.ABORT: db.RolloutState.ABORTED,
                    db.RolloutCommand.ROLLBACK: db.RolloutState.ROLLED_BACK}


@dataclass
class WebState:
    """What the routes share: the hub home, sessions and optional live parts of a running hub."""

    home: HubHome
    require_login: bool = True
    users: auth.Users = field(init=False)
    throttle: auth.LoginThrottle = field(default_factory=auth.LoginThrottle)
    metrics: Any = None  # cloud_hub.web.metrics.HubMetrics
    alerts: Any = None  # cloud_hub.web.alerts.AlertDispatcher

    def __post_init__(self) -> None:
        self.users = auth.Users(self.home.path)
        self.sessions = self.home.sessions()


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (declared or streamed) with 413."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await PlainTextResponse("request body too large", 413)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """No framing, no sniffing, no referrer leaks; scripts and styles only from the dashboard itself."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"content-security-policy",
         b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.HEADERS
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["ago"] = _ago
    env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "—"
    env.filters["num"] = lambda v, digits=3: "—" if v is None else f"{v:.{digits}g}"
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return Jinja2Templates(env=env)


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    d = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if d >= size:
            return f"{d / size:.0f} {unit} ago"
    return f"{d:.0f} s ago"


def _float_arg(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number") from None
    if not math.isfinite(value):
        raise HTTPException(400, f"{name} must be finite")
    return value


def _int_arg(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    if not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise HTTPException(400, f"{name} must be an integer")
    return int(raw)


def create_app(home: HubHome, *, require_login: bool = True, metrics: Any = None, alerts: Any = None) -> Starlette:
    """The dashboard for ``home``. ``require_login=False`` only for a loopback-bound demo
    (:func:`cloud_hub.web.server.check_bind` enforces that)."""
    cfg = home.config().web
    state = WebState(home, require_login, metrics=metrics, alerts=alerts)
    templates = _templates()

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(user=request.scope.get("user", ""), csrf=auth.csrf_token(request), auth=state.require_login,
                       alert_failures=state.alerts.failures() if state.alerts else {}, path=request.url.path,
                       query=dict(request.query_params))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def gate(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            user = request.session.get("user") if state.require_login else "local"
            path = scope["path"]
            if state.require_login and user and user not in state.users.names():
                request.session.clear()  # the account was removed: its sessions end
                user = None
            scope["user"] = user or ""
            if not user and not path.startswith(PUBLIC_PATHS):
                nxt = path + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
                await RedirectResponse(f"/login?{urlencode({'next': nxt})}", 303)(scope, receive, send)
                return
        await app(scope, receive, send)

    class LoginGate:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await gate(scope, receive, send, self.app)

    # ------------------------------------------------------------------ login

    async def login_page(request: Request) -> Response:
        if not state.require_login:
            return RedirectResponse("/fleet", 303)
        return render(request, "login.html", error="", next=request.query_params.get("next", "/fleet"),
                      no_users=not state.users.names())

    async def login(request: Request) -> Response:
        form = await auth.checked_form(request)
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        nxt = str(form.get("next", "/fleet"))
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/fleet"  # only local redirects
        if state.throttle.blocked(name):
            return render(request, "login.html", 429, error="Too many failed logins; wait a minute.", next=nxt,
                          no_users=False)
        if not state.users.check(name, password):
            state.throttle.failed(name)
            return render(request, "login.html", 401, error="Wrong user name or password.", next=nxt,
                          no_users=not state.users.names())
        state.throttle.succeeded(name)
        request.session.clear()  # new session: a token planted before login is worthless
        request.session["user"] = name
        return RedirectResponse(nxt, 303)

    async def logout(request: Request) -> Response:
        await auth.checked_form(request)
        request.session.clear()
        return RedirectResponse("/login", 303)

    # ------------------------------------------------------------------ pages

    async def index(request: Request) -> Response:
        return RedirectResponse("/fleet", 303)

    async def fleet(request: Request) -> Response:
        q = request.query_params
        sort = q.get("sort", "device_id")
        desc = q.get("desc", "") == "1"
        now = time.time()
        with state.sessions() as s:
            rows = queries.fleet(s, q=q.get("q", "")[:64], group=q.get("group", "")[:64],
                                 status=q.get("status", "")[:16], sort=sort, desc=desc, now=now)
            groups = queries.groups(s)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        return render(request, "fleet.html", rows=rows, groups=groups, sort=sort, desc=desc, counts=counts,
                      sorts=queries.DEVICE_SORTS)

    async def device(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        hours = _float_arg(request, "hours") or 24.0
        hours = min(max(hours, 0.01), 24 * 30)
        now = time.time()
        since = now - hours * 3600
        with state.sessions() as s:
            dev = s.get(db.Device, device_id)
            if dev is None:
                raise HTTPException(404, f"no device {device_id!r}")
            total, points = queries.score_points(s, device_id, since)
            line = queries.telemetry_line(s, device_id, since)
            trained_threshold = queries.model_threshold(s, dev.model_version)
            listed = queries.anomalies(s, device_id, since, limit=PAGE_SIZE)
            newest = [la.event for la in listed]
            history = queries.status_history(s, device_id)
            detail = queries.device_detail(s, device_id, heartbeats=1)
            beats = detail.heartbeats if detail else []
            labels = queries.current_labels(s, [p.id for p in points])
            labels.update({la.event.id: la.label.label.value for la in listed if la.label})
            status = queries.device_status(dev, now)
        t0 = min([since, *(pt.ts for pt in points)])
        thresholds: list[tuple[float, float]] = []
        if not points and line and trained_threshold is not None:
            thresholds.append((t0, trained_threshold))  # no event to say which was in force: the model's own
        for pt in points:
            if not thresholds or thresholds[-1][1] != pt.threshold:
                thresholds.append((pt.ts, pt.threshold))
        shown = {e.id for e in newest}
        marks = [charts.Mark(pt.ts, pt.score, f"{time.strftime('%H:%M:%S', time.gmtime(pt.ts))} score {pt.score:.3g}"
                             f" ({pt.top_feature})", f"a{pt.id}" if pt.id in shown else "",
                             {"true_positive": "tp", "false_positive": "fp"}.get(labels.get(pt.id, ""), ""))
                 for pt in points]
        chart = charts.score_timeline(t0, now, line, thresholds, marks)
        attributions = {e.id: charts.bars(sorted(e.attribution.items(), key=lambda kv: -kv[1])[:6])
                        for e in newest}
        return render(request, "device.html", dev=dev, status=status, events=newest, total=total,
                      chart=chart, history=history, beats=beats, hours=hours,
                      attributions=attributions, labels=labels)

    async def anomalies(request: Request) -> Response:
        q = request.query_params
        hours = _float_arg(request, "hours")
        label = q.get("label", "")
        if label not in ("", "unlabelled", *LABELS):
            raise HTTPException(400, f"label must be unlabelled or one of {', '.join(LABELS)}")
        filters: dict[str, Any] = {
            "device": q.get("device", "")[:64] or None,
            "since": time.time() - hours * 3600 if hours else None,
            "unlabelled": label == "unlabelled",
            "label": db.LabelKind(label) if label in LABELS else None,
            "min_score": _float_arg(request, "min_score"),
            "model_version": _int_arg(request, "model"),
        }
        page = max(1, _int_arg(request, "page", 1) or 1)
        with state.sessions() as s:
            total = queries.anomaly_count(s, **filters)
            listed = queries.anomalies(s, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, **filters)
        events = [la.event for la in listed]
        labels = {la.event.id: la.label.label.value for la in listed if la.label}
        pages = max(1, math.ceil(total / PAGE_SIZE))
        return render(request, "anomalies.html", events=events, total=total, page=page, pages=pages,
                      labels=labels, label_choices=LABELS)

    async def label(request: Request) -> Response:
        form = await auth.checked_form(request)
        anomaly_id = request.path_params["anomaly_id"]
        value = str(form.get("label", ""))
        if value not in LABELS:
            raise HTTPException(400, f"label must be one of {', '.join(LABELS)}")
        note = str(form.get("note", "")).strip() or None
        with state.sessions() as s:
            try:  # the registry's one labelling function, as `cloud-hub anomalies label`
                registry_labels.label_anomaly(s, anomaly_id, value, note=note, by=request.scope["user"])
            except registry_labels.UnknownAnomaly as exc:
                raise HTTPException(404, str(exc)) from None
            except registry_labels.LabelError as exc:
                raise HTTPException(400, str(exc)) from None
        back = str(form.get("back", ""))
        return RedirectResponse(back if back.startswith("/") and not back.startswith("//") else "/anomalies", 303)

    def _commands(r: db.Rollout) -> list[str]:
        """The operator commands this rollout's state can take (the rollout package's transition table)."""
        return [c.value for c, target in ROLLOUT_COMMANDS.items() if target in ROLLOUT_TRANSITIONS[r.state]]

    async def rollouts(request: Request) -> Response:
        views = rollout_api.views(state.home, limit=50)
        return render(request, "rollouts.html", views=views, commands={v.rollout.id: _commands(v.rollout)
                                                                       for v in views})

    async def rollout(request: Request) -> Response:
        rid = request.path_params["rollout_id"]
        views = rollout_api.views(state.home, rid)
        if not views:
            raise HTTPException(404, f"no rollout {rid}")
        view = views[0]
        waves: dict[int, list[db.RolloutDevice]] = {}
        for d in view.devices:
            waves.setdefault(d.wave, []).append(d)
        return render(request, "rollout.html", view=view, r=view.rollout, waves=waves,
                      commands=_commands(view.rollout))

    async def rollout_command(request: Request) -> Response:
        form = await auth.checked_form(request)
        rid = request.path_params["rollout_id"]
        try:
            command = db.RolloutCommand(str(form.get("command", "")))
        except ValueError:
            raise HTTPException(400, f"command must be one of {', '.join(c.value for c in db.RolloutCommand)}") from None
        with state.sessions() as s:
            try:  # the same call as `cloud-hub rollout pause|resume|abort|rollback`; serve carries it out
                rollout_api.request(s, rid, command)
            except rollout_api.RolloutError as exc:
                raise HTTPException(404 if "no rollout" in str(exc) else 409, str(exc)) from None
            s.commit()
        return RedirectResponse(f"/rollouts/{rid}", 303)

    async def models(request: Request) -> Response:
        with state.sessions() as s:
            views = lineage.versions(s)
            in_use = queries.models_in_use(s)
            decisions = queries.retrain_decisions(s)
        return render(request, "models.html", views=views, in_use=in_use, decisions=decisions)

    async def metrics_endpoint(request: Request) -> Response:
        token = cfg.metrics_token
        if token:
            import hmac

            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return PlainTextResponse("unauthorized", 401, headers={"WWW-Authenticate": "Bearer"})
        if state.metrics is None:
            from cloud_hub.web.metrics import HubMetrics

            state.metrics = HubMetrics(home)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/fleet", fleet),
        Route("/devices/{device_id:str}", device),
        Route("/anomalies", anomalies),
        Route("/anomalies/{anomaly_id:int}/label", label, methods=["POST"]),
        Route("/rollouts", rollouts),
        Route("/rollouts/{rollout_id:int}", rollout),
        Route("/rollouts/{rollout_id:int}/command", rollout_command, methods=["POST"]),
        Route("/models", models),
        Route("/metrics", metrics_endpoint),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[
        Middleware(SecurityHeaders),
        Middleware(BodyLimit),
        Middleware(SessionMiddleware, secret_key=auth.session_secret(home.path), session_cookie="edgesentry_session",
                   max_age=int(cfg.session_hours * 3600), same_site="strict", https_only=cfg.secure_cookie),
        Middleware(LoginGate),
    ])
    app.state.web = state
    return app


__all__ = ["LABELS", "WebState", "create_app"]
