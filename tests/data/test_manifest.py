"""Signed dataset manifests: a clean set verifies; every tamper class is caught and named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from secmlops.data.dataset import write_dataset
from secmlops.data.manifest import (
    CHUNK_SIZE,
    MANIFEST_PAYLOAD_TYPE,
    DatasetTampered,
    build_manifest,
    manifest_bytes,
    sign_dataset,
    verify_dataset,
)
from secmlops.errors import DataError, IntegrityError
from secmlops.fsutil import atomic_write_bytes
from secmlops.supplychain.dsse import envelope_to_bytes, sign_envelope
from secmlops.supplychain.keys import Keyring, key_id, load_private_key

IMAGES = ("a.jpg", "b.jpg", "c.png")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, pki) -> dict[str, Path]:
    """A small signed dataset (2 JPEG + 1 PNG + annotations), signed by the data owner's key,
    built once; "evil" is a key no policy trusts, "gate" a trusted key of another role."""
    base = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    with write_dataset(base / "ds") as writer:
        for name in IMAGES:
            pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            writer.add(name, 64, 48, [(4.0, 5.0, 30.0, 40.0)], image=pixels)
    sign_dataset(base / "ds", pki["data_owner"].private)
    return {
        "ds": base / "ds",
        "key": pki["data_owner"].private,
        "evil": pki["rogue"].private,
        "gate": pki["gate"].private,
    }


@pytest.fixture
def ds(pristine: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the signed dataset to tamper with."""
    return Path(shutil.copytree(pristine["ds"], tmp_path / "ds"))


@pytest.fixture
def ring(pki) -> Keyring:
    """The deployment's trusted keys, each bound to its policy role."""
    return pki.keyring


def tampered(ds: Path, ring: Keyring) -> DatasetTampered:
    with pytest.raises(DatasetTampered) as info:
        verify_dataset(ds, ring)
    assert "\n" not in str(info.value)
    return info.value


def test_clean_dataset_verifies(ds: Path, ring: Keyring, pristine: dict[str, Path]) -> None:
    result = verify_dataset(ds, ring)
    manifest = json.loads((ds / "manifest.json").read_bytes())
    files = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*") if p.is_file())
    listed = [f["path"] for f in manifest["files"]]
    assert listed == sorted(set(files) - {"manifest.json", "manifest.sig"})
    assert result.file_count == len(listed) == len(IMAGES) + 2
    assert result.total_bytes == sum((ds / p).stat().st_size for p in listed)
    assert result.key_id == key_id(load_private_key(pristine["key"]).public_key())
    want = "sha256:" + hashlib.sha256((ds / "manifest.json").read_bytes()).hexdigest()
    assert result.digest == want
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((ds / entry["path"]).read_bytes()).hexdigest()


def test_sign_dataset_returns_the_verified_digest(ds: Path, ring: Keyring, pristine) -> None:
    digest = sign_dataset(ds, pristine["key"])
    assert verify_dataset(ds, ring, workers=1).digest == digest
    assert verify_dataset(ds, ring, workers=4).digest == digest


def test_flipped_byte_in_an_image(ds: Path, ring: Keyring) -> None:
    path = ds / "images" / "b.jpg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    error = tampered(ds, ring)
    assert "images/b.jpg: content changed" in str(error)
    assert error.problems == ["images/b.jpg: content changed (sha256 mismatch)"]


def test_edited_box_in_annotations(ds: Path, ring: Keyring) -> None:
    path = ds / "annotations.json"
    before = path.read_bytes()
    coco = json.loads(before)
    coco["annotations"][0]["bbox"][0] += 1.0  # 4.0 -> 5.0: same size, only the hash can tell
    after = (json.dumps(coco, indent=2, sort_keys=True) + "\n").encode()
    assert len(after) == len(before) and after != before
    path.write_bytes(after)
    assert "annotations.json: content changed" in str(tampered(ds, ring))


