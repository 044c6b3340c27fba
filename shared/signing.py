"""Ed25519 keys and signatures for model bundles and model announcements."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.protocol import ModelAnnouncement
from shared.schema import dump


class SignatureError(ValueError):
    """A signature is malformed, from an untrusted key, or does not verify."""


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key in base64: what agents list in ``trusted_keys``."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except Exception as exc:
        raise SignatureError(f"not a base64 Ed25519 public key: {exc}") from None


def key_id(key: Ed25519PublicKey | str) -> str:
    """Short fingerprint of a public key (first 16 hex digits of SHA-256 of the raw key)."""
    raw = base64.b64decode(key) if isinstance(key, str) else key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def verify(trusted: list[Ed25519PublicKey], signer_key_id: str, signature_b64: str, data: bytes) -> None:
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
            k.verify(signature, data)
            return
        except InvalidSignature:
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


def verify_announcement(trusted: list[Ed25519PublicKey], ann: ModelAnnouncement) -> None:
    """Raise :class:`SignatureError` unless a trusted key signed this announcement (agents ignore it then)."""
    if not ann.signature or not ann.key_id:
        raise SignatureError("announcement is not signed")
    verify(trusted, ann.key_id, ann.signature, announcement_bytes(ann))
