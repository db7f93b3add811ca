"""The lab's report: report.md and report.html (one self-contained file)."""

from __future__ import annotations

from pathlib import Path

from mnistlab.lab.report.blocks import document_html, section_md
from mnistlab.lab.report.sections import sections

TITLE = "Neural Networks Part 2: MNIST lab answers"


def write_report(r) -> dict[str, Path]:
    """report.md and report.html in the lab directory."""
    from mnistlab.files.runs import atomic_write

    secs = sections(r)
    base = r.run_dir
    md = f"# {TITLE}\n\n" + "\n".join(section_md(s, base) for s in secs)
    return {"md": atomic_write(base / "report.md", md),
            "html": atomic_write(base / "report.html", document_html(TITLE, secs))}
