"""A notebook's report for people: the table `mnistlab check` prints, and the feedback page a student reads.

The HTML pages are the project's self-contained documents (`lab.report.blocks`: inline CSS, nothing
fetched).
"""

from __future__ import annotations

import re
from pathlib import Path
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
    """The feedback page's sections (`lab.report.blocks`): what was checked and the evidence."""
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


# ------------------------------------------------------------------ a class
def file_name(student: str) -> str:
    """A student's name as a file name: no path separators, no leading dot."""
    return re.sub(r"[^\w.-]+", "_", student).strip("._") or "student"


def _claimed(record: dict[str, Any]) -> float | None:
    w = (record.get("report") or {}).get("weights")
    if w and w.get("claimed"):
        return w["claimed"][0]  # the reported test accuracy nearest the weights' own score
    return record.get("exercise1_test_acc")


def rows(records: list[dict[str, Any]], dups: list[dict[str, Any]], rubric: dict[str, float]) -> list[dict]:
    """grades.csv's rows: one per student."""
    partners: dict[str, list[str]] = {}
    for d in dups:
        partners.setdefault(d["a"], []).append(d["b"])
        partners.setdefault(d["b"], []).append(d["a"])
    out = []
    for r in records:
        report = r.get("report") or {}
        questions = report.get("questions") or {}
        points = r["points"]
        w = report.get("weights") or {}
        row = {"student": r["student"], "status": r["status"]}
        row.update({q: questions[q]["status"] if q in questions else "" for q in QUESTIONS})
        row.update({f"points_{q}": "" if points[q] is None else f"{points[q]:g}" for q in QUESTIONS})
        row["total"] = f"{sum(p for p in points.values() if p is not None):g}"
        row["max_total"] = f"{sum(rubric.values()):g}"
        row["weights_test_acc"] = "" if w.get("test_acc") is None else f"{w['test_acc']:.2f}"
        claimed = _claimed(r)
        row["claimed_test_acc"] = "" if claimed is None else f"{claimed:.2f}"
        row["duplicate_of"] = ";".join(partners.get(r["student"], []))
        row["execution"] = (r.get("execution") or {}).get("status", "")
        row["needs_review"] = str(any(p is None for p in points.values()) or r["status"] not in ("ok", "findings")
                                  or r["student"] in partners or w.get("status") in ("refused", "review")).lower()
        out.append(row)
    return out


def _student_page(record: dict[str, Any]) -> str:
    from mnistlab.lab.report.blocks import document_html

    title = f"Lab feedback: {record['student']}"
    if record.get("report") is None:
        return document_html(title, [("Your submission", [("p", f"It could not be checked: {record['status']}: "
                                                                f"{record.get('problem') or 'no notebook'}.")])])
    sections = feedback_sections(record["student"], record["report"], record["points"])
    if record.get("execution"):
        sections.append(("Executed again", [("list", execution_lines(record["execution"]))]))
    return document_html(title, sections)


def execution_lines(ex: dict[str, Any]) -> list[str]:
    """What `--execute` found, one line each: how it ran, the settings of questions 1-5, the accuracy band."""
    lines = [f"status: {ex['status']}" + (f" ({ex['message']})" if ex.get("message") else "")
             + (f" in {ex['seconds']:g} s" if ex.get("seconds") is not None else "")]
    if ex.get("quick_settings"):
        lines.append("ran with quick settings injected into its parameters cell")
    if ex.get("settings") is not None:
        lines.append("questions 1-5 read the same from the executed copy" if not ex["settings"] else
                     "questions 1-5 differ: " + "; ".join(ex["settings"]))
    if ex.get("band") is not None:
        lines.append(f"Exercise 1's test accuracy {ex['exercise1_test_acc']:.2f}% when executed: "
                     + ("within" if ex["band"] else "outside") + " the band of the hand-in's")
    return lines


