r"""The rules for names that become paths, keys, tags or rows. A name matches in full or not at all.

`re.match(r"^v1$", "v1\n")` matches, because `$` also matches just before a final newline. A
registry version "v1\n" would pass such a check, get its own folder or S3 key, and `registry
list` would show two "v1". Every name pattern is therefore compiled here, anchored with
`\A...\Z`, so that `.match` or `.search` cannot stop short of the end either. `matches` checks a
value with `fullmatch`. No control character, newline included, gets through at either end or
inside.
"""

from __future__ import annotations

import re
from typing import Any

_HEAD, _TAIL = r"\A(?:", r")\Z"
_PLAIN = r"[A-Za-z0-9][A-Za-z0-9._-]"
_DATASET = rf"{_PLAIN}{{0,127}}"
_VERSION = r"[1-9][0-9]{0,8}"


def full_pattern(body: str) -> re.Pattern[str]:
    """`body` compiled to match a whole string: nothing before it, nothing after it."""
    return re.compile(f"{_HEAD}{body}{_TAIL}")


def rule(pattern: re.Pattern[str]) -> str:
    """The pattern as messages show it: its body, without the anchors."""
    return pattern.pattern.removeprefix(_HEAD).removesuffix(_TAIL)


def matches(pattern: re.Pattern[str], value: Any) -> bool:
    """Whether `value` is a string that `pattern` matches from its first to its last character."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def json_schema_pattern(body: str) -> str:
    """`body` as a JSON-schema `pattern` that matches whole strings in both engines that read it.

    jsonschema (Python) uses `re.search`, where `$` also matches before a final newline. The
    browser form uses ECMAScript, which has no `\\Z`. `^(...)$(?!\\n)` means the same in both.
    """
    return f"^(?:{body})$(?!\\n)"


NAME = full_pattern(rf"{_PLAIN}{{0,63}}")
"""A registry model name or version."""
ALIAS = full_pattern(r"[a-z][a-z0-9-]{0,31}")
"""A registry alias (`production`, `staging`)."""
FILE_NAME = full_pattern(rf"{_PLAIN}{{0,127}}")
"""One path component: a registry file, a report folder or file."""
DATASET_NAME = full_pattern(_DATASET)
"""A dataset name, as published in the data registry and signed in its manifest."""
DATASET_TAG = full_pattern(rf"data/(?P<name>{_DATASET})/v(?P<version>{_VERSION})")
"""A dataset version's git tag `data/<name>/v<K>`."""
DATASET_TAG_OR_EMPTY_SCHEMA = json_schema_pattern(rf"|data/{_DATASET}/v{_VERSION}")
"""The trigger forms' `data_rev`: a dataset tag, or empty (JSON schema; no named groups)."""
SHA256_HEX = full_pattern(r"[0-9a-f]{64}")
"""A SHA-256 digest as lowercase hex."""