def test_size_changed(ds: Path, ring: Keyring) -> None:
    with (ds / "images" / "a.jpg").open("ab") as handle:
        handle.write(b"\0")
    assert "images/a.jpg: size changed" in str(tampered(ds, ring))


def test_added_file(ds: Path, ring: Keyring) -> None:
    (ds / "images" / "z_poison.jpg").write_bytes(b"\xff\xd8 trigger")
    assert "images/z_poison.jpg: unexpected file" in str(tampered(ds, ring))


def test_removed_file(ds: Path, ring: Keyring) -> None:
    (ds / "images" / "c.png").unlink()
    assert "images/c.png: missing file" in str(tampered(ds, ring))


def test_every_problem_is_listed(ds: Path, ring: Keyring) -> None:
    (ds / "images" / "c.png").unlink()
    (ds / "extra.txt").write_text("x")
    (ds / "images" / "a.jpg").write_bytes(b"replaced")
    error = tampered(ds, ring)
    assert len(error.problems) == 3
    assert str(error).endswith("and 2 more")
    reasons = " | ".join(error.problems)
    for fragment in ("c.png: missing file", "extra.txt: unexpected", "a.jpg: size changed"):
        assert fragment in reasons


def test_edited_manifest(ds: Path, ring: Keyring) -> None:
    # The attacker swaps an image and records its new hash in manifest.json.
    image = ds / "images" / "a.jpg"
    image.write_bytes(image.read_bytes()[::-1])
    manifest = json.loads((ds / "manifest.json").read_bytes())
    for entry in manifest["files"]:
        if entry["path"] == "images/a.jpg":
            entry["sha256"] = hashlib.sha256(image.read_bytes()).hexdigest()
    (ds / "manifest.json").write_bytes(manifest_bytes(manifest))
    with pytest.raises(IntegrityError, match=r"manifest\.json: signature does not match"):
        verify_dataset(ds, ring)


def test_signed_by_an_untrusted_key(ds: Path, ring: Keyring, pristine: dict[str, Path]) -> None:
    (ds / "images" / "a.jpg").write_bytes(b"poisoned")
    sign_dataset(ds, pristine["evil"])
    evil_id = key_id(load_private_key(pristine["evil"]).public_key())
    with pytest.raises(IntegrityError, match=rf"manifest\.sig: untrusted key {evil_id}"):
        verify_dataset(ds, ring)


@pytest.mark.parametrize(
    ("role", "held"),
    [("gate", "a gate key"), ("trainer", "a trainer key"), ("approver", "an approver key")],
)
def test_a_manifest_signed_by_a_key_of_another_role_is_refused(
    ds: Path, ring: Keyring, pki, role: str, held: str
) -> None:
    # The attacker can write the dataset folder and holds one trusted key, of another role
    # (here the gate's): a poisoned image, re-signed with it, must not pass as the owner's data.
    (ds / "images" / "a.jpg").write_bytes(b"poisoned")
    sign_dataset(ds, pki[role].private)
    with pytest.raises(IntegrityError) as info:
        verify_dataset(ds, ring)
    message = str(info.value)
    assert message.startswith(f"{ds / 'manifest.sig'}: dataset manifest: ")
    assert f"signed by {pki[role].id}, {held}; only a data_owner key may sign it" in message


def test_the_data_owner_re_signing_changed_data_passes(ds: Path, ring: Keyring, pki) -> None:
    # The good twin of the test above: the same change, signed by the data owner's key.
    (ds / "images" / "a.jpg").write_bytes(b"relabelled")
    sign_dataset(ds, pki["data_owner"].private)
    assert verify_dataset(ds, ring).key_id == pki["data_owner"].id


def test_a_keyring_without_roles_refuses_even_the_owners_manifest(ds: Path, pki) -> None:
    # Fail closed: trusted keys with no policy roles bound verify nothing.
    with pytest.raises(IntegrityError, match="no key roles configured"):
        verify_dataset(ds, pki.trusted_keyring())


