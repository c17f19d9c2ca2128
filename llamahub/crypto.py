"""Ed25519 keys and the signatures llamahub issues: signed documents and signed download links.

Three things are signed, all with Ed25519 (``cryptography``):

- **documents** (license-acceptance receipts, enterprise grants): ``{"payload", "key_id",
  "signature"}`` where the signature covers the canonical JSON of the payload (sorted keys, no
  spaces, UTF-8) and is URL-safe base64 without padding;
- **download links** in the shape of Meta's CloudFront links:
  ``{hub}/dl/<family>/*?Policy=...&Signature=...&Key-Pair-Id=...``. ``Policy`` is the policy JSON
  in CloudFront's URL-safe base64 (``+``→``-``, ``=``→``_``, ``/``→``~``) and ``Signature`` signs
  exactly those JSON bytes;
- a key is named by its **key id**: the first 16 hex digits of the sha256 of the raw public key.

Verification needs only public keys, so a client or an edge server checks links and receipts
without any secret. Every failure raises :class:`SignatureError` with a machine-readable ``code``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llamahub.errors import ConfigError, LlamahubError
from llamahub.fsutil import atomic_write

ALGORITHM = "Ed25519"
KEY_ID_HEX = 16
_CF_ENCODE = str.maketrans({"+": "-", "=": "_", "/": "~"})
_CF_DECODE = str.maketrans({"-": "+", "_": "=", "~": "/"})


class SignatureError(LlamahubError):
    """A signature, signed document or signed link that does not verify."""

    code = "bad_signature"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "request a new link or document from the hub")
        if code:
            self.code = code


# --- keys ----------------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise SignatureError(f"not an Ed25519 public key ({e})", code="bad_key") from e


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The key id: the first 16 hex digits of sha256 over the raw public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public_key_raw(public)).hexdigest()[:KEY_ID_HEX]


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_public_key_pem(pem: str | bytes) -> Ed25519PublicKey:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SignatureError(f"cannot read a PEM public key ({e})", code="bad_key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the PEM public key is not an Ed25519 key", code="bad_key")
    return key


def save_private_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by the owner only (mode 0600), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return atomic_write(path, pem, mode=0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a key written by :func:`save_private_key`; refuses a file others can read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read signing key {path}: {e}",
                          hint="run `llamahub hub init` to create one") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"signing key {path} is readable by other users (mode {stat.S_IMODE(mode):o})",
                          hint=f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not a PEM private key ({e})",
                          hint="restore the key file or rotate to a new key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key", hint="rotate to a new key")
    return key


# --- bytes -----------------------------------------------------------------------------------------


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
    """Raise SignatureError unless ``signature`` is ``key``'s signature of ``data``."""
    try:
        key.verify(signature, data)
    except InvalidSignature as e:
        raise SignatureError("the signature does not match", code="bad_signature") from e


def b64url_encode(data: bytes) -> str:
    """URL-safe base64 without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError("expected a base64url string", code="malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"not valid base64url ({e})", code="malformed") from e


def cf_b64encode(data: bytes) -> str:
    """CloudFront's URL-safe base64: standard base64 with ``+``→``-``, ``=``→``_``, ``/``→``~``."""
    return base64.b64encode(data).decode("ascii").translate(_CF_ENCODE)


def cf_b64decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError("expected a CloudFront base64 string", code="malformed_link")
    try:
        return base64.b64decode(text.translate(_CF_DECODE), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"not valid CloudFront base64 ({e})", code="malformed_link") from e


def canonical_json(obj: Any) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8, no NaN."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise SignatureError(f"cannot sign a value that is not plain JSON ({e})", code="malformed") from e


# --- signed documents ------------------------------------------------------------------------------


def sign_document(payload: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``{"payload": payload, "key_id": ..., "signature": base64url}`` over the canonical payload."""
    body = dict(payload)
    return {"payload": body, "key_id": key_id(key),
            "signature": b64url_encode(sign(key, canonical_json(body)))}


def verify_document(doc: Mapping[str, Any], public_keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The payload of a signed document, or SignatureError (malformed, unknown key, bad signature)."""
    if not isinstance(doc, Mapping):
        raise SignatureError("a signed document must be a JSON object", code="malformed")
    payload, kid, signature = doc.get("payload"), doc.get("key_id"), doc.get("signature")
    if not isinstance(payload, dict) or not isinstance(kid, str) or not isinstance(signature, str):
        raise SignatureError("a signed document needs payload (object), key_id and signature (strings)",
                             code="malformed")
    public = _known_key(kid, public_keys)
    verify(public, b64url_decode(signature), canonical_json(payload))
    return payload


def _known_key(kid: str, public_keys: Mapping[str, Ed25519PublicKey]) -> Ed25519PublicKey:
    public = public_keys.get(kid)
    if public is None:
        raise SignatureError(f"signed by unknown or revoked key {kid!r}", code="unknown_key",
                             hint="fetch the hub's current keys (/.well-known/llamahub-keys.json) "
                                  "or request a new link or document")
    return public


# --- signed links ----------------------------------------------------------------------------------


def link_prefix(hub_url: str, family: str) -> str:
    """The resource prefix a link for ``family`` covers: ``{hub}/dl/<family>/``."""
    if not family or "/" in family or family in (".", ".."):
        raise ValueError(f"bad family name {family!r}")
    return f"{hub_url.rstrip('/')}/dl/{family}/"


def sign_policy(policy: Mapping[str, Any], key: Ed25519PrivateKey) -> tuple[str, str]:
    """``(Policy, Signature)`` query values: the CloudFront-encoded JSON and its signature."""
    body = canonical_json(dict(policy))
    return cf_b64encode(body), cf_b64encode(sign(key, body))


def make_link(hub_url: str, family: str, policy: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    """A signed link ``{hub}/dl/<family>/*?Policy=...&Signature=...&Key-Pair-Id=...``.

    ``policy["resource"]`` is set to the family's prefix when absent and must equal it otherwise.
    """
    prefix = link_prefix(hub_url, family)
    body = dict(policy)
    if body.setdefault("resource", prefix) != prefix:
        raise ValueError(f"policy resource {body['resource']!r} is not the link prefix {prefix!r}")
    encoded, signature = sign_policy(body, key)
    query = urlencode({"Policy": encoded, "Signature": signature, "Key-Pair-Id": key_id(key)})
    return f"{prefix}*?{query}"


def verify_link(policy_b64: str, signature: str, kid: str,
                keys: Mapping[str, Ed25519PublicKey]) -> dict[str, Any]:
    """Check a link's signature with ``keys`` (key id → public key); returns the decoded policy.

    Only the signature is checked here; expiry, prefix and download caps are the hub's job.
    """
    if not policy_b64 or not signature or not kid:
        raise SignatureError("the link lacks Policy, Signature or Key-Pair-Id", code="malformed_link",
                             hint="use the whole URL the hub gave you, query string included")
    public = _known_key(kid, keys)
    body = cf_b64decode(policy_b64)
    verify(public, cf_b64decode(signature), body)
    try:
        policy = json.loads(body)
    except ValueError as e:
        raise SignatureError(f"the link policy is not JSON ({e})", code="malformed_link") from e
    if not isinstance(policy, dict):
        raise SignatureError("the link policy is not a JSON object", code="malformed_link")
    return policy
