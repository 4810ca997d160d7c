"""Ed25519 signing keys and the keyring of trusted public keys.

Threat: an attacker who can write to the data store or the model registry swaps in their own
bytes (poisoned images, a backdoored model). A digest alone does not help, because the attacker
recomputes it; a signature does, provided the verifier decides *which* keys it trusts. The
`Keyring` is that decision: it holds public keys by key id, loaded from files or from the
deployment's settings (`Settings.trusted_keys`: PEM text or key files, fed by Airflow Connections
and secret stores), never from the artifact being verified.

A keyring also knows which role each key holds (`with_roles`, from the policy's `roles:`
section): a verifier accepts a document only from a key of the role that signs that kind of
document (`require_role`), so a data owner's key cannot sign a gate decision, nor a gate key
approve production.

Private keys are written with mode 0600 and, given a passphrase (`Settings.key_passphrase`),
encrypted with it, so a copied key file alone does not let anyone sign.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secmlops.errors import DataError, IntegrityError

KEY_ID_PREFIX = "ed25519:"
# The roles of the release chain, in the order a model passes them (policy `roles:`).
ROLES = ("data_owner", "trainer", "gate", "approver")

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Stable short name of a public key: "ed25519:" + 32 hex chars of SHA-256(raw key).

    Args:
        public_key: the key (pass `private.public_key()` for a private key).

    Returns:
        The key id, e.g. "ed25519:3f1c...".
    """
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()[:32]


