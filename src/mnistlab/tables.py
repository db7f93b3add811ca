"""Numbers and tables as every summary prints them: accuracies, differences, Markdown and CSV tables."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any


def pct(x: float) -> str:
    """An accuracy as the report quotes it: two decimals and a percent sign (tests match these exactly)."""
    return f"{x:.2f}%"


def pts(x: float) -> str:
    """A difference of accuracies, in percentage points."""
    return f"{x:+.2f} pt"


def size(n: float) -> str:
    """A byte count for people: "512 B", "4.2 MB", "1.3 GB" (powers of 1000, as df -H says)."""
    for unit in ("B", "kB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
