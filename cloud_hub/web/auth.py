"""Operator accounts, login and CSRF for the dashboard.

Accounts live in ``<home>/web_users.json`` (mode 0600) as PBKDF2-SHA512 hashes made by the project's one
password hasher (:mod:`cloud_hub.fleet.passwords`) with an interactive-login work factor.  The session is
Starlette's signed cookie (HttpOnly, SameSite=strict) keyed by ``<home>/web_secret``; every form carries a
per-session CSRF token checked by :func:`checked_form` (403 without it).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request

from cloud_hub.fleet.passwords import PasswordHashError, mosquitto_hash, verify

# OWASP's 2023 figure for PBKDF2-HMAC-SHA512: operator passwords are chosen by people, unlike device tokens.
LOGIN_ITERATIONS = 210_000
USERS_FILE = "web_users.json"
SECRET_FILE = "web_secret"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 16_384  # every dashboard form is a few fields


class UserError(ValueError):
    pass


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Users:
    """The operator accounts file: name → password hash."""

    def __init__(self, home_path: Path) -> None:
        self.path = home_path / USERS_FILE
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UserError(f"{self.path} is not a JSON object of name → hash")
        return data

    def names(self) -> list[str]:
        return sorted(self._read())

    def set(self, name: str, password: str) -> None:
        if not NAME_RE.match(name):
            raise UserError("user names are 1-64 letters, digits, '_', '.', '@' or '-'")
        if len(password) < MIN_PASSWORD:
            raise UserError(f"passwords need at least {MIN_PASSWORD} characters")
        with self._lock:
            users = self._read()
            users[name] = mosquitto_hash(password, iterations=LOGIN_ITERATIONS)
            _write_private(self.path, json.dumps(users, indent=1).encode())

    def remove(self, name: str) -> bool:
        with self._lock:
            users = self._read()
            if users.pop(name, None) is None:
                return False
            _write_private(self.path, json.dumps(users, indent=1).encode())
            return True

    def check(self, name: str, password: str) -> bool:
        hashed = self._read().get(name)
        if hashed is None:
            # Same work for an unknown name: the response time does not tell which names exist.
            mosquitto_hash(password, iterations=LOGIN_ITERATIONS)
            return False
        try:
            return verify(password, hashed)
        except PasswordHashError:
            return False


def session_secret(home_path: Path) -> str:
    """The key signing session cookies, created once (rotating it logs everyone out)."""
    path = home_path / SECRET_FILE
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(48).encode())
    return path.read_text().strip()


class LoginThrottle:
    """At most ``limit`` failed logins per user name per ``window_s``: slows password guessing."""

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            fails = self._fails.get(name)
            while fails and now - fails[0] > self.window_s:
                fails.popleft()
            return bool(fails) and len(fails) >= self.limit  # type: ignore[arg-type]

    def failed(self, name: str) -> None:
        with self._lock:
            self._fails.setdefault(name, deque()).append(time.monotonic())
            if len(self._fails) > 10_000:  # bounded: forget the oldest names
                self._fails.pop(next(iter(self._fails)))

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)


def csrf_token(request: Request) -> str:
    """This session's CSRF token (created on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


async def checked_form(request: Request) -> FormData:
    """The POSTed form, only if it carries this session's CSRF token (403 otherwise)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise HTTPException(413, "form too large")
    form = await request.form(max_files=0, max_fields=32)
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not expected or not hmac.compare_digest(sent, str(expected)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return form


__all__ = ["CSRF_FIELD", "LoginThrottle", "UserError", "Users", "checked_form", "csrf_token", "session_secret"]
