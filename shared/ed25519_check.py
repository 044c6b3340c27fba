"""``python -m shared.ed25519_check``: verify one Ed25519 signature in a short-lived process.

Reads three base64 lines on stdin (raw public key, signature, data); prints ``valid`` (exit 0) or
``invalid`` (exit 1); exit 2 on malformed input.  Anything else means the check did not run.  The agent runs its rare signature checks here, so
the crypto library never becomes part of its resident memory (shared/signing.py).
"""

from __future__ import annotations

import base64
import binascii
import sys

MAX_INPUT_BYTES = 4 * 1024 * 1024  # base64 of a manifest or an announcement, with room to spare
VALID, INVALID = "valid", "invalid"


def main() -> int:
    data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        print("input too large", file=sys.stderr)
        return 2
    try:
        key, signature, message = (base64.b64decode(line, validate=True) for line in data.split(b"\n"))
    except (ValueError, binascii.Error):
        print("expected three base64 lines: key, signature, data", file=sys.stderr)
        return 2
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except InvalidSignature:
        print(INVALID)
        return 1
    except ValueError as exc:
        print(f"not an Ed25519 public key: {exc}", file=sys.stderr)
        return 2
    print(VALID)
    return 0


if __name__ == "__main__":
    sys.exit(main())
