"""Reviewer credentials, session cookies, CSRF tokens and the Origin check (pure; no web layer)."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

from bartops.dashboard import auth

PASSWORD = "correct horse battery"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_password_hash_is_salted_and_verifies():
    a, b = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert a != b and a.startswith("scrypt$") and PASSWORD not in a
    assert auth.verify_password(PASSWORD, a) and auth.verify_password(PASSWORD, b)
    assert not auth.verify_password(PASSWORD + "x", a) and not auth.verify_password("", a)
    assert not auth.verify_password(PASSWORD, "plain$" + PASSWORD) and not auth.verify_password(PASSWORD, "garbage")


def test_reviewers_file_holds_hashes_only_and_is_private(tmp_path):
    path = tmp_path / ".bartops" / "reviewers.json"
    auth.add_reviewer(path, "ana", PASSWORD)
    auth.add_reviewer(path, "bo", "another password")
    text = path.read_text()
    assert PASSWORD not in text and "another password" not in text
    reviewers = auth.load_reviewers(path)
    assert sorted(reviewers) == ["ana", "bo"]
    assert auth.authenticate(reviewers, "ana", PASSWORD) and not auth.authenticate(reviewers, "ana", "another password")
    assert not auth.authenticate(reviewers, "eve", PASSWORD)
    assert mode(path) == 0o600 and mode(auth.secret_file(path)) == 0o600 and mode(path.parent) == 0o700
    assert len(auth.secret_file(path).read_bytes()) == 32
    assert (path.parent / ".gitignore").read_text() == "*\n"  # never committed by accident
    # a new password replaces the old; the secret stays (sessions survive)
    secret = auth.load_secret(auth.secret_file(path))
    auth.add_reviewer(path, "ana", "a new password")
    assert auth.authenticate(auth.load_reviewers(path), "ana", "a new password")
    assert auth.load_secret(auth.secret_file(path)) == secret
    assert auth.remove_reviewer(path, "bo") and not auth.remove_reviewer(path, "bo")
    assert sorted(auth.load_reviewers(path)) == ["ana"]


def test_bad_names_passwords_and_files_are_named(tmp_path):
    path = tmp_path / "reviewers.json"
    with pytest.raises(auth.AuthError, match="reviewer name"):
        auth.add_reviewer(path, "ana smith", PASSWORD)
    with pytest.raises(auth.AuthError, match="at least 8"):
        auth.add_reviewer(path, "ana", "short")
    assert auth.load_reviewers(path) == {} and auth.load_secret(auth.secret_file(path)) is None
    path.write_text("{broken")
    with pytest.raises(auth.AuthError, match=str(path)):
        auth.load_reviewers(path)


def test_default_reviewers_file(monkeypatch, tmp_path):
    monkeypatch.setenv(auth.REVIEWERS_ENV, str(tmp_path / "r.json"))
    assert auth.default_reviewers_file() == tmp_path / "r.json"
    monkeypatch.delenv(auth.REVIEWERS_ENV)
    monkeypatch.setenv("BARTOPS_PARAMS", str(tmp_path / "proj" / "params.yaml"))
    assert auth.default_reviewers_file() == tmp_path / "proj" / ".bartops" / "reviewers.json"


def test_session_cookie_is_signed_and_expires():
    secret, other = b"k" * 32, b"o" * 32
    cookie = auth.sign_session(secret, "ana", now=1000, max_age=60)
    s = auth.verify_session(secret, cookie, now=1030)
    assert s["name"] == "ana" and s["exp"] == 1060
    assert auth.verify_session(secret, cookie, now=1061) is None
    assert auth.verify_session(other, cookie, now=1030) is None
    forged = auth.sign_session(secret, "eve", now=1000).split(".")[0] + "." + cookie.split(".")[1]
    for bad in (forged, cookie + "x", "no-dot", "", None, "a.b.c"):
        assert auth.verify_session(secret, bad, now=1030) is None
    assert auth.verify_session(None, cookie, now=1030) is None


def test_csrf_token_is_bound_to_the_session():
    secret = b"k" * 32
    s1 = auth.verify_session(secret, auth.sign_session(secret, "ana"))
    s2 = auth.verify_session(secret, auth.sign_session(secret, "ana"))
    t1 = auth.csrf_token(secret, s1)
    assert auth.check_csrf(secret, s1, t1)
    assert not auth.check_csrf(secret, s2, t1)  # another login of the same reviewer
    assert not auth.check_csrf(secret, s1, "") and not auth.check_csrf(secret, None, t1)
    assert not auth.check_csrf(b"o" * 32, s1, t1)


def test_foreign_origin():
    own = "http://127.0.0.1:8050/"
    assert auth.foreign_origin(None, None, own) is None
    assert auth.foreign_origin("http://127.0.0.1:8050", None, own) is None
    assert auth.foreign_origin(None, "http://127.0.0.1:8050/candidates/v2", own) is None
    for origin, referer in (("http://evil.example", None), ("null", None), ("http://127.0.0.1:8051", None),
                            ("https://127.0.0.1:8050", None), (None, "http://evil.example/x"),
                            ("http://evil.example", "http://127.0.0.1:8050/")):
        problem = auth.foreign_origin(origin, referer, own)
        assert problem and "cross-origin request refused" in problem and "127.0.0.1:8050" in problem


def test_cli_adds_and_removes_a_reviewer(tmp_path, monkeypatch):
    from bartops.cli import app

    path = tmp_path / "private" / "reviewers.json"
    monkeypatch.setenv(auth.REVIEWERS_ENV, str(path))
    runner = CliRunner()
    r = runner.invoke(app, ["dashboard", "add-reviewer", "ana", "--password-stdin"], input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert "reviewer ana" in r.output and PASSWORD not in path.read_text()
    assert auth.authenticate(auth.load_reviewers(path), "ana", PASSWORD)
    r = runner.invoke(app, ["dashboard", "add-reviewer", "bo"], input="long enough pw\nlong enough pw\n")
    assert r.exit_code == 0, r.output
    assert auth.authenticate(auth.load_reviewers(path), "bo", "long enough pw")
    r = runner.invoke(app, ["dashboard", "add-reviewer", "cy", "--password-stdin"], input="short\n")
    assert r.exit_code == 2 and "at least 8" in r.output
    assert runner.invoke(app, ["dashboard", "add-reviewer"]).exit_code == 2
    assert runner.invoke(app, ["dashboard", "remove-reviewer", "bo"]).exit_code == 0
    assert runner.invoke(app, ["dashboard", "remove-reviewer", "bo"]).exit_code == 1
    assert sorted(auth.load_reviewers(path)) == ["ana"]
