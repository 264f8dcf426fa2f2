"""`bartops check`: does each user entry point of the running stack answer, and agree with the registry?

Three checks, each a pure function of addresses and expectations (no Prefect, BentoML or dashboard
imports), returning a ``Check`` whose ``detail`` names what was asked and what was observed:

- ``prefect``: the Prefect API lists the deployment ``retrain/nightly``
  (``GET <api>/deployments/name/retrain/nightly`` → 200) READY and not paused (a runner serves it);
- ``service``: ``POST /home`` answers a page whose ``policy_version`` is the registry's production
  version (``registry/production.json``) with the configured number of shelves;
- ``dashboard``: ``GET /`` mentions that version and ``GET /api/candidates`` reports it as production.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bartops.config import OpsParams

DEPLOYMENT = "retrain/nightly"
HOME_REQUEST = {"user_id": 5, "platform": "ios", "region": "SE"}


@dataclass(frozen=True)
class Check:
    """One entry point's verdict: ``ok`` and a line naming what was checked and what was observed."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<10} {self.detail}"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _request(method: str, url: str, timeout: float, **kwargs: Any) -> httpx.Response | str:
    """The response, or a string naming why there was none."""
    try:
        return httpx.request(method, url, timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        return f"{method} {url} got no answer: {type(exc).__name__}: {exc}"


def check_prefect(api_url: str, deployment: str = DEPLOYMENT, timeout: float = 10.0) -> Check:
    """The Prefect API at ``api_url`` (``…/api``) lists ``deployment`` (``flow/name``)."""
    url = f"{api_url.rstrip('/')}/deployments/name/{deployment}"
    r = _request("GET", url, timeout)
    if isinstance(r, str):
        return Check("prefect", False, r)
    if r.status_code != 200:
        return Check("prefect", False, f"GET {url} answered {r.status_code} (expected 200): {_short(r.text)}")
    try:
        body = r.json()
        name, status = body.get("name"), body.get("status")
    except (ValueError, AttributeError):
        return Check("prefect", False, f"GET {url} answered 200 but not a JSON deployment: {_short(r.text)}")
    if name != deployment.split("/", 1)[1]:
        return Check("prefect", False, f"GET {url} answered deployment name {name!r} (expected {deployment!r})")
    if status != "READY" or body.get("paused") is not False:
        # registered deployments outlive their runner: a stopped runner pauses them, and Prefect marks
        # them NOT_READY a minute after the last poll
        return Check("prefect", False, f"deployment {deployment} is listed but its status is {status!r}, "
                                       f"paused {body.get('paused')!r} (expected 'READY', False): no runner serves it")
    return Check("prefect", True, f"deployment {deployment} listed at {api_url}, READY, not paused")


def check_service(service_url: str, version: str | None, shelves: int, timeout: float = 30.0,
                  request: dict[str, Any] | None = None) -> Check:
    """``POST /home`` answers a page of ``shelves`` shelves from policy ``version``."""
    url = f"{service_url.rstrip('/')}/home"
    body = request or HOME_REQUEST
    r = _request("POST", url, timeout, json=body)
    if isinstance(r, str):
        return Check("service", False, r)
    if r.status_code != 200:
        return Check("service", False, f"POST {url} {json.dumps(body)} answered {r.status_code}: {_short(r.text)}")
    try:
        page = r.json()
        served, got = page.get("policy_version"), len(page.get("shelves") or [])
    except (ValueError, AttributeError, TypeError):
        return Check("service", False, f"POST {url} answered 200 but not a JSON page: {_short(r.text)}")
    problems = []
    if version is None:
        problems.append("the registry has no production version to compare with")
    elif served != version:
        problems.append(f"policy_version {served!r}, but production is {version!r}")
    if got != shelves:
        problems.append(f"{got} shelves (expected {shelves})")
    if problems:
        return Check("service", False, f"POST {url}: " + "; ".join(problems))
    return Check("service", True, f"POST {url}: policy {served}, {got} shelves")


def check_dashboard(dashboard_url: str, version: str | None, timeout: float = 30.0) -> Check:
    """``GET /`` mentions production ``version`` and ``GET /api/candidates`` reports it as production."""
    base = dashboard_url.rstrip("/")
    if version is None:
        return Check("dashboard", False, "the registry has no production version to look for")
    r = _request("GET", f"{base}/", timeout)
    if isinstance(r, str):
        return Check("dashboard", False, r)
    if r.status_code != 200:
        return Check("dashboard", False, f"GET {base}/ answered {r.status_code}: {_short(r.text)}")
    if version not in r.text:
        return Check("dashboard", False, f"GET {base}/ does not mention production version {version!r} "
                                         f"({len(r.text)} characters: {_short(r.text, 120)})")
    api = f"{base}/api/candidates"
    a = _request("GET", api, timeout)
    if isinstance(a, str):
        return Check("dashboard", False, a)
    if a.status_code != 200:
        return Check("dashboard", False, f"GET {api} answered {a.status_code}: {_short(a.text)}")
    try:
        listed = (a.json().get("production") or {}).get("version")
    except (ValueError, AttributeError):
        return Check("dashboard", False, f"GET {api} answered 200 but not JSON: {_short(a.text)}")
    if listed != version:
        return Check("dashboard", False, f"GET {api} reports production {listed!r}, but the registry says {version!r}")
    return Check("dashboard", True, f"{base}/ lists production {version}")


def check_stack(ops: OpsParams, registry_root: str | Path, shelves: int) -> list[Check]:
    """Every entry point of the local stack described by params ``ops:``, against the registry's production."""
    from bartops.registry import Registry
    from bartops.ops.stack import prefect_api_url

    try:
        version = Registry(Path(registry_root)).production()
    except Exception as exc:  # noqa: BLE001 - a broken pointer is a failed check, with its cause
        version = None
        registry = Check("registry", False, f"cannot read the production pointer of {registry_root}: {exc}")
    else:
        pointer = Path(registry_root) / "production.json"
        registry = Check("registry", version is not None,
                         f"production is {version}" if version else f"{pointer} does not exist: nothing is in production")
    host = ops.host
    return [
        registry,
        check_prefect(prefect_api_url(ops)),
        check_service(f"http://{host}:{ops.service_port}", version, shelves),
        check_dashboard(f"http://{host}:{ops.dashboard_port}", version),
    ]
