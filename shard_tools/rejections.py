"""Why a source video was not packed: the reasons that land in ``manifest["rejected"]``.

A reason is ``"<category>"`` or ``"<category>: <detail>"``; the summary table counts by category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MISSING = "missing file"
EMPTY = "empty file"
UNDECODABLE = "undecodable"
TRUNCATED = "truncated"
NO_VIDEO = "no video stream"
UNKNOWN_LABEL = "unknown label"
MALFORMED = "malformed entry"
REENCODE_FAILED = "re-encode failed"
NOT_TAKEN = "not taken by the target decoder"  # with --reject-unsupported


class Rejected(Exception):
    """Raised by a source's ``prepare`` (see :class:`shard_tools.sources.SourceRecord`) when the
    source cannot be packed; the message is the reason."""


@dataclass(frozen=True)
class Rejection:
    """One source that was not packed: its path (as the dataset names it) and the reason."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def reason(category: str, detail: str | None = None) -> str:
    return category if not detail else f"{category}: {detail}"


def category_of(reason_text: str) -> str:
    """The category of a reason: the text before the first ``": "``."""
    return reason_text.split(": ", 1)[0]


def count_by_category(rejected: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in rejected:
        cat = category_of(item["reason"])
        counts[cat] = counts.get(cat, 0) + 1
    return dict(sorted(counts.items()))