def class_sections(records: list[dict[str, Any]], dups: list[dict[str, Any]], table: list[dict],
                   figure: Path | None) -> list:
    """class.html's sections: the class, Exercise 1's accuracies, Exercise 2, every question side by side,
    the duplicates."""
    counts = {s: sum(r["status"] == s for r in records) for s in sorted({r["status"] for r in records})}
    executed = any(t["execution"] for t in table)
    overview = [("p", f"{len(records)} students: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ". Points are "
                 "proposals: `ok` full points, `mismatch` and `missing` 0, `review` blank for you to fill in."),
                ("table", ["student", "status", "total", "weights test acc", "claimed", "duplicate of", "needs review"]
                 + (["execution"] if executed else []),
                 [[t["student"], t["status"], f"{t['total']} / {t['max_total']}", t["weights_test_acc"],
                   t["claimed_test_acc"], t["duplicate_of"], t["needs_review"]] + ([t["execution"]] if executed else [])
                  for t in table])]
    accs = [(r["student"], r["exercise1_test_acc"]) for r in records if r.get("exercise1_test_acc") is not None]
    ex1: list = []
    if accs:
        values = sorted(a for _, a in accs)
        ex1.append(("p", f"{len(values)} notebooks printed a test accuracy for Exercise 1: median "
                         f"{values[len(values) // 2]:.2f}%, lowest {values[0]:.2f}%, highest {values[-1]:.2f}%."))
        if figure is not None:
            ex1.append(("img", figure, "Exercise 1: the class's final test accuracies"))
        ranked = sorted(accs, key=lambda x: x[1])
        ex1.append(("table", ["student", "test accuracy"], [[s, f"{a:.2f}%"] for s, a in ranked]))
    else:
        ex1.append(("p", "No notebook printed a test accuracy for Exercise 1."))
    ex2 = []
    for r in records:
        q = ((r.get("report") or {}).get("questions") or {}).get("2")
        if q and q["status"] != "missing":
            f = q["found"] or {}
            ex2.append([r["student"], "" if f.get("lr") is None else f"{f['lr']:g}",
                        "" if f.get("epochs") is None else str(f["epochs"]),
                        "" if f.get("test_acc") is None else f"{f['test_acc']:.2f}%",
                        "" if r.get("exercise1_test_acc") is None else f"{r['exercise1_test_acc']:.2f}%", q["status"]])
    sections = [("The class", overview), ("Exercise 1: test accuracy", ex1),
                ("Exercise 2: chosen settings and their results",
                 [("table", ["student", "learning rate", "epochs", "test accuracy", "Exercise 1's", "status"], ex2)]
                 if ex2 else [("p", "No Exercise 2 answers.")])]
    for q in QUESTIONS:
        answers = []
        for r in records:
            item = ((r.get("report") or {}).get("questions") or {}).get(q)
            if item is not None:
                answers.append([r["student"], item["status"], short(item["answer"], 600) or "-",
                                short(item["evidence"][0] if item["evidence"] else "", 200)])
        sections.append((f"{q} {TITLES[q]}", [("table", ["student", "status", "answer", "evidence"], answers)]))
    sections.append(("Duplicates", [("table", ["student", "student", "identical"],
                                     [[d["a"], d["b"], ", ".join(d["shared"])] for d in dups])] if dups else
                     [("p", "No two submissions share their code and outputs, weights or answers.")]))
    return sections


def write_class(out: Path, records: list[dict[str, Any]], dups: list[dict[str, Any]],
                rubric: dict[str, float]) -> dict[str, Any]:
    """grades.csv, grades.json, feedback/<student>.html and class.html in `out`, each written atomically."""
    from mnistlab.files.runs import atomic_write, write_json
    from mnistlab.lab.report.blocks import document_html
    from mnistlab.plots import histogram_plot
    from mnistlab.tables import csv_text

    table = rows(records, dups, rubric)
    files: dict[str, Any] = {"csv": atomic_write(out / "grades.csv", csv_text(table))}
    files["json"] = write_json(out / "grades.json", {"rubric": rubric, "students": [
        {**t, "report": r.get("report"), "problem": r.get("problem"), "execution": r.get("execution")}
        for t, r in zip(table, records, strict=True)],
        "duplicates": dups})
    for r in records:
        atomic_write(out / "feedback" / f"{file_name(r['student'])}.html", _student_page(r))
    accs = [r["exercise1_test_acc"] for r in records if r.get("exercise1_test_acc") is not None]
    figure = histogram_plot(accs, out / "class_test_acc.png", "Exercise 1 test accuracy (%)") if accs else None
    files["html"] = atomic_write(out / "class.html",
                                 document_html("The class's lab notebooks", class_sections(records, dups, table,
                                                                                             figure)))
    files["students"] = len(records)
    files["table"] = table
    return files
