"""Cost of the signed-manifest check: `verify_dataset` against `sha256sum` over the same files.

Builds a dataset-shaped folder (by default 2,000 JPEG-sized files of ~40 KB of random bytes and
20 files of 5 MB), signs it with a throwaway key, then times, best of `--repeats` in one run:

    ours      verify_dataset (signature check + folder scan + size and SHA-256 of every file)
    baseline  sha256sum over the same files: one process (xargs -P1), and two (xargs -P2)
    baseline  sha256sum -c against the same digests (a plain verification, no signature)

Timings are with a warm page cache (the first repeat warms it), so they measure the CPU cost
of verification, which is what the check adds to every pipeline run.

    python benchmarks/manifest_verification.py
    python benchmarks/manifest_verification.py --data runs/datasets/pets --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from secmlops.data.manifest import build_manifest, default_workers, sign_dataset, verify_dataset
from secmlops.supplychain.keys import Keyring, generate_keypair


def make_files(root: Path, small: int, small_kb: int, large: int, large_mb: int) -> None:
    """Write `small` files of about `small_kb` KB and `large` files of `large_mb` MB."""
    (root / "images").mkdir(parents=True)
    (root / "videos").mkdir()
    for i in range(small):
        # JPEG sizes vary; +-25% keeps files from being identical in length.
        size = small_kb * 1024 * (75 + (i * 37) % 51) // 100
        (root / "images" / f"{i:06d}.jpg").write_bytes(os.urandom(size))
    chunk = os.urandom(1 << 20)
    for i in range(large):
        with (root / "videos" / f"{i:03d}.bin").open("wb") as handle:
            for _ in range(large_mb):
                handle.write(os.urandom(16) + chunk[16:])


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest wall time of `repeats` calls (the first one also warms the page cache)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sha256sum(root: Path, list_file: Path, parallel: int, batch: int) -> None:
    """sha256sum over the NUL-separated paths in `list_file`, via xargs -P `parallel`."""
    command = ["xargs", "-0", "-P", str(parallel), "-n", str(batch), "sha256sum", "--"]
    with list_file.open("rb") as stdin:
        subprocess.run(command, cwd=root, stdin=stdin, stdout=subprocess.DEVNULL, check=True)


def sha256sum_check(root: Path, sums_file: Path) -> None:
    """sha256sum -c: hash every listed file and compare with the recorded digest."""
    command = ["sha256sum", "--quiet", "-c", str(sums_file)]
    subprocess.run(command, cwd=root, stdout=subprocess.DEVNULL, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="existing dataset folder (copied, then signed)")
    parser.add_argument("--small", type=int, default=2000, help="number of ~JPEG-sized files")
    parser.add_argument("--small-kb", type=int, default=40, help="mean size of those, KB")
    parser.add_argument("--large", type=int, default=20, help="number of large files")
    parser.add_argument("--large-mb", type=int, default=5, help="size of each large file, MB")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help=f"hashing threads to try (default {default_workers()})",
    )
    parser.add_argument("--tmp", type=Path, help="where to build the folder (default: $TMPDIR)")
    args = parser.parse_args()
    workers = args.workers or [default_workers()]

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        base = Path(tmp)
        root = base / "dataset"
        if args.data:
            shutil.copytree(args.data, root, symlinks=True)
            for name in ("manifest.json", "manifest.sig"):
                (root / name).unlink(missing_ok=True)
        else:
            make_files(root, args.small, args.small_kb, args.large, args.large_mb)
        private_key, public_key = generate_keypair(base / "keys", "bench")
        keyring = Keyring.from_paths([public_key])
        keyring = keyring.with_roles({"data_owner": keyring.ids})  # the data owner's key
        sign_dataset(root, private_key)

        files = build_manifest(root)["files"]
        count, total = len(files), sum(f["size"] for f in files)
        list_file = base / "files.lst"
        list_file.write_bytes(b"".join(f["path"].encode() + b"\0" for f in files))
        sums_file = base / "SHA256SUMS"
        sums_file.write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in files))
        per_process = -(-count // 16)  # 16 batches: -P2 stays busy to the end

        rows: list[tuple[str, float]] = []
        for n in workers:
            seconds = best_of(args.repeats, lambda n=n: verify_dataset(root, keyring, workers=n))
            rows.append((f"verify_dataset, {n} thread{'s' if n > 1 else ''}", seconds))
        rows.append(("sha256sum (xargs -P1)", best_of(
            args.repeats, lambda: sha256sum(root, list_file, 1, count))))  # fmt: skip
        rows.append(("sha256sum (xargs -P2)", best_of(
            args.repeats, lambda: sha256sum(root, list_file, 2, per_process))))  # fmt: skip
        rows.append(
            ("sha256sum -c", best_of(args.repeats, lambda: sha256sum_check(root, sums_file)))
        )

    cpus = len(os.sched_getaffinity(0))
    print(f"files: {count} ({total / 1e6:.1f} MB), {cpus} CPUs, best of {args.repeats}, warm cache")
    reference = dict(rows)["sha256sum (xargs -P1)"]
    reference_p2 = dict(rows)["sha256sum (xargs -P2)"]
    header = f"{'method':<30} {'seconds':>8} {'MB/s':>8} {'files/s':>9} {'vs -P1':>7} {'vs -P2':>7}"
    print(header)
    print("-" * len(header))
    for name, seconds in rows:
        print(
            f"{name:<30} {seconds:>8.3f} {total / seconds / 1e6:>8.0f} {count / seconds:>9.0f} "
            f"{reference / seconds:>6.2f}x {reference_p2 / seconds:>6.2f}x"
        )
    print("vs -P1 / vs -P2: throughput relative to sha256sum (above 1.00x = faster)")


if __name__ == "__main__":
    main()
