"""OpenSSF model signing for adapter directories (Sigstore bundle format, ``model-signing``).

An adapter directory is hashed file by file (SHA-256 over every file, nothing ignored, no
symlinks) into an in-toto statement, signed into a Sigstore bundle, and written OUTSIDE the
directory as ``<dir>.sig.json``: a signature inside would be an extra, unsigned file and make
verification fail.  Key-based signing (a P-256 key pair) works offline; keyless Sigstore
(OIDC, Fulcio, Rekor) needs the network.

Verification refuses with :class:`AdapterLoadRefused`, and the message says which check
failed.  Messages name files, never absolute paths: they reach API clients.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, signing, verifying

from gateway.core.config import Settings
from gateway.core.errors import AdapterLoadRefused, InvalidRequest
from gateway.engine.base import AdapterRef, Verifier

log = logging.getLogger(__name__)
# model-signing's ``Config.__init__`` carries no annotations, hence the ``no-untyped-call``
# ignores below; everything else in its API is typed.

PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"
SIGNATURE_SUFFIX = ".sig.json"

# Errors cryptography raises for a key file it cannot use: not PEM, encrypted, not EC, ...
_KEY_ERRORS = (ValueError, TypeError, AttributeError, UnsupportedAlgorithm)


def _hashing_config() -> hashing.Config:
    """The one hashing configuration, pinned on both sides.

    Every file counts, git files included (the library ignores ``.git*`` by default; nothing in
    an adapter should be there unsigned).  Verification pins it too rather than trusting the
    configuration the signature describes.
    """
    config = hashing.Config()  # type: ignore[no-untyped-call]
    config.set_ignored_paths(paths=[], ignore_git_paths=False)
    return config.use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Create a P-256 key pair as ``signing.key`` (0600) and ``signing.pub``; never overwrite."""
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    existing = [p.name for p in (private_path, public_path) if p.exists()]
    if existing:
        raise InvalidRequest(
            f"refusing to overwrite existing signing key(s) {', '.join(existing)} in {directory}; "
            "move them away first if you really mean to replace them"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        # O_EXCL: a key created between the check above and here is not overwritten either.
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public_pem, 0o644)
    except FileExistsError as exc:
        raise InvalidRequest(f"refusing to overwrite existing signing key {exc.filename}") from exc
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fp:
        fp.write(data)


def signature_path_for(adapter_dir: Path) -> Path:
    """Where the signature of ``adapter_dir`` lives: the sibling ``<dir>.sig.json``."""
    if adapter_dir.name in ("", ".", ".."):
        adapter_dir = adapter_dir.resolve()
    return adapter_dir.with_name(adapter_dir.name + SIGNATURE_SUFFIX)


def _check_signable(adapter_dir: Path, signature: Path) -> None:
    if not adapter_dir.is_dir():
        raise InvalidRequest(f"adapter directory {adapter_dir.name!r} does not exist")
    if signature.resolve().is_relative_to(adapter_dir.resolve()):
        raise InvalidRequest(
            "the signature must live outside the adapter directory; "
            "a file inside it would itself fail verification"
        )


def _write_signature(config: signing.Config, adapter_dir: Path, signature: Path) -> None:
    """Sign into a temporary sibling and rename, so a reader never sees half a signature."""
    signature.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{signature.name}-", dir=signature.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        config.sign(adapter_dir, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, signature)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sign_adapter(adapter_dir: Path, private_key: Path, signature: Path | None = None) -> Path:
    """Sign ``adapter_dir`` with an elliptic-curve private key; return the signature path."""
    signature = signature_path_for(adapter_dir) if signature is None else signature
    _check_signable(adapter_dir, signature)
    if not private_key.is_file():
        raise InvalidRequest(f"private key {private_key} does not exist")
    try:
        config = signing.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_signer(private_key=private_key)
    except _KEY_ERRORS as exc:
        raise InvalidRequest(f"cannot sign with private key {private_key}: {exc}") from exc
    _write_signature(config.set_hashing_config(_hashing_config()), adapter_dir, signature)
    return signature


