"""Cached answers encrypted at rest when `LLMQ_CACHE_KEY` is set: AES-256-GCM, a random
96-bit nonce per entry, and the entry's own Valkey key as associated data, so an entry
copied under another tenant's or request's key does not open."""

from __future__ import annotations

import hashlib
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


def key_bytes(secret: str) -> bytes:
    """32 bytes: the hex key as given, or the SHA-256 of a passphrase."""
    if _HEX_KEY.match(secret):
        return bytes.fromhex(secret)
    return hashlib.sha256(secret.encode()).digest()


class Seal:
    """Seals and opens entries; `Seal(None)` passes them through unchanged."""

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(key_bytes(secret)) if secret else None

    def close(self, data: bytes, where: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, where)

    def open(self, data: bytes, where: bytes) -> bytes | None:
        """The plaintext, or None when it does not open (another key, tampered)."""
        if self._aead is None:
            return data
        try:
            return self._aead.decrypt(data[:NONCE], data[NONCE:], where)
        except (InvalidTag, ValueError):
            return None
