"""The review dashboard: a FastAPI app rendering server-side HTML from the registry.

Routes: ``/`` (candidates, their gate status, production and its history), ``/candidates/{version}``
(OPE table, gate rules, plots, validation, lineage, home-page preview, and the review form for a
version awaiting approval), ``POST /candidates/{version}/review`` (resume the paused gate flow run),
``/api/candidates`` and ``/api/candidates/{version}`` (the same view models as JSON), ``/loop`` (the
living loop's rounds: a chart and a table from ``<paths.build>/loop/rounds.csv``), ``/api/loop`` (those
rounds as JSON), ``/healthz``, ``/login`` (GET the form, POST name and password) and ``POST /logout``.

Reads are open; approving or rejecting needs a reviewer from the reviewers file (see
``bartops.dashboard.auth``) logged in through ``/login``, and the session's CSRF token. The recorded
reviewer is the logged-in name. Every POST from a foreign Origin/Referer is refused with 403.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape

from bartops.dashboard import auth, svg
from bartops.dashboard.templates import TEMPLATES
from bartops.dashboard.views import (
    ReviewError,
    candidate_detail,
    candidate_rows,
    preview_for_bundle,
    production_view,
    read_loop,
    submit_review,
)
from bartops.registry import Registry, RegistryError

BundleLoader = Callable[[Path], tuple[Any, Any]]


def _default_loader(bundle_dir: Path) -> tuple[Any, Any]:
    from bartops.reward.policy import load_policy_bundle

    return load_policy_bundle(bundle_dir)


def _default_resume(flow_run_id: str, run_input: dict) -> None:
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    resume_flow_run(UUID(str(flow_run_id)), run_input=run_input)


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers for tables: up to ``digits`` significant decimals, integers without a point."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if digits == 0 or (float(x).is_integer() and abs(x) >= 1):
        return f"{x:,.0f}"
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e6):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{digits}f}".rstrip("0").rstrip(".")


def _environment() -> Environment:
    env = Environment(loader=DictLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True))
    env.globals["fmt"] = fmt
    return env


def default_loop_file() -> Path:
    """``<paths.build>/loop/rounds.csv`` from params.yaml (``build/loop/rounds.csv`` without one)."""
    from bartops.config import load_params_or_defaults
    from bartops.loop.record import ROUNDS_FILE

    try:
        build = load_params_or_defaults().paths.build
    except ValueError:  # an invalid params file: the dashboard still shows the registry
        build = Path("build")
    return Path(build) / "loop" / ROUNDS_FILE


def create_app(registry_root: Path, *, bundle_loader: BundleLoader | None = None,
               resume: Callable[..., Any] | None = None, preview_users: int = 3, seed: int = 0,
               preview_timestamp: str | None = None, reviewers_file: Path | None = None,
               loop_file: Path | None = None) -> FastAPI:
    """The dashboard app over the registry at ``registry_root``.

    ``bundle_loader(bundle_dir) -> (PagePolicy, Features)`` defaults to
    ``bartops.reward.policy.load_policy_bundle``; ``resume(flow_run_id, run_input=...)`` defaults to
    ``prefect.flow_runs.resume_flow_run`` against the configured Prefect API.  The preview shows
    ``preview_users`` known users plus one new user, sampled and paged with ``seed``.  The Loop page
    reads ``loop_file`` (default: ``default_loop_file()``) on every request.  Reviewers and the session
    secret are read from ``reviewers_file`` (default: ``auth.default_reviewers_file()``) on every request,
    so ``bartops dashboard add-reviewer`` takes effect without a restart.
    """
    registry = Registry(Path(registry_root))
    loop_path = Path(loop_file) if loop_file is not None else default_loop_file()
    loader = bundle_loader or _default_loader
    resume_fn = resume or _default_resume
    reviewers_path = Path(reviewers_file) if reviewers_file is not None else auth.default_reviewers_file()
    env = _environment()
    previews: OrderedDict[str, dict] = OrderedDict()
    lock = threading.Lock()
    app = FastAPI(title="bartops review dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    def auth_state(request: Request) -> dict:
        """The reviewers, the signing secret and the request's valid session (if any)."""
        try:
            reviewers, problem = auth.load_reviewers(reviewers_path), None
        except auth.AuthError as exc:
            reviewers, problem = {}, str(exc)
        secret = auth.load_secret(auth.secret_file(reviewers_path)) if reviewers else None
        session = auth.verify_session(secret, request.cookies.get(auth.SESSION_COOKIE))
        if session and session["name"] not in reviewers:  # removed since logging in
            session = None
        return {"reviewers": reviewers, "problem": problem, "secret": secret, "session": session,
                "user": session["name"] if session else None, "file": str(reviewers_path), "hint": auth.ADD_HINT,
                "csrf": auth.csrf_token(secret, session) if session else None}

    def no_reviewers(state: dict) -> str:
        return state["problem"] or (f"no reviewers are configured ({state['file']} lists none): add one on the "
                                    f"dashboard's machine with `{auth.ADD_HINT}`, then log in")

    def render(name: str, request: Request, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        msg = request.query_params.get("msg")
        html = env.get_template(name).render(
            production=registry.production(), flash=msg, flash_error=request.query_params.get("err") == "1",
            auth=_template_auth(auth_state(request)), path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status_code)

    def error(request: Request, status_code: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status_code)
        heading = "Not found" if status_code == 404 else f"Error {status_code}"
        return render("error.html", request, status_code, heading=heading, message=message)

    @app.middleware("http")
    async def same_origin_posts(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            problem = auth.foreign_origin(request.headers.get("origin"), request.headers.get("referer"),
                                          str(request.base_url))
            if problem:
                return error(request, 403, problem)
        return await call_next(request)

    def preview(version: str) -> dict:
        # registered versions are immutable, so a preview is computed once per version
        with lock:
            if version in previews:
                previews.move_to_end(version)
                return previews[version]
        result = preview_for_bundle(registry.path(version), loader, preview_users, seed, preview_timestamp)
        with lock:
            previews[version] = result
            while len(previews) > 8:
                previews.popitem(last=False)
        return result

    def detail_or_404(version: str) -> dict:
        try:
            return candidate_detail(registry, version)
        except (RegistryError, ValueError) as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, exc: HTTPException):
        return error(request, exc.status_code, str(exc.detail))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return render("index.html", request, rows=candidate_rows(registry), prod=production_view(registry),
                      root=str(registry.root))

    @app.get("/candidates/{version}", response_class=HTMLResponse)
    def candidate(request: Request, version: str) -> HTMLResponse:
        d = detail_or_404(version)
        plot_rows = [{"label": r.estimator, "value": r.difference.value, "ci_low": r.difference.ci_low,
                      "ci_high": r.difference.ci_high} for r in d["ope"] if r.difference is not None]
        w = d["weights"]
        return render(
            "candidate.html", request, d=d, seed=seed, preview=preview(version),
            interval_plot=svg.interval_svg(plot_rows, margin=d["margin"]) if plot_rows else "",
            calibration_plot=svg.reliability_svg(d["calibration"] or []),
            weights_plot=svg.histogram_svg(w.edges, w.counts, log_x=w.log_x) if w else "",
        )

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return render("login.html", request, next=_local(next), login_name="", message=None)

    @app.post("/login")
    def login(request: Request, name: str = Form(""), password: str = Form(""), next: str = Form("/")) -> Response:
        state = auth_state(request)
        if not state["reviewers"]:
            raise HTTPException(status_code=403, detail=no_reviewers(state))
        if not auth.authenticate(state["reviewers"], name, password):
            return render("login.html", request, 401, next=_local(next), login_name=name, message="wrong name or password")
        secret = auth.load_secret(auth.secret_file(reviewers_path), create=True)
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(auth.SESSION_COOKIE, auth.sign_session(secret, name), max_age=auth.SESSION_MAX_AGE,
                            path="/", httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        state = auth_state(request)
        if state["session"] and not auth.check_csrf(state["secret"], state["session"], csrf_token):
            raise HTTPException(status_code=403, detail="missing or invalid CSRF token: reload the page and try again")
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.post("/candidates/{version}/review")
    def review(request: Request, version: str, decision: str = Form(""), comment: str = Form(""),
               csrf_token: str = Form("")) -> RedirectResponse:
        state = auth_state(request)
        if not state["reviewers"]:
            raise HTTPException(status_code=403, detail=no_reviewers(state))
        if not state["user"]:
            raise HTTPException(status_code=401, detail="log in as a reviewer (/login) to approve or reject")
        if not auth.check_csrf(state["secret"], state["session"], csrf_token):
            raise HTTPException(status_code=403, detail="missing or invalid CSRF token: reload the page and submit again")
        detail_or_404(version)
        if decision not in ("approve", "reject"):
            raise HTTPException(status_code=400, detail=f"decision must be 'approve' or 'reject', got {decision!r}")
        target = f"/candidates/{quote(version)}"
        try:
            sent = submit_review(registry, version, decision == "approve", comment, state["user"], resume_fn)
        except ReviewError as exc:
            return RedirectResponse(f"{target}?err=1&msg={quote(str(exc))}", status_code=303)
        word = "approved" if sent["approved"] else "rejected"
        msg = (f"{word.capitalize()} by {sent['reviewer']}; gate flow run {sent['flow_run_id']} resumed. "
               "The flow records the decision and, if approved, promotes the version.")
        return RedirectResponse(f"{target}?msg={quote(msg)}", status_code=303)

    @app.get("/api/candidates")
    def api_candidates() -> JSONResponse:
        return JSONResponse(jsonable_encoder({"production": production_view(registry),
                                              "candidates": candidate_rows(registry)}))

    @app.get("/api/candidates/{version}")
    def api_candidate(version: str) -> JSONResponse:
        return JSONResponse(jsonable_encoder(detail_or_404(version)))

    def loop_model() -> dict:
        return read_loop(loop_path, registered=[r["version"] for r in registry.list()])

    @app.get("/loop", response_class=HTMLResponse)
    def loop(request: Request) -> HTMLResponse:
        model = loop_model()
        chart = svg.loop_svg(model["rows"], model["logging_value"], model["oracle_value"]) if model["rows"] else ""
        return render("loop.html", request, loop=model, chart=chart)

    @app.get("/api/loop")
    def api_loop() -> JSONResponse:
        model = loop_model()
        if model["error"]:
            return JSONResponse({"detail": model["error"], "file": model["file"]}, status_code=500)
        return JSONResponse(model["rounds"])

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "registry": str(registry.root), "production": registry.production()}

    return app


def _template_auth(state: dict) -> dict:
    """What pages may show of the auth state: never the password hashes or the secret."""
    return {"reviewers": bool(state["reviewers"]), **{k: state[k] for k in ("user", "csrf", "problem", "file", "hint")}}


def _local(target: str) -> str:
    """``target`` if it is a path on this dashboard, else ``/`` (no open redirects after login)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/"


def serve(registry_root: Path, host: str = "127.0.0.1", port: int = 8050, **kwargs: Any) -> None:
    """Run the dashboard with uvicorn (blocks)."""
    import uvicorn

    uvicorn.run(create_app(registry_root, **kwargs), host=host, port=port, log_level="info")