def sign_adapter_sigstore(
    adapter_dir: Path,
    signature: Path | None = None,
    *,
    use_staging: bool = False,
    identity_token: str | None = None,
) -> Path:
    """Sign ``adapter_dir`` keylessly with Sigstore; return the signature path.

    Needs the network (an OIDC identity token, a Fulcio certificate, a Rekor log entry), so
    it is not exercised by the tests, which run offline.  Without ``identity_token`` the
    library runs an interactive OAuth flow.  The library's network errors propagate as is.
    """
    signature = signature_path_for(adapter_dir) if signature is None else signature
    _check_signable(adapter_dir, signature)
    config = signing.Config().use_sigstore_signer(  # type: ignore[no-untyped-call]
        use_staging=use_staging, identity_token=identity_token
    )
    _write_signature(config.set_hashing_config(_hashing_config()), adapter_dir, signature)
    return signature


def _refuse_missing(adapter_dir: Path, signature: Path) -> None:
    if not adapter_dir.is_dir():
        raise AdapterLoadRefused(f"adapter directory {adapter_dir.name!r} does not exist")
    if not signature.is_file():
        raise AdapterLoadRefused(
            f"missing signature: no {signature.name} for adapter {adapter_dir.name!r}"
        )


def _run_verification(config: verifying.Config, adapter_dir: Path, signature: Path) -> None:
    """Run the library's verification; translate its failures into a refusal that says why."""
    try:
        config.set_hashing_config(_hashing_config()).verify(adapter_dir, signature)
    except InvalidSignature as exc:
        raise AdapterLoadRefused(
            f"bad signature: {signature.name} does not verify with the public key "
            "(signed by another key, or the signature file was altered)"
        ) from exc
    except ValueError as exc:
        text = str(exc)
        if text.startswith("Key mismatch"):
            raise AdapterLoadRefused(
                f"wrong key: {signature.name} was signed by a different key than the "
                "configured public key"
            ) from exc
        if text.startswith("Signature mismatch"):
            details = text.removeprefix("Signature mismatch:").strip()
            raise AdapterLoadRefused(
                f"tampered content: adapter {adapter_dir.name!r} does not match its signature "
                f"(hash mismatch): {details}"
            ) from exc
        raise AdapterLoadRefused(f"signature verification failed: {text}") from exc
    except Exception as exc:
        # Unreadable JSON, a bundle of the wrong shape, an I/O error, a Sigstore trust failure.
        raise AdapterLoadRefused(
            f"signature verification failed ({type(exc).__name__}): {exc}"
        ) from exc


def verify_adapter(adapter_dir: Path, public_key: Path, signature: Path | None = None) -> None:
    """Verify ``adapter_dir`` against its signature and an EC public key, or refuse."""
    signature = signature_path_for(adapter_dir) if signature is None else signature
    if not public_key.is_file():
        raise AdapterLoadRefused(
            f"missing public key: {public_key.name} does not exist, so no signature can be checked"
        )
    _refuse_missing(adapter_dir, signature)
    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key)
    except _KEY_ERRORS as exc:
        raise AdapterLoadRefused(f"bad public key: cannot use {public_key.name}: {exc}") from exc
    _run_verification(config, adapter_dir, signature)


def verify_adapter_sigstore(
    adapter_dir: Path,
    signature: Path | None,
    identity: str,
    oidc_issuer: str,
    *,
    use_staging: bool = False,
) -> None:
    """Verify a keyless Sigstore signature made by ``identity`` via ``oidc_issuer``, or refuse.

    Needs the network for the Sigstore trust root, so it is not exercised by the tests.
    """
    signature = signature_path_for(adapter_dir) if signature is None else signature
    _refuse_missing(adapter_dir, signature)
    try:
        config = verifying.Config().use_sigstore_verifier(  # type: ignore[no-untyped-call]
            identity=identity, oidc_issuer=oidc_issuer, use_staging=use_staging
        )
    except Exception as exc:
        raise AdapterLoadRefused(f"cannot set up Sigstore verification: {exc}") from exc
    _run_verification(config, adapter_dir, signature)


