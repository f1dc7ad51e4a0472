"""Key-based signing of real PEFT adapter directories (keyless Sigstore needs the network)."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.signing import (
    generate_keypair,
    make_verifier,
    sign_adapter,
    signature_path_for,
    verify_adapter,
)
from gateway.core.errors import AdapterLoadRefused, InvalidRequest
from gateway.engine.base import AdapterRef


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def adapter(tmp_path: Path, demo_adapters: list[Path]) -> Path:
    # The fixture's adapters are shared by the whole session: tamper with a copy only.
    return Path(shutil.copytree(demo_adapters[0], tmp_path / "store" / "adapter"))


@pytest.fixture
def signed(adapter: Path, keys: tuple[Path, Path]) -> Path:
    sign_adapter(adapter, keys[0])
    return adapter


def _ref(path: Path) -> AdapterRef:
    return AdapterRef(engine_name="a-v1", path=path, version_id="v1")


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_keypair_is_p256_with_private_key_0600(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert (private.name, public.name) == ("signing.key", "signing.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    pub = serialization.load_pem_public_key(public.read_bytes())
    assert pub == key.public_key()


def test_keypair_refuses_to_overwrite(keys: tuple[Path, Path]) -> None:
    private, public = keys
    before = (private.read_bytes(), public.read_bytes())
    with pytest.raises(InvalidRequest, match="refusing to overwrite"):
        generate_keypair(private.parent)
    assert (private.read_bytes(), public.read_bytes()) == before


def test_keypair_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    (tmp_path / "signing.pub").write_text("someone else's key")
    with pytest.raises(InvalidRequest, match=r"signing\.pub"):
        generate_keypair(tmp_path)
    assert not (tmp_path / "signing.key").exists()


def test_signature_lives_beside_the_directory(adapter: Path) -> None:
    assert signature_path_for(adapter) == adapter.parent / "adapter.sig.json"
    assert signature_path_for(adapter / "") == signature_path_for(adapter)


def test_sign_then_verify(signed: Path, keys: tuple[Path, Path]) -> None:
    signature = signature_path_for(signed)
    assert signature.is_file()
    verify_adapter(signed, keys[1])
    make_verifier(keys[1], required=True)(_ref(signed))

    # Every file PEFT wrote is covered, README.md included, and nothing else.
    bundle = json.loads(signature.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    signed_names = {r["name"] for r in statement["predicate"]["resources"]}
    assert signed_names == {p.name for p in signed.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= signed_names


def test_sign_refuses_a_signature_inside_the_directory(
    adapter: Path, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(InvalidRequest, match="outside the adapter directory"):
        sign_adapter(adapter, keys[0], adapter / "adapter.sig.json")


def test_flipped_weight_byte_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    weights = signed / "adapter_model.safetensors"
    _flip_byte(weights, weights.stat().st_size // 2)
    with pytest.raises(AdapterLoadRefused, match="tampered content") as info:
        verify_adapter(signed, keys[1])
    assert "adapter_model.safetensors" in info.value.message


@pytest.mark.parametrize("extra", ["notes.txt", ".gitattributes", "sub/extra.bin"])
def test_added_file_is_refused(signed: Path, keys: tuple[Path, Path], extra: str) -> None:
    (signed / extra).parent.mkdir(exist_ok=True)
    (signed / extra).write_bytes(b"x")
    with pytest.raises(AdapterLoadRefused, match="tampered content") as info:
        verify_adapter(signed, keys[1])
    assert extra in info.value.message


def test_wrong_public_key_is_refused(signed: Path, tmp_path: Path) -> None:
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(AdapterLoadRefused, match="wrong key"):
        verify_adapter(signed, other_public)


def test_altered_signature_is_refused(signed: Path, keys: tuple[Path, Path]) -> None:
    signature = signature_path_for(signed)
    bundle = json.loads(signature.read_text())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    signature.write_text(json.dumps(bundle))
    with pytest.raises(AdapterLoadRefused, match="bad signature"):
        verify_adapter(signed, keys[1])


def test_garbage_public_key_is_refused(signed: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    with pytest.raises(AdapterLoadRefused, match="bad public key"):
        verify_adapter(signed, garbage)


def test_missing_public_key_is_refused(signed: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadRefused, match="missing public key"):
        verify_adapter(signed, tmp_path / "nope.pub")
    with pytest.raises(AdapterLoadRefused, match="missing public key"):
        make_verifier(None, required=True)(_ref(signed))
    # A signature that is present is checked even in development mode, so no key refuses it.
    with pytest.raises(AdapterLoadRefused, match="missing public key"):
        make_verifier(None, required=False)(_ref(signed))


def test_missing_signature(adapter: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(AdapterLoadRefused, match="missing signature"):
        verify_adapter(adapter, keys[1])
    with pytest.raises(AdapterLoadRefused, match="missing signature"):
        make_verifier(keys[1], required=True)(_ref(adapter))
    make_verifier(keys[1], required=False)(_ref(adapter))  # development mode: allowed
    make_verifier(None, required=False)(_ref(adapter))


def test_present_failing_signature_is_refused_when_not_required(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    (signed / "README.md").write_text("edited after signing")
    with pytest.raises(AdapterLoadRefused, match="tampered content"):
        make_verifier(keys[1], required=False)(_ref(signed))


def test_on_refused_receives_the_reason(signed: Path, keys: tuple[Path, Path]) -> None:
    calls: list[tuple[AdapterRef, str]] = []
    verifier = make_verifier(
        keys[1], required=True, on_refused=lambda ref, reason: calls.append((ref, reason))
    )
    verifier(_ref(signed))
    assert calls == []

    _flip_byte(signed / "adapter_model.safetensors", 0)
    with pytest.raises(AdapterLoadRefused) as info:
        verifier(_ref(signed))
    assert calls == [(_ref(signed), info.value.message)]
    assert calls[0][1].startswith("tampered content")


def test_failing_on_refused_does_not_hide_the_refusal(
    adapter: Path, keys: tuple[Path, Path]
) -> None:
    def broken(ref: AdapterRef, reason: str) -> None:
        raise RuntimeError("audit database down")

    with pytest.raises(AdapterLoadRefused, match="missing signature"):
        make_verifier(keys[1], required=True, on_refused=broken)(_ref(adapter))


def test_sigstore_mode_checks_keyless_signatures_not_the_key(adapter: Path, tmp_path: Path) -> None:
    """FLYWHEEL_SIGNING_MODE=sigstore swaps the check itself; offline it can only refuse.

    Keyless verification needs Sigstore's trust root from the network, which this machine does
    not have, so the positive path is not exercised here (docs/gate.md says so).  What is
    checked: a key-signed adapter that the key check accepts is refused in sigstore mode, by
    the Sigstore verifier, and the mode cannot be chosen without the signer's identity.
    """
    from adapters.signing import adapter_signer, adapter_verifier
    from gateway.core.config import Settings

    key_mode = Settings(data_dir=tmp_path / "data")
    signer = adapter_signer(key_mode)
    assert signer is not None
    signer(adapter)
    adapter_verifier(key_mode)(_ref(adapter))  # the key check accepts it
    sigstore = Settings(
        data_dir=tmp_path / "data",
        signing_mode="sigstore",
        signing_identity="ops@example.com",
        signing_oidc_issuer="https://issuer.example.com",
    )
    with pytest.raises(AdapterLoadRefused, match="Sigstore"):
        adapter_verifier(sigstore)(_ref(adapter))
    with pytest.raises(ValueError, match="FLYWHEEL_SIGNING_IDENTITY"):
        Settings(data_dir=tmp_path / "data", signing_mode="sigstore")  # refused when built