def generate_keypair(out_dir: Path, name: str, passphrase: str | None = None) -> tuple[Path, Path]:
    """Create `<name>.key` (PKCS8 PEM, mode 0600) and `<name>.pub` (SubjectPublicKeyInfo PEM).

    Args:
        out_dir: folder for both files (created if missing).
        name: base name of the files (a plain name, no path separators).
        passphrase: encrypts the private key when given.

    Returns:
        (private key path, public key path).

    Raises:
        DataError: `name` is not a plain file name, or either file already exists (a key is
            never overwritten: losing it would orphan everything it signed).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"key name must be a plain file name, got {name!r}")
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise DataError(f"{path}: already exists; refusing to overwrite a key")
    out_dir.mkdir(parents=True, exist_ok=True)

    private_key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_new_file(private_path, private_pem, mode=0o600)
    try:
        write_new_file(public_path, public_pem, mode=0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _a(word: str) -> str:
    """The indefinite article for `word` ("an approver", "a gate")."""
    return "an" if word[:1] in "aeiou" else "a"


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file atomically; fail if `path` appeared meanwhile.

    `os.link` of a complete temporary file refuses an existing target, so neither a
    half-written key nor a silent overwrite (two concurrent `generate_keypair`) can happen.
    mkstemp creates the temporary file with mode 0600, so the secret is never world-readable.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise DataError(f"{path}: already exists; refusing to overwrite a key") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_private_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file.

    Args:
        path: the `.key` file.
        passphrase: decrypts an encrypted key (`Settings.key_passphrase`). Ignored for an
            unencrypted key.

    Returns:
        The private key.

    Raises:
        DataError: the file is missing or unreadable, is not a PEM private key, is encrypted and
            no passphrase was given, or the passphrase is wrong.
        IntegrityError: the key is not an Ed25519 key.
    """
    path = Path(path)
    data = _read_key_file(path)
    password = passphrase.encode() if passphrase else None
    try:
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except TypeError:
            if password is None:
                raise DataError(
                    f"{path}: private key is encrypted; set its passphrase in "
                    "SECMLOPS_KEY_PASSPHRASE"
                ) from None
            # A deployment's passphrase must not break loading an unencrypted key.
            key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        hint = "wrong passphrase, or " if password else ""
        raise DataError(f"{path}: cannot load private key ({hint}not a PEM private key)") from None
    except UnsupportedAlgorithm as exc:
        raise IntegrityError(f"{path}: unsupported key algorithm ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load one Ed25519 public key from a PEM file.

    Raises:
        DataError: the file is missing, unreadable, or holds no (or more than one) public key.
        IntegrityError: the key is not an Ed25519 key.
    """
    keys = list(_parse_public_pems(_read_key_file(Path(path)), str(path)))
    if len(keys) != 1:
        raise DataError(f"{path}: expected one public key, found {len(keys)}")
    return keys[0]


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: key file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read key file ({exc.strerror or exc})") from None


def _parse_public_pems(data: bytes, source: str) -> Iterator[Ed25519PublicKey]:
    """Yield every public key in PEM text that may hold several concatenated blocks."""
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise DataError(f"{source}: no PEM public key found")
    for block in blocks:
        label = block.group(1).decode()
        if "PRIVATE" in label:
            # Pointing the trust list at a private key would leak it into every verifier.
            raise DataError(f"{source}: contains a private key; a keyring holds public keys only")
        if label != "PUBLIC KEY":
            raise DataError(f"{source}: unexpected PEM block {label!r} (expected PUBLIC KEY)")
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DataError(f"{source}: malformed public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise IntegrityError(f"{source}: not an Ed25519 public key ({type(key).__name__})")
        yield key


class Keyring:
    """The public keys a verifier trusts, by key id.

    Which keys are trusted is configuration of the verifier, never something read from the
    artifact: a manifest that names its own verification key proves nothing.
    """

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.sources: dict[str, str] = {}
        self.roles: dict[str, str] = {}  # key id -> role; empty: no role may be verified
        for key in keys:
            self.add(key)

    def with_roles(self, assignment: Mapping[str, Sequence[str]]) -> Keyring:
        """A copy of this keyring that knows each key's role (policy `roles:`: role -> key ids).

        Raises:
            DataError: an unknown role name, or a key id listed under two roles.
        """
        ring = Keyring()
        ring._keys, ring.sources = dict(self._keys), dict(self.sources)
        for role, kids in assignment.items():
            if role not in ROLES:
                raise DataError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
            for kid in kids:
                if ring.roles.setdefault(kid, role) != role:
                    raise DataError(f"{kid}: listed as {ring.roles[kid]} and as {role}")
        return ring

    def require_role(self, kid: str, role: str | tuple[str, ...], what: str) -> None:
        """Refuse unless trusted key `kid` holds `role` (or one of several); `what` names the
        signed document.

        Raises:
            IntegrityError: no roles are configured (fail closed), or the key holds another
                role or none (the message names both roles).
        """
        if not self.roles:
            raise IntegrityError(
                f"{what}: no key roles configured; the policy's roles section says which keys "
                f"may sign it (a {role} key)"
            )
        wanted = (role,) if isinstance(role, str) else role
        held = self.roles.get(kid)
        if held not in wanted:
            holds = f"{_a(held)} {held} key" if held else "a key that holds no role in the policy"
            raise IntegrityError(
                f"{what}: signed by {kid}, {holds}; only {_a(wanted[0])} {' or '.join(wanted)} "
                "key may sign it"
            )

    def add(self, key: Ed25519PublicKey, source: str = "<memory>") -> str:
        """Trust `key`; returns its key id."""
        kid = key_id(key)
        self._keys[kid] = key
        self.sources.setdefault(kid, source)
        return kid

    def get(self, kid: str) -> Ed25519PublicKey | None:
        """The trusted key with id `kid`, or None when it is not trusted."""
        return self._keys.get(kid)

    @property
    def ids(self) -> tuple[str, ...]:
        """Ids of all trusted keys, sorted."""
        return tuple(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[tuple[str, Ed25519PublicKey]]:
        return iter(sorted(self._keys.items()))

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self.ids)})"

    @classmethod
    def from_pem(cls, data: bytes | str, source: str = "<pem>") -> Keyring:
        """Keyring of every public key in PEM text (one or several concatenated blocks).

        Raises:
            DataError: no public key in the text, a private key, or a malformed block.
            IntegrityError: a key is not Ed25519.
        """
        raw = data.encode() if isinstance(data, str) else data
        ring = cls()
        for key in _parse_public_pems(raw, source):
            ring.add(key, source)
        return ring

    @classmethod
    def from_paths(cls, paths: Sequence[Path | str]) -> Keyring:
        """Keyring from `.pub` files, files of concatenated PEM keys, or folders of `*.pub`.

        Raises:
            DataError: a path is missing or unreadable, a folder holds no `*.pub` file, or a
                file holds no valid public key (the message names the file).
            IntegrityError: a key is not Ed25519.
        """
        ring = cls()
        for entry in paths:
            path = Path(entry)
            if path.is_dir():
                files = sorted(p for p in path.glob("*.pub") if p.is_file())
                if not files:
                    raise DataError(f"{path}: no *.pub public key files in this folder")
            else:
                files = [path]
            for file in files:
                for key in _parse_public_pems(_read_key_file(file), str(file)):
                    ring.add(key, str(file))
        return ring

    @classmethod
    def from_setting(cls, value: str | None, name: str = "SECMLOPS_TRUSTED_KEYS") -> Keyring:
        """Keyring from a setting holding PEM text or os.pathsep-separated paths
        (`Settings.trusted_keys`).

        Raises:
            DataError: the setting is unset or empty (no trusted key means nothing can
                verify, so say so now rather than fail on every artifact), or as `from_paths`.
        """
        value = (value or "").strip()
        if not value:
            raise DataError(f"no trusted keys: set {name} to PEM public keys or key file paths")
        if "-----BEGIN" in value:
            return cls.from_pem(value, source=f"${name}")
        return cls.from_paths([p for p in value.split(os.pathsep) if p.strip()])
