"""Who may approve: reviewer passwords, signed session cookies, CSRF tokens and the Origin check.

Pure functions over the standard library; the web layer (``bartops.dashboard.app``) wires them.

- Reviewers live in a JSON file outside git: ``$BARTOPS_REVIEWERS``, else ``.bartops/reviewers.json``
  beside the params file. Each has a salted scrypt hash, never the password:
  ``{"reviewers": {"ana": {"password": "scrypt$16384$8$1$<salt>$<hash>", "added_at": "..."}}}``.
- The HMAC secret that signs session cookies lives beside it (``session.key``, mode 0600), created on
  first use. Deleting it logs every reviewer out.
- A session cookie is ``<payload>.<signature>``: base64url JSON ``{"u": name, "n": nonce, "exp": t}``
  and HMAC-SHA256 over it. Its CSRF token is an HMAC of the session's nonce (session-bound).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

REVIEWERS_ENV = "BARTOPS_REVIEWERS"
SESSION_COOKIE = "bartops_session"
SESSION_MAX_AGE = 12 * 3600
MIN_PASSWORD = 8
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ADD_HINT = "bartops dashboard add-reviewer NAME"
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}


class AuthError(ValueError):
    """A reviewers file or a reviewer that cannot be used; the message says why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------- passwords
def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$<salt>$<hash>`` of ``password`` with a fresh 16-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32)
        return hmac.compare_digest(got, _unb64(digest))
    except (ValueError, TypeError):
        return False


# ---------------------------------------------------------------------- the reviewers file
def default_reviewers_file() -> Path:
    """``$BARTOPS_REVIEWERS``, else ``.bartops/reviewers.json`` beside the params file."""
    env = os.environ.get(REVIEWERS_ENV)
    if env:
        return Path(env)
    from bartops.config import params_path

    return params_path().parent / ".bartops" / "reviewers.json"


def load_reviewers(path: Path) -> dict[str, dict]:
    """``{name: {"password": hash, ...}}``; ``{}`` when the file does not exist; AuthError naming a broken file."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        reviewers = data["reviewers"]
        if not isinstance(reviewers, dict) or not all(isinstance(v, dict) and "password" in v
                                                      for v in reviewers.values()):
            raise TypeError("each reviewer needs a password hash")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuthError(f"reviewers file {path} is unreadable ({type(exc).__name__}: {exc}); "
                        f"fix or delete it and run `{ADD_HINT}`") from None
    return reviewers


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():  # keep credentials out of git even where the repo does not ignore the folder
        ignore.write_text("*\n")


def add_reviewer(path: Path, name: str, password: str) -> Path:
    """Add ``name`` (or replace its password) in the reviewers file, creating it and the session secret."""
    if not NAME_RE.fullmatch(name or ""):
        raise AuthError(f"reviewer name {name!r} must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"the password must have at least {MIN_PASSWORD} characters")
    path = Path(path)
    reviewers = load_reviewers(path)
    reviewers[name] = {"password": hash_password(password),
                       "added_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _private_dir(path.parent)
    _write_private(path, (json.dumps({"reviewers": reviewers}, indent=2, sort_keys=True) + "\n").encode())
    load_secret(secret_file(path), create=True)
    return path


def remove_reviewer(path: Path, name: str) -> bool:
    """Remove ``name`` from the reviewers file; its sessions stop working. False if it was not there."""
    reviewers = load_reviewers(path)
    if reviewers.pop(name, None) is None:
        return False
    _write_private(Path(path), (json.dumps({"reviewers": reviewers}, indent=2, sort_keys=True) + "\n").encode())
    return True


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not a password", salt=b"\0" * 16)


def authenticate(reviewers: dict[str, dict], name: str, password: str) -> bool:
    """Whether ``name`` is a reviewer with this password (as slow for unknown names as for known ones)."""
    entry = reviewers.get(name)
    ok = verify_password(password, entry["password"] if entry else _dummy_hash())
    return ok and entry is not None


# ---------------------------------------------------------------------- the session secret and cookie
def secret_file(reviewers_file: Path) -> Path:
    """The session secret beside the reviewers file."""
    return Path(reviewers_file).with_name("session.key")


def load_secret(path: Path, create: bool = False) -> bytes | None:
    """The 32-byte signing secret; created (mode 0600) when missing and ``create``, else None."""
    path = Path(path)
    if create and not path.exists():
        _private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if len(data) >= 32 else None


def _sign(secret: bytes, purpose: bytes, data: bytes) -> bytes:
    return hmac.new(secret, purpose + b"\0" + data, hashlib.sha256).digest()


def sign_session(secret: bytes, name: str, now: float | None = None, max_age: int = SESSION_MAX_AGE) -> str:
    """A session cookie value for reviewer ``name`` with a fresh nonce, valid ``max_age`` seconds."""
    now = time.time() if now is None else now
    payload = _b64(json.dumps({"u": name, "n": secrets.token_hex(16), "exp": int(now + max_age)}).encode())
    return f"{payload}.{_b64(_sign(secret, b'session', payload.encode()))}"


def verify_session(secret: bytes | None, cookie: str | None, now: float | None = None) -> dict | None:
    """``{"name", "nonce", "exp"}`` of a validly signed, unexpired cookie; None otherwise."""
    if not secret or not cookie or cookie.count(".") != 1:
        return None
    payload, signature = cookie.split(".")
    try:
        if not hmac.compare_digest(_unb64(signature), _sign(secret, b"session", payload.encode())):
            return None
        data = json.loads(_unb64(payload))
        name, nonce, exp = str(data["u"]), str(data["n"]), int(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if exp < (time.time() if now is None else now):
        return None
    return {"name": name, "nonce": nonce, "exp": exp}


# ---------------------------------------------------------------------- CSRF and Origin
def csrf_token(secret: bytes, session: dict) -> str:
    """The session's CSRF token: an HMAC of its nonce, so it changes with every login."""
    return _b64(_sign(secret, b"csrf", session["nonce"].encode()))


def check_csrf(secret: bytes | None, session: dict | None, token: str | None) -> bool:
    """Whether ``token`` is this session's CSRF token (constant-time compare)."""
    if not secret or not session or not token:
        return False
    return hmac.compare_digest(token.encode(), csrf_token(secret, session).encode())


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def foreign_origin(origin: str | None, referer: str | None, own: str) -> str | None:
    """Why a state-changing request from ``origin``/``referer`` is not from ``own`` origin; None if it is.

    Either header, when sent, must name this dashboard's own scheme://host:port. A request with
    neither (curl, scripts) passes here and still needs its session and CSRF token.
    """
    own = _origin(own)
    if origin:
        if origin == "null" or _origin(origin) != own:
            return f"cross-origin request refused: Origin {origin!r} is not this dashboard ({own})"
    elif referer and _origin(referer) != own:
        return f"cross-origin request refused: Referer {referer!r} is not this dashboard ({own})"
    return None
