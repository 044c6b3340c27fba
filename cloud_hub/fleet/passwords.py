"""Mosquitto 2.0 password hashes (``$7$``: PBKDF2-HMAC-SHA512), generated and checked in Python.

The hub stores only these hashes; the password file Mosquitto reads is regenerated from them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# Mosquitto's own default (mosquitto_passwd).  The passwords are 256-bit random tokens, so a higher
# count adds no security, while every CONNECT costs the single-threaded broker one derivation.
ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 32


class PasswordHashError(ValueError):
    pass


def new_password() -> str:
    """A random URL-safe password (256 bits)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def client_id(prefix: str) -> str:
    """``<prefix>-<64 random bits>``: a persistent-session client id other clients cannot guess."""
    return f"{prefix}-{secrets.token_hex(8)}"


def mosquitto_hash(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``, the format Mosquitto 2.0 reads."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        raise PasswordHashError(f"not a Mosquitto $7$ hash: {hashed[:12]!r}…")
    try:
        salt, digest = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        raise PasswordHashError("malformed base64 in password hash") from None
    candidate = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(candidate, digest)