@dataclass(frozen=True)
class SigstoreIdentity:
    """Who must have signed (keyless mode): the certificate's identity and its OIDC issuer."""

    identity: str
    oidc_issuer: str
    use_staging: bool = False


def make_verifier(
    public_key: Path | None,
    *,
    required: bool,
    on_refused: Callable[[AdapterRef, str], None] | None = None,
    sigstore: SigstoreIdentity | None = None,
) -> Verifier:
    """An engine :data:`Verifier` checking ``ref.path`` against ``signature_path_for(ref.path)``.

    With ``sigstore`` the signature must be a keyless one by that identity; otherwise it is
    checked against ``public_key``.  ``required=False`` (development) lets an UNSIGNED adapter
    load, with a warning; a signature that is present is always checked, and refused if it
    fails (or if there is no key to check it with).  ``on_refused`` (the audit record) runs
    before the refusal is raised.
    """

    def verify(ref: AdapterRef) -> None:
        signature = signature_path_for(ref.path)
        if not required and not signature.exists():
            log.warning("loading UNSIGNED adapter %s (signatures not required)", ref.version_id)
            return
        try:
            if sigstore is not None:
                verify_adapter_sigstore(
                    ref.path,
                    signature,
                    sigstore.identity,
                    sigstore.oidc_issuer,
                    use_staging=sigstore.use_staging,
                )
            elif public_key is None:
                raise AdapterLoadRefused(
                    "missing public key: no signing public key is configured, "
                    "so no adapter signature can be checked"
                )
            else:
                verify_adapter(ref.path, public_key, signature)
        except AdapterLoadRefused as exc:
            if on_refused is not None:
                try:
                    on_refused(ref, exc.message)
                except Exception:
                    # The refusal stands even when its audit record cannot be written.
                    log.exception("on_refused callback failed for %s", ref.version_id)
            raise

    return verify


def signing_keys(settings: Settings) -> tuple[Path | None, Path | None]:
    """(private, public) key paths; in development a keypair is created under data_dir."""
    default_dir = settings.data_dir / "signing"
    private = settings.signing_private_key or default_dir / "signing.key"
    public = settings.signing_public_key or default_dir / "signing.pub"
    if (
        settings.environment == "development"
        and not public.exists()
        and settings.signing_public_key is None
    ):
        private, public = generate_keypair(default_dir)
        log.info("created a development signing keypair in %s", default_dir)
    return (private if private.exists() else None, public if public.exists() else None)


def adapter_signer(settings: Settings) -> Callable[[Path], Path] | None:
    """Sign an adapter directory the way this deployment signs; None where it cannot sign.

    ``key`` mode signs with the ops private key (absent on gateway hosts, by design);
    ``sigstore`` mode signs keylessly (an OIDC identity, Fulcio, Rekor: needs the network).
    The callable returns the signature's path, written beside (never inside) the directory.
    """
    if settings.signing_mode == "sigstore":
        token = settings.signing_identity_token
        return lambda path: sign_adapter_sigstore(
            path,
            signature_path_for(path),
            use_staging=settings.signing_sigstore_staging,
            identity_token=token.get_secret_value() if token else None,
        )
    private, _ = signing_keys(settings)
    if private is None:
        return None
    return lambda path: sign_adapter(path, private, signature_path_for(path))


def adapter_verifier(
    settings: Settings,
    on_refused: Callable[[AdapterRef, str], None] | None = None,
    *,
    required: bool | None = None,
) -> Verifier:
    """The signature check every engine runs before a load (key or Sigstore, per settings)."""
    required = settings.require_signed_adapters if required is None else required
    if settings.signing_mode == "sigstore":
        identity = SigstoreIdentity(
            *settings.sigstore_identity(), use_staging=settings.signing_sigstore_staging
        )
        return make_verifier(None, required=required, on_refused=on_refused, sigstore=identity)
    _, public = signing_keys(settings)
    return make_verifier(public, required=required, on_refused=on_refused)


def check_signature(settings: Settings, path: Path, version_id: str) -> None:
    """Verify a stored adapter's signature now; raises AdapterLoadRefused when it fails."""
    adapter_verifier(settings, required=True)(AdapterRef("verify", path, version_id))
