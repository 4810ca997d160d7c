"""`NAME=PATH` command-line values, shared by the benchmarks that compare named models."""

from __future__ import annotations

from pathlib import Path


def name_path_pairs(values: list[str], option: str) -> list[tuple[str, Path]]:
    """(name, path) of each `NAME=PATH` value of `--<option>`; exits naming a malformed one."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--{option} must look like NAME=PATH, got {value!r}")
        pairs.append((name, Path(path)))
    return pairs
