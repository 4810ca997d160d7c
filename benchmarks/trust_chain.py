"""Cost of verifying the whole release chain, against the plain signature check it replaced.

Builds a real release (the compact detector's weights at the default widths, a card, a passed
gate record signed by the gate key, provenance signed by the trainer key naming a data owner's
manifest), pushes it to a folder registry, promotes it with the approver key, then times, best of
`--repeats` in one run:

    baseline  verify_model: the provenance signature and every file's SHA-256 (what a serving
              reload and `registry pull` checked before the chain)
    ours      verify_chain on the same folder: provenance + gate record (signature, pass,
              digest, policy binding, validity) + dataset signer's role
    ours      serving reload: `Registry.pull` through the production alias (read and verify the
              signed move and its sequence, fetch every file, check each against the version
              record, verify_chain, rename into place)
    baseline  the same fetch without any verification (copy the files out of the registry)
    ours      promotion: `Registry.promote` (fetch, verify_chain with expiry and policy, sign the
              move, compare-and-swap), alternating between two versions
    baseline  pull + promote as they were before the chain: fetch + verify_model
    ours      the OpenSSF model-signing bundle (`model.sig`, ECDSA P-256): signing it, and
              verifying it with the upstream library, beside `sign_model` and `verify_model`

    python benchmarks/trust_chain.py
    python benchmarks/trust_chain.py --repeats 20 --widths 32 64 128 256
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from release_chain import RoleKeys, role_keys, sign_release

from secmlops.audit import AuditLog
from secmlops.models import OperatingPoint, build, save
from secmlops.policy import load_policy
from secmlops.registry import Registry
from secmlops.registry.trust_chain import SequenceState, verify_chain
from secmlops.supplychain.provenance import sign_model, verify_model

NAME = "bench"


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls, in milliseconds (the first warms caches)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def make_release(root: Path, label: str, keys: RoleKeys, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    # As training records it: chosen at the policy's 0.1 false positives per validation image.
    point = OperatingPoint(score_threshold=0.4, chosen_by="fppi", target_fppi=0.1, split="val")
    save(build("compact_centernet"), root / label, operating_point=point)
    return sign_release(root / label, root, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="secmlops-bench-chain-") as tmp:
        root = Path(tmp)
        chain = role_keys(root)
        keys, keyring = chain.keys, chain.keyring
        policy = load_policy(chain.policy)
        audit = AuditLog(root / "audit.jsonl", actor="bench")
        registry = Registry.open(root / "registry")
        releases = [make_release(root, f"v{i}", chain, i) for i in (1, 2)]
        for release in releases:
            registry.push(release, NAME, release.name, keyring, audit)
        state = SequenceState(root / "trust-state.json")
        promote = {"key": keys["approver"], "policy": policy, "state": state}
        registry.promote(NAME, "v1", "production", keyring, audit, **promote)
        size_mb = sum(p.stat().st_size for p in releases[0].iterdir()) / 1e6
        record = registry.store.read_version_record(NAME, "v1")
        assert record is not None

        def fetch_only() -> None:
            dest = root / "fetched"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for file_name in record["files"]:
                registry.store.fetch_file(NAME, "v1", file_name, dest / file_name)

        def fetch_and_verify_model() -> None:
            fetch_only()
            verify_model(root / "fetched", keyring)

        def reload() -> None:
            registry.pull(NAME, "production", root / "served", keyring, policy,
                          audit=None, state=state, overwrite=True)  # fmt: skip

        target = iter(["v2", "v1"] * (args.repeats + 1))

        def promotion() -> None:
            registry.promote(NAME, next(target), "production", keyring, audit, **promote)

        from secmlops.supplychain.openssf import (
            generate_openssf_keypair,
            load_openssf_key,
            sign_openssf,
            verify_openssf,
        )

        ec_private, ec_public = generate_openssf_keypair(root / "keys", "trainer-openssf")
        ec_key, ec_pem = load_openssf_key(ec_private), ec_public.read_bytes()
        bundled = root / "bundled"
        shutil.copytree(releases[0], bundled)
        rows = [
            ("verify_model (provenance signature + file digests)",
             best_of(args.repeats, lambda: verify_model(releases[0], keyring))),
            ("verify_chain (+ gate record, policy, validity, dataset role)",
             best_of(args.repeats, lambda: verify_chain(
                 releases[0], keyring, policy, registry_weights=record["weights_sha256"]))),
            ("fetch only (copy the files, no verification)", best_of(args.repeats, fetch_only)),
            ("fetch + verify_model (a reload before the chain)",
             best_of(args.repeats, fetch_and_verify_model)),
            ("serving reload: pull via the signed alias, whole chain",
             best_of(args.repeats, reload)),
            ("promotion: fetch + chain + sign move + CAS (audited)",
             best_of(args.repeats, promotion)),
            ("sign_model (provenance over every file)",
             best_of(args.repeats, lambda: sign_model(bundled, keys["trainer"]))),
            ("OpenSSF bundle: sign_openssf (model-signing, ECDSA P-256)",
             best_of(args.repeats, lambda: sign_openssf(bundled, ec_key))),
            ("OpenSSF bundle: verify_openssf (upstream verifier)",
             best_of(args.repeats, lambda: verify_openssf(bundled, ec_pem))),
        ]  # fmt: skip
    base = rows[0][1]
    print(f"release: {size_mb:.1f} MB (compact CenterNet, default widths); best of {args.repeats}")
    print(f"{'check':<64} {'ms':>9} {'x verify_model':>15}")
    for label, ms in rows:
        print(f"{label:<64} {ms:>9.2f} {ms / base:>15.2f}")
    reload_ms, before_ms = rows[4][1], rows[3][1]
    print(f"serving reload with the chain / before it (fetch + verify_model): "
          f"{reload_ms / before_ms:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
