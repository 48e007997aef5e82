"""Envelope encryption for the memory store.

Key hierarchy (why: erasing a subject must make its data unreadable everywhere, backups
included, and the key-encryption key must never leave Vault):

- The store's key-encryption key (KEK): a Vault transit key in a cluster, a key file
  locally. Only wrapping and unwrapping go through it.
- A store key, random, kept wrapped by the KEK in the database: it derives the subject
  pseudonyms (HMAC), so the database never holds a subject's name.
- One data key per subject, random, kept wrapped by the KEK: it encrypts the subject's
  record text, metadata and vectors (AES-256-GCM) and derives the subject's keyword-index
  tokens. Erasing a subject deletes its wrapped key: what is left cannot be decrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from freehold_serving.private_files import private_dir
from freehold_serving.transit import Transit

_NONCE = 12
_WORD = re.compile(r"\w+", re.UNICODE)


class CryptoError(Exception):
    """A key cannot be unwrapped or used; the message never holds key material."""


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys with the store's key-encryption key."""

    name: str

    def wrap(self, key: bytes) -> str: ...

    def unwrap(self, wrapped: str) -> bytes: ...


class FileKeyWrapper:
    """A local key file (32 random bytes, mode 0600), created on first use.

    For local mode without Vault. Whoever reads the file can read the store: keep it
    apart from the database (another disk, an encrypted home directory)."""

    def __init__(self, path: Path) -> None:
        self.name = f"file:{path.name}"
        if not path.exists():
            private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CryptoError(f"{path} is readable by others; chmod 600 it")
        self._kek = path.read_bytes()
        if len(self._kek) != 32:
            raise CryptoError(f"{path} is not a 32-byte key file")

    def wrap(self, key: bytes) -> str:
        return "file:v1:" + seal(self._kek, key, b"freehold-dek").hex()

    def unwrap(self, wrapped: str) -> bytes:
        if not wrapped.startswith("file:v1:"):
            raise CryptoError("this data key was not wrapped by a key file")
        try:
            return open_sealed(self._kek, bytes.fromhex(wrapped[8:]), b"freehold-dek")
        except Exception:
            raise CryptoError("the key file does not unwrap this store's keys") from None


class TransitKeyWrapper:
    """A Vault transit key. Vault encrypts the data key; the KEK never leaves Vault."""

    def __init__(self, transit: Transit, key_name: str) -> None:
        self._transit = transit
        self._key = key_name
        self.name = f"vault-transit:{key_name}"

    def wrap(self, key: bytes) -> str:
        return self._transit.encrypt(self._key, key)

    def unwrap(self, wrapped: str) -> bytes:
        try:
            return self._transit.unwrap(self._key, wrapped)
        except Exception as exc:
            raise CryptoError(
                f"Vault transit could not unwrap a data key: {type(exc).__name__}"
            ) from None


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


def derive(key: bytes, purpose: str) -> bytes:
    return hmac.new(key, b"freehold:" + purpose.encode(), hashlib.sha256).digest()


def tag(key: bytes, value: str) -> str:
    """A keyed pseudonym of a value: equal values give equal tags, nothing reverses it."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def words(text: str) -> list[str]:
    """Keyword-search words: NFKC, case-folded, accents kept (they carry meaning)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def blind_tokens(key: bytes, text: str) -> str:
    """The text's words as keyed hashes, for the full-text index. The index then ranks
    by BM25 as usual but holds no word of the text: without the subject's key, a token
    says nothing, and after erasure nothing can recompute it."""
    return " ".join(
        "t" + hmac.new(key, w.encode(), hashlib.sha256).hexdigest()[:16] for w in words(text)
    )
