"""Start, check and stop the embedded default's background services (pid files, logs, health URLs).

Each service is a command run detached with its output in ``<run_dir>/<name>.log`` and its process
group id in ``<run_dir>/<name>.pid``; it counts as up once its health URL answers 200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    address: str  # what a person opens
    env: dict[str, str] | None = None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True if the URL answers HTTP 200 (local addresses only)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status == 200
    except Exception:
        return False


def start(service: Service, run_dir: Path, timeout: float = 180.0) -> str:
    """Start the service unless it is already healthy; wait until it is. Returns its address."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if healthy(service.health_url):
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
        if healthy(service.health_url):
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