def test_missing_signature_and_missing_manifest(ds: Path, ring: Keyring) -> None:
    (ds / "manifest.sig").unlink()
    with pytest.raises(IntegrityError, match=r"manifest\.sig: unsigned: manifest\.sig missing"):
        verify_dataset(ds, ring)
    (ds / "manifest.json").unlink()
    (ds / "manifest.sig").write_text("{}")
    with pytest.raises(IntegrityError, match=r"manifest\.json: manifest\.json missing"):
        verify_dataset(ds, ring)


def test_garbled_signature_file(ds: Path, ring: Keyring) -> None:
    (ds / "manifest.sig").write_text("not json")
    with pytest.raises(IntegrityError, match=r"manifest\.sig: malformed envelope"):
        verify_dataset(ds, ring)


def test_symlinks_are_refused(ds: Path, ring: Keyring, pristine: dict[str, Path]) -> None:
    outside = ds.parent / "outside.jpg"
    outside.write_bytes(b"secret")
    os.symlink(outside, ds / "images" / "link.jpg")
    assert "images/link.jpg: symlink refused" in str(tampered(ds, ring))
    with pytest.raises(IntegrityError, match=r"images/link\.jpg: symlink refused"):
        sign_dataset(ds, pristine["key"])


def test_symlinked_manifest_is_refused(ds: Path, ring: Keyring) -> None:
    real = ds.parent / "elsewhere.sig"
    (ds / "manifest.sig").rename(real)
    os.symlink(real, ds / "manifest.sig")
    with pytest.raises(IntegrityError, match=r"manifest\.sig: symlink refused"):
        verify_dataset(ds, ring)


@pytest.mark.parametrize("bad_path", ["../outside.txt", "/etc/passwd", "images/../../x", "a//b"])
def test_manifest_paths_that_escape_are_refused(
    ds: Path, ring: Keyring, pristine: dict[str, Path], bad_path: str
) -> None:
    # Even a manifest signed by a trusted key may not point outside the folder.
    manifest = build_manifest(ds)
    manifest["files"].append({"path": bad_path, "size": 1, "sha256": "0" * 64})
    payload = manifest_bytes(manifest)
    envelope = sign_envelope(payload, MANIFEST_PAYLOAD_TYPE, load_private_key(pristine["key"]))
    atomic_write_bytes(ds / "manifest.json", payload)
    atomic_write_bytes(ds / "manifest.sig", envelope_to_bytes(envelope))
    with pytest.raises(IntegrityError, match="escapes the dataset folder"):
        verify_dataset(ds, ring)


def test_large_files_stream_in_chunks_and_nested_folders(tmp_path: Path, ring, pristine) -> None:
    root = tmp_path / "nested"
    (root / "a" / "b").mkdir(parents=True)
    big = np.random.default_rng(1).bytes(2 * CHUNK_SIZE + 12345)
    (root / "a" / "b" / "big.bin").write_bytes(big)
    (root / "empty.txt").write_bytes(b"")
    sign_dataset(root, pristine["key"])
    manifest = json.loads((root / "manifest.json").read_bytes())
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["a/b/big.bin"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert by_path["empty.txt"]["size"] == 0
    assert verify_dataset(root, ring, workers=3).file_count == 2


def test_missing_folder_is_a_data_error(tmp_path: Path, ring: Keyring) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        verify_dataset(tmp_path / "nothing", ring)


def test_fifo_is_refused_and_odd_file_names_round_trip(tmp_path: Path, ring, pristine) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    (root / "ümlaut jpg.jpg").write_bytes(b"a")
    (root / os.fsdecode(b"raw-\xff.bin")).write_bytes(b"b")  # not valid UTF-8
    sign_dataset(root, pristine["key"])
    assert verify_dataset(root, ring).file_count == 2
    os.mkfifo(root / "pipe")
    error = tampered(root, ring)
    assert "pipe: not a regular file" in str(error)
