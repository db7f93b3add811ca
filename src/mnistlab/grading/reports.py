"""A notebook's report for people: the table `mnistlab check` prints, and the feedback page a student reads.

The HTML pages are the project's self-contained documents (`exercises.report.blocks`: inline CSS, nothing
fetched).
"""

from __future__ import annotations

from typing import Any

from mnistlab.grading import QUESTIONS, TITLES

MARK = {"ok": "ok", "mismatch": "MISMATCH", "missing": "MISSING", "review": "review", "refused": "REFUSED"}


def short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The notebook-wide findings, one line each: ran, order, errors, weights."""
    ran = "every code cell has an execution count" if report["executed"] else "NO: some code cells never ran"
    lines = [f"ran: {ran}",
             f"in order: {'yes' if report['in_order'] else 'NO: execution counts go down somewhere'}"]
    errors = report["errors"]
    lines.append("errors: " + (", ".join(f"cell {e['cell']} {e['ename']}" for e in errors) if errors else "none"))
    w = report["weights"]
    if w is None:
        lines.append("weights: none handed in")
    else:
        score = f"{w['test_acc']:.2f}% on the 10,000 test images" if w["test_acc"] is not None else "not scored"
        lines.append(f"weights: {MARK.get(w['status'], w['status'])}: {w['file']}: {score}")
        lines += [f"  {e}" for e in w.get("evidence", [])]
    if report.get("problem"):
        lines.insert(0, f"problem: {report['problem']}")
    return lines


def print_table(report: dict[str, Any]) -> None:
    """The human output of `mnistlab check`: one row per question, then the notebook-wide lines."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    table = Table(title=report["notebook"], show_lines=False)
    for column in ("question", "status", "answer", "evidence"):
        table.add_column(column, overflow="fold")
    for q in QUESTIONS:
        r = report["questions"][q]
        table.add_row(f"{q} {TITLES[q]}", MARK[r["status"]], short(r["answer"], 50),
                      "\n".join(short(e, 110) for e in r["evidence"][:2]))
    console.print(table)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print(f"status: {report['status']}", markup=False, highlight=False)


def feedback_sections(student: str, report: dict[str, Any], points: dict[str, Any] | None = None) -> list:
    """The feedback page's sections (`exercises.report.blocks`): what was checked and the evidence."""
    intro = ("These are the checks mnistlab ran on your notebook without running it: every answer compared with "
             "what your own code says and what your cells printed. `review` means a person reads that answer.")
    rows = []
    for q in QUESTIONS:
        r = report["questions"][q]
        row = [f"{q} {TITLES[q]}", r["status"], short(r["answer"], 200), " / ".join(r["evidence"][:3])]
        if points is not None:
            row.append("" if points.get(q) is None else f"{points[q]:g}")
        rows.append(row)
    headers = ["question", "status", "your answer", "checked against"] + (["points"] if points is not None else [])
    return [("Your notebook", [("p", intro), ("list", summary_lines(report))]),
            ("Each question", [("table", headers, rows)])]
