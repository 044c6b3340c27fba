"""Ed25519 keys and signatures for model bundles and model announcements.

The hub signs with ``cryptography``.  The edge only verifies, rarely (boot, a new bundle, an
announcement), so its trusted keys are :class:`PublicKey` objects (32 raw bytes): ``edge-agent run``
switches verification to a short-lived helper process (``python -m shared.ed25519_check``), and the
resident agent never maps the crypto library (~6.5 MB of RSS, see docs/benchmarks.md).  Everywhere
else (the hub, tests, ``edge-agent doctor``) the same checks run in process.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

from shared.protocol import ModelAnnouncement
from shared.schema import dump

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HELPER_MODULE = "shared.ed25519_check"
HELPER_TIMEOUT_S = 120.0
ACCEPTED_CACHE = 64
_helper = False  # verify in a helper process (set by `edge-agent run`)
_accepted: OrderedDict[bytes, None] = OrderedDict()  # signatures the helper accepted


class SignatureError(ValueError):
    """A signature is malformed, from an untrusted key, or does not verify."""


class SignatureCheckUnavailable(SignatureError):
    """The helper process that checks signatures could not run (nothing was verified)."""


def verify_in_helper_process(enabled: bool = True) -> None:
    """Run :class:`PublicKey` checks in a helper process (the agent: keep the crypto library out of RSS)."""
    global _helper
    _helper = enabled


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key, as its 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise SignatureError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is this key's signature of ``data``."""
        if _helper:
            # A retained announcement comes again on every reconnect, a bundle is read again after its
            # install: what the helper already accepted is not re-checked (keyed by a hash of all three).
            seen = hashlib.sha256(b"%d:%d:" % (len(signature), len(data)) + self.raw + signature + data).digest()
            if seen not in _accepted:
                _verify_in_helper(self.raw, signature, data)
                _accepted[seen] = None
                while len(_accepted) > ACCEPTED_CACHE:
                    _accepted.popitem(last=False)
            return
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            raise SignatureError("signature does not match the signed data") from None
        except ValueError as exc:  # not a point on the curve
            raise SignatureError(f"not an Ed25519 public key: {exc}") from None


TrustedKey = Union[PublicKey, "Ed25519PublicKey"]


def _verify_in_helper(raw: bytes, signature: bytes, data: bytes) -> None:
    """The helper reads key, signature and data (base64 lines) on stdin and prints valid / invalid;
    anything else (it could not start, crashed, timed out) verifies nothing."""
    request = b"\n".join(base64.b64encode(v) for v in (raw, signature, data))
    try:
        out = subprocess.run([sys.executable, "-m", HELPER_MODULE], input=request, capture_output=True,
                             timeout=HELPER_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SignatureCheckUnavailable(f"signature check could not run: {exc}") from None
    verdict = out.stdout.strip()
    if out.returncode == 0 and verdict == b"valid":
        return
    if out.returncode == 1 and verdict == b"invalid":
        raise SignatureError("signature does not match the signed data")
    detail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {out.returncode}"]
    raise SignatureCheckUnavailable(f"signature check could not run: {detail[0][:300]}")


def generate_private_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def _raw(key: TrustedKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, PublicKey):
        return key.raw
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey | TrustedKey) -> str:
    """The raw 32-byte public key in base64: what agents list in ``trusted_keys``."""
    return base64.b64encode(_raw(key)).decode()


def parse_public_key(text: str) -> PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except Exception as exc:
        raise SignatureError(f"not a base64 Ed25519 public key: {exc}") from None
    try:
        return PublicKey(raw)
    except SignatureError as exc:
        raise SignatureError(f"not a base64 Ed25519 public key: {exc}") from None


def key_id(key: TrustedKey | str) -> str:
    """Short fingerprint of a public key (first 16 hex digits of SHA-256 of the raw key)."""
    raw = base64.b64decode(key) if isinstance(key, str) else _raw(key)
    return hashlib.sha256(raw).hexdigest()[:16]


def _check(key: TrustedKey, signature: bytes, data: bytes) -> None:
    if isinstance(key, PublicKey):
        key.verify(signature, data)
        return
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError("signature does not match the signed data") from None


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def verify(trusted: Sequence[TrustedKey], signer_key_id: str, signature_b64: str, data: bytes) -> None:
    """Raise :class:`SignatureError` unless a trusted key with that id signed ``data``."""
    candidates = [k for k in trusted if key_id(k) == signer_key_id]
    if not candidates:
        raise SignatureError(f"signed by untrusted key {signer_key_id!r}")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except Exception:
        raise SignatureError("signature is not valid base64") from None
    for k in candidates:
        try:
            _check(k, signature, data)
            return
        except SignatureCheckUnavailable:
            raise
        except SignatureError:
            continue
    raise SignatureError("signature does not match the signed data")


ANNOUNCEMENT_DOMAIN = b"edgesentry-model-announcement\n"


def announcement_bytes(ann: ModelAnnouncement) -> bytes:
    """Canonical bytes an announcement's signature covers: every field but key_id and signature,
    as sorted compact ASCII JSON, after a domain tag (so no other signed text can pass for one)."""
    fields = {k: v for k, v in dump(ann).items() if k not in ("key_id", "signature")}
    return ANNOUNCEMENT_DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_announcement(key: Ed25519PrivateKey, ann: ModelAnnouncement) -> ModelAnnouncement:
    """The hub's announcement, signed: the one way the hub builds what it publishes on ``model`` topics."""
    return dataclasses.replace(ann, key_id=key_id(key.public_key()), signature=sign(key, announcement_bytes(ann)))


def verify_announcement(trusted: Sequence[TrustedKey], ann: ModelAnnouncement) -> None:
    """Raise :class:`SignatureError` unless a trusted key signed this announcement (agents ignore it then)."""
    if not ann.signature or not ann.key_id:
        raise SignatureError("announcement is not signed")
    verify(trusted, ann.key_id, ann.signature, announcement_bytes(ann))
