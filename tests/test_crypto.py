"""Ed25519 keys, signed documents and CloudFront-style signed links (no network)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from llamahub import crypto
from llamahub.crypto import SignatureError
from llamahub.errors import ConfigError

HUB = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def key() -> crypto.Ed25519PrivateKey:
    return crypto.generate_key()


def keys_of(*private: crypto.Ed25519PrivateKey) -> dict[str, crypto.Ed25519PublicKey]:
    return {crypto.key_id(k): k.public_key() for k in private}


def test_key_id_is_sha256_prefix_of_raw_public_key(key) -> None:
    raw = crypto.public_key_raw(key.public_key())
    assert len(raw) == 32
    assert crypto.key_id(key) == hashlib.sha256(raw).hexdigest()[:16]
    assert crypto.key_id(key.public_key()) == crypto.key_id(key)
    assert crypto.key_id(crypto.generate_key()) != crypto.key_id(key)


def test_save_and_load_private_key_owner_only(tmp_path: Path, key) -> None:
    path = crypto.save_private_key(key, tmp_path / "keys" / "k.pem")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.key_id(crypto.load_private_key(path)) == crypto.key_id(key)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        crypto.load_private_key(path)


def test_public_key_pem_round_trip(key) -> None:
    pem = crypto.public_key_pem(key.public_key())
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert crypto.key_id(crypto.load_public_key_pem(pem)) == crypto.key_id(key)


def test_cloudfront_base64_uses_its_alphabet() -> None:
    data = bytes(range(256)) * 3 + b"\xfb\xff"
    encoded = crypto.cf_b64encode(data)
    assert not set("+=/") & set(encoded)
    assert {"-", "~"} <= set(encoded)
    assert crypto.cf_b64decode(encoded) == data
    with pytest.raises(SignatureError):
        crypto.cf_b64decode(encoded + "!")


def test_signed_document_round_trip_and_tamper(key) -> None:
    doc = crypto.sign_document({"license": "llama2", "user": "u1", "n": 3}, key)
    assert set(doc) == {"payload", "key_id", "signature"}
    assert crypto.verify_document(doc, keys_of(key)) == {"license": "llama2", "user": "u1", "n": 3}
    tampered = json.loads(json.dumps(doc))
    tampered["payload"]["license"] = "llama3"
    with pytest.raises(SignatureError) as e:
        crypto.verify_document(tampered, keys_of(key))
    assert e.value.code == "bad_signature"


def test_document_from_another_key_is_refused(key) -> None:
    other = crypto.generate_key()
    doc = crypto.sign_document({"a": 1}, other)
    with pytest.raises(SignatureError) as e:
        crypto.verify_document(doc, keys_of(key))
    assert e.value.code == "unknown_key"
    doc["key_id"] = crypto.key_id(key)  # claims our key id, but the signature is the other key's
    with pytest.raises(SignatureError) as e:
        crypto.verify_document(doc, keys_of(key))
    assert e.value.code == "bad_signature"


def test_make_link_shape_and_verify(key) -> None:
    policy = {"link_id": "abc", "variants": ["llama-debug-2"], "expires": 2_000_000_000}
    url = crypto.make_link(HUB, "llama-debug", policy, key)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{HUB}/dl/llama-debug/*"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert set(query) == {"Policy", "Signature", "Key-Pair-Id"}
    assert query["Key-Pair-Id"] == crypto.key_id(key)
    decoded = crypto.verify_link(query["Policy"], query["Signature"], query["Key-Pair-Id"], keys_of(key))
    assert decoded == policy | {"resource": f"{HUB}/dl/llama-debug/"}


def test_make_link_refuses_a_mismatched_resource(key) -> None:
    with pytest.raises(ValueError):
        crypto.make_link(HUB, "llama-2", {"resource": f"{HUB}/dl/llama-3/"}, key)


def test_verify_link_refusals(key) -> None:
    encoded, signature = crypto.sign_policy({"resource": f"{HUB}/dl/x/", "expires": 1}, key)
    kid = crypto.key_id(key)
    body = bytearray(crypto.cf_b64decode(encoded))
    body[-3] ^= 0x01  # one byte of the policy changed
    cases = {
        "bad_signature": (crypto.cf_b64encode(bytes(body)), signature, kid),
        "unknown_key": (encoded, signature, "0" * 16),
        "malformed_link": (encoded, "", kid),
    }
    for code, args in cases.items():
        with pytest.raises(SignatureError) as e:
            crypto.verify_link(*args, keys_of(key))
        assert e.value.code == code
    other = crypto.generate_key()
    _, foreign = crypto.sign_policy({"resource": f"{HUB}/dl/x/", "expires": 1}, other)
    with pytest.raises(SignatureError) as e:
        crypto.verify_link(encoded, foreign, kid, keys_of(key))
    assert e.value.code == "bad_signature"
