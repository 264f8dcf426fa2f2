"""Start, check and stop the embedded default's background services (pid files, logs, health URLs).

Each service is a command run detached with its output in ``<run_dir>/<name>.log`` and its process
group id in ``<run_dir>/<name>.pid``; it counts as up once its health URL answers 200, with the
expected values in its JSON where the service names them, and, for a service whose health URL another
process answers, while its own process runs.  The deployment runner is such a service: the Prefect
server answers for its deployments, which outlive the runner in Prefect's database (a stopped runner
pauses them; Prefect marks them NOT_READY a minute after the last poll), so "up" there means our
runner process is alive and the deployment is READY and not paused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    address: str  # what a person opens
    env: dict[str, str] | None = None
    expect: dict[str, Any] | None = None  # values the health URL's JSON must hold (None: any 200)
    own_process: bool = False  # up only while the process started here runs (the URL is answered by another)


def healthy(url: str, timeout: float = 2.0, expect: dict[str, Any] | None = None) -> bool:
    """True if the URL answers HTTP 200 (local addresses only) with JSON holding ``expect``, if given."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            if resp.status != 200:
                return False
            if not expect:
                return True
            body = json.loads(resp.read())
            return isinstance(body, dict) and all(body.get(k) == v for k, v in expect.items())
    except Exception:
        return False


def is_up(service: Service, run_dir: Path) -> bool:
    """The service answers its health URL as expected (and, if ``own_process``, its process runs)."""
    if service.own_process and not running(service.name, run_dir):
        return False
    return healthy(service.health_url, expect=service.expect)


def start(service: Service, run_dir: Path, timeout: float = 180.0) -> str:
    """Start the service unless it is already healthy; wait until it is. Returns its address."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_up(service, run_dir):
        return service.address
    log = open(run_dir / f"{service.name}.log", "ab")
    proc = subprocess.Popen(
        service.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(service.env or {})},
    )
    (run_dir / f"{service.name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with code {proc.returncode}; see {run_dir / (service.name + '.log')}")
        if is_up(service, run_dir):
            return service.address
        time.sleep(1.0)
    stop(service.name, run_dir)
    raise TimeoutError(f"{service.name} not healthy at {service.health_url} after {timeout:.0f} s; see its log in {run_dir}")


def stop(name: str, run_dir: Path, grace: float = 15.0) -> bool:
    """Stop a service's whole process group (TERM, then KILL). False if it was not running."""
    pid_file = run_dir / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True


def running(name: str, run_dir: Path) -> bool:
    pid_file = run_dir / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.killpg(int(pid_file.read_text()), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False


def python_module(module: str, *args: str) -> list[str]:
    """Command that runs a module with this interpreter."""
    return [sys.executable, "-m", module, *args]
