"""Sample keys: a source's stem made safe for WebDataset's "key = up to the first dot" rule.

Every character outside ``[A-Za-z0-9_-]`` becomes ``_`` (so a name with dots stays one sample),
over-long stems are cut to :data:`MAX_KEY_CHARS` (so tar member names stay plain ustar names),
and collisions get a ``-<n>`` suffix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_KEY_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitise_key(stem: str) -> str:
    key = _UNSAFE.sub("_", stem)[:MAX_KEY_CHARS]
    return key or "_"


def unique_keys(stems: Iterable[str]) -> list[str]:
    """Sanitised, unique keys in input order; the first holder of a key keeps it bare."""
    taken: set[str] = set()
    keys = []
    for stem in stems:
        base = sanitise_key(stem)
        key, n = base, 0
        while key in taken:
            n += 1
            key = f"{base}-{n}"
        taken.add(key)
        keys.append(key)
    return keys
