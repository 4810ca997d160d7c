"""OpenSSF model signing: a Sigstore bundle over every file of a release (`model.sig`), so that
anyone can verify a pulled release with the ecosystem's tool, without SecMLOps.

Threat: the same as the provenance's (a release swapped or edited between training and use), for
consumers that do not run SecMLOps: model hubs and serving runtimes that check OpenSSF model
signatures (https://github.com/sigstore/model-transparency, `model-signing` on PyPI). The bundle
is a DSSE in-toto statement over the digest of every model file, signed offline with the
trainer's ECDSA P-256 key: `model-signing` 1.1 signs with elliptic-curve keys only, not Ed25519,
so the trainer holds a second key for it. The trainer's Ed25519-signed provenance names that
key's public half and lists `model.sig` among its subjects, so the two signatures vouch for the
same files and the same key; a verifier refuses a release whose bundle does not verify, or was
made by another key than the provenance names.

    model_signing verify key MODEL_DIR --signature MODEL_DIR/model.sig \
        --public_key trainer-openssf.pub
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import DataError, IntegrityError

SIGNATURE_FILE = "model.sig"
# Not part of the bundle: the bundle itself, the provenance signed after it (it lists the
# bundle), and training state that is never released.
IGNORED = (SIGNATURE_FILE, "provenance.json", "checkpoints")


def generate_openssf_keypair(
    out_dir: Path, name: str, passphrase: str | None = None
) -> tuple[Path, Path]:
    """Create `<name>.key` (PKCS8 PEM, ECDSA P-256, mode 0600) and `<name>.pub`.

    Raises:
        DataError: either file exists already (a key is never overwritten).
    """
    from secmlops.supplychain.keys import write_new_file

    out_dir = Path(out_dir)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise DataError(f"{path}: already exists; refusing to overwrite a key")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_new_file(private_path, private_pem, mode=0o600)
    write_new_file(public_path, public_pem_of(key), mode=0o644)
    return private_path, public_path


def public_pem_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key's public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_openssf_key(path: Path, passphrase: str | None = None) -> ec.EllipticCurvePrivateKey:
    """Load the trainer's ECDSA P-256 signing key.

    Raises:
        DataError: missing, unreadable, encrypted without a passphrase, or a wrong passphrase.
        IntegrityError: not an ECDSA P-256 key.
    """
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(
            data, password=passphrase.encode() if passphrase else None
        )
    except FileNotFoundError:
        raise DataError(f"{path}: OpenSSF signing key not found") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the OpenSSF signing key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise IntegrityError(f"{path}: not an ECDSA P-256 private key")
    return key


def sign_openssf(model_dir: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    """Write `model.sig`: an OpenSSF model-signing bundle over the release's files.

    Returns:
        The bundle's path.
    """
    from model_signing import hashing, signing

    model_dir = Path(model_dir)
    with _pem_file(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    ) as private:  # the library reads a key file; a private temporary one, deleted at once
        config = signing.Config().use_elliptic_key_signer(private_key=private)
        config.set_hashing_config(hashing.Config().set_ignored_paths(paths=list(IGNORED)))
        config.sign(model_dir, model_dir / SIGNATURE_FILE)
    return model_dir / SIGNATURE_FILE


def verify_openssf(model_dir: Path, public_pem: str | bytes) -> None:
    """Check `model.sig` against the model's files with the upstream verifier.

    Raises:
        IntegrityError: no bundle, a bundle by another key, or any file that differs from it.
    """
    from model_signing import verifying

    model_dir = Path(model_dir)
    bundle = model_dir / SIGNATURE_FILE
    if not bundle.is_file():
        raise IntegrityError(f"{bundle}: no OpenSSF model-signing bundle")
    pem = public_pem.encode() if isinstance(public_pem, str) else public_pem
    with _pem_file(pem) as public:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
                model_dir, bundle
            )
        except Exception as exc:  # the library raises ValueError and its own errors
            raise IntegrityError(
                f"{bundle}: OpenSSF model signature does not verify ({exc})"
            ) from None


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[Path]:
    with tempfile.NamedTemporaryFile(prefix="secmlops-", suffix=".pem") as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)
