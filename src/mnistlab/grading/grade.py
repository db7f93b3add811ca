"""A class graded: submissions in, one report per student, duplicates flagged, proposed points out.

    grade_class("submissions.zip", "grades")                 # everything: shards/1-of-1.json, then the merge
    grade_class("submissions/", "grades", shard=(2, 8))      # one eighth of the class into grades/shards/
    merge("grades")                                          # every shard present -> grades.csv, class.html, ...

A bad submission (an unreadable file, a zip member outside its folder, a crash) becomes that student's status;
every other student is graded.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.files.outdir import claim_dir, scoped

SHARDS = "shards"
ANSWERS_MIN = 80  # characters of answer text before identical answers count as a duplicate: "32" and "5" coincide


@dataclass
class Submission:
    student: str
    notebook: Path | None
    shared_folder: bool = False  # several students' notebooks in one folder: weights must carry the name
    problem: str | None = None  # why it cannot be graded (its status says so)
    folder: Path | None = None  # the student's own folder (a folder of folders)


# ------------------------------------------------------------------ submissions in
def _notebooks(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file()]
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts), "mnist" not in p.name.lower(), str(p)))


def from_folder(root: Path) -> list[Submission]:
    """A folder of .ipynb files (the student is the file's stem) and/or of folders (the folder's name)."""
    subs = [Submission(p.stem, p, shared_folder=True) for p in sorted(root.glob("*.ipynb")) if p.is_file()]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        found = _notebooks(folder)
        subs.append(Submission(folder.name, found[0] if found else None,
                               problem=None if found else "no .ipynb in the folder", folder=folder))
    return subs


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or bool(re.match(r"^[A-Za-z]:", name))


def _student_of(name: str) -> str:
    """Whose a refused member is: the folder it names before leaving ("a/b/../../x" -> "b"), else its folder,
    else its file's stem."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
    before = parts[: parts.index("..")] if ".." in parts else parts[:-1]
    return before[-1] if before else (parts[-2] if len(parts) > 1 and parts[-2] != ".." else
                                      PurePosixPath(parts[-1]).stem if parts else name)


def from_zip(archive: Path, into: Path) -> list[Submission]:
    """An LMS export: extracted into `into`; a member whose path leaves the archive's folder (absolute, `..`)
    or is a link is never written, and its student's status says so."""
    refused: dict[str, str] = {}
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                mode = info.external_attr >> 16
                if _unsafe(info.filename) or (mode & 0o170000) == 0o120000:
                    refused.setdefault(_student_of(info.filename),
                                       f"refused: the zip member {info.filename!r} points outside its folder")
                    continue
                target = into / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"{archive}: not a readable zip ({e})") from None
    root = _class_root(into)
    subs = [s for s in from_folder(root) if s.student not in refused]
    return sorted(subs + [Submission(s, None, problem=why) for s, why in refused.items()], key=lambda s: s.student)


def _class_root(root: Path) -> Path:
    """The folder holding the class inside an extracted zip: descend through one folder wrapping it all (one
    that holds folders or several notebooks; a lone student's folder is that student)."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(("__", "."))]
        if any(p.suffix == ".ipynb" for p in entries) or len(entries) != 1 or not entries[0].is_dir():
            return root
        inner = [p for p in entries[0].iterdir() if not p.name.startswith(("__", "."))]
        if not (any(p.is_dir() for p in inner) or sum(p.suffix == ".ipynb" for p in inner) > 1):
            return root
        root = entries[0]


def collect(submissions: str | Path, scratch: Path) -> list[Submission]:
    path = Path(submissions)
    if path.is_file() and zipfile.is_zipfile(path):
        return from_zip(path, scratch)
    if path.is_dir():
        return from_folder(path)
    raise ConfigError(f"{path}: not a folder of notebooks or a .zip" if path.exists() else f"{path}: not found")


def in_shard(student: str, shard: tuple[int, int]) -> bool:
    """A stable share: the same student lands in the same shard on every machine and every run."""
    k, n = shard
    return zlib.crc32(student.encode()) % n == k - 1


# ------------------------------------------------------------------ one student
def _normalised_code(source: str) -> str:
    """Code with whitespace, comments and every name normalised: renaming variables does not hide a copy."""
    from mnistlab.grading.evidence import _parse

    tree = _parse(source)
    if tree is None:
        return " ".join(source.split())
    names: dict[str, str] = {}

    def canon(name: str) -> str:
        return names.setdefault(name, f"v{len(names)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = canon(node.id)
        elif isinstance(node, ast.arg):
            node.arg = canon(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            node.name = canon(node.name)
    return ast.dump(tree, annotate_fields=False)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprints(checked: Any) -> dict[str, str | None]:
    """What two copies share: code and outputs, the weights' tensors, the answers' text."""
    cells = checked.notebook.code()
    outputs = " ".join(" ".join(c.text.split()) + " ".join(c.markdown) for c in cells)
    code = "\n".join(_normalised_code(c.source) for c in cells)
    answers = " ".join(" ".join((q["answer"] or "").lower().split()) for q in checked.report["questions"].values())
    w = checked.report["weights"]
    weights = None
    if w and w.get("test_acc") is not None:  # the tensors, not the file's bytes: a re-saved copy is a copy
        from mnistlab.grading.weights import load_lab_weights

        digest = hashlib.sha256()
        for tensor in load_lab_weights(w["file"]).model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        weights = digest.hexdigest()[:16]
    return {"code and outputs": _digest(code + "\0" + outputs) if outputs.strip() else None,
            "weights": weights, "answers": _digest(answers) if len(answers) >= ANSWERS_MIN else None}


def grade_one(sub: Submission, test_set: Any, run: Any = None) -> dict[str, Any]:
    """One student's record: the check report (or the reason there is none) and its fingerprints; with `run`
    (`sandbox.RunOptions`, `--execute`), also its execution, compared with the hand-in."""
    from mnistlab.grading.checks import examine

    record: dict[str, Any] = {"student": sub.student, "notebook": str(sub.notebook) if sub.notebook else None}
    if sub.problem is not None or sub.notebook is None:
        return {**record, "status": "refused" if (sub.problem or "").startswith("refused") else "no notebook",
                "problem": sub.problem, "report": None, "fingerprints": {}, "exercise1_test_acc": None}
    try:
        checked = examine(sub.notebook, None, test_set, sub.shared_folder)
    except MnistlabError as e:
        return {**record, "status": "unreadable", "problem": str(e), "report": None, "fingerprints": {},
                "exercise1_test_acc": None}
    except Exception as e:  # noqa: BLE001 - one student's notebook must never stop the class
        return {**record, "status": "crashed", "problem": f"{type(e).__name__}: {e}", "report": None,
                "fingerprints": {}, "exercise1_test_acc": None}
    record = {**record, "status": checked.report["status"], "problem": None, "report": checked.report,
              "fingerprints": fingerprints(checked), "exercise1_test_acc": checked.exercise1_test_acc}
    if run is not None:
        from mnistlab.grading.reports import file_name
        from mnistlab.grading.sandbox import rerun

        folder = None if sub.shared_folder else sub.folder
        try:
            record["execution"] = ex = rerun(sub.notebook, folder, checked, run, file_name(sub.student))
        except Exception as e:  # noqa: BLE001 - one student's notebook must never stop the class
            record["execution"] = ex = {"status": "failed", "message": f"{type(e).__name__}: {e}"}
        if ex["status"] != "ran":
            record["status"] = f"execution {ex['status']}"
        elif ex.get("settings") or ex.get("band") is False:
            record["status"] = "findings"
    return record


# ------------------------------------------------------------------ the class, in parallel
_TEST_SET: Any = None


_RUN: Any = None


def _init_worker(data_dir: str | None, threads: int, run: Any) -> None:
    global _TEST_SET, _RUN
    import torch

    from mnistlab.grading.weights import TestSet
    from mnistlab.training.device import flush_denormals_everywhere

    torch.set_num_threads(threads)
    flush_denormals_everywhere()
    _TEST_SET = TestSet.load(data_dir)
    _RUN = run


def _grade_in_worker(sub: Submission) -> dict[str, Any]:
    return grade_one(sub, _TEST_SET, _RUN)


def grade_all(subs: list[Submission], jobs: int = 1, data_dir: str | Path | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None, run: Any = None) -> list[dict[str, Any]]:
    """Every submission graded, in `jobs` processes (each reads the test set once); `run`: `--execute`'s
    `sandbox.RunOptions`."""
    records = []
    if jobs <= 1 or len(subs) <= 1:
        from mnistlab.grading.weights import TestSet

        test_set = TestSet.load(data_dir)
        for sub in subs:
            records.append(grade_one(sub, test_set, run))
            if progress:
                progress(records[-1])
        return records
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(str(data_dir) if data_dir else None, threads, run)) as pool:
        for record in pool.map(_grade_in_worker, subs):
            records.append(record)
            if progress:
                progress(record)
    return records


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard wants K/N with 1 <= K <= N, e.g. 3/8; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def grade_shard(submissions: str | Path, out: str | Path, shard: tuple[int, int] = (1, 1), jobs: int = 1,
                data_dir: str | Path | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
                run: Any = None) -> Path:
    """Grade shard K of N of the class into `out`/shards/K-of-N.json (the merge's input); returns that file."""
    from mnistlab.files.runs import write_json

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="mnistlab-grade-") as scratch:
        subs = [s for s in collect(submissions, Path(scratch)) if in_shard(s.student, shard)]
        records = grade_all(subs, jobs, data_dir, progress, run)
        # what was read inside the scratch copy of a zip is named as it was handed in
        records = json.loads(json.dumps(records).replace(scratch, "<zip>"))
    k, n = shard
    return write_json(out / SHARDS / f"{k}-of-{n}.json", {"shard": [k, n], "submissions": str(submissions),
                                                          "students": records})


def read_shards(out: str | Path) -> list[dict[str, Any]]:
    """Every student of the shards in `out`/shards; ConfigError when a shard of the set is missing."""
    from mnistlab.files.runs import read_json

    files = sorted((Path(out) / SHARDS).glob("*-of-*.json"))
    if not files:
        raise ConfigError(f"{out}: no shards to merge (grade some first: mnistlab grade SUBMISSIONS --out {out})")
    shards = [read_json(f) for f in files]
    sizes = {s["shard"][1] for s in shards}
    if len(sizes) != 1:
        raise ConfigError(f"{out}/{SHARDS}: shards of different splits ({', '.join(map(str, sorted(sizes)))} "
                          "parts); remove the old ones")
    n = sizes.pop()
    missing = sorted(set(range(1, n + 1)) - {s["shard"][0] for s in shards})
    if missing:
        raise ConfigError(f"{out}/{SHARDS}: shard {', '.join(f'{k}/{n}' for k in missing)} not graded yet")
    return sorted((r for s in shards for r in s["students"]), key=lambda r: r["student"])


def duplicates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of students sharing a fingerprint, each with what they share. No penalty: for a person."""
    pairs: dict[tuple[str, str], list[str]] = {}
    seen: dict[tuple[str, str], list[str]] = {}
    for r in records:
        for kind, value in (r.get("fingerprints") or {}).items():
            if value is None:
                continue
            for other in seen.get((kind, value), []):
                pairs.setdefault((other, r["student"]), []).append(kind)
            seen.setdefault((kind, value), []).append(r["student"])
    return [{"a": a, "b": b, "shared": kinds} for (a, b), kinds in sorted(pairs.items())]


# ------------------------------------------------------------------ points and the merge
def read_rubric(path: str | Path | None) -> dict[str, float]:
    """Points per question from a TOML file (`"1.1" = 1` ... at the top or under `[points]`); the default is the
    lab's 10 items, 1 point each. A question the file leaves out keeps its default point."""
    from mnistlab.grading import QUESTIONS
    from mnistlab.presets import toml_parser

    rubric = {q: 1.0 for q in QUESTIONS}
    if path is None:
        return rubric
    path = Path(path)
    try:
        data = toml_parser().loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--rubric {path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"--rubric {path}: not a readable TOML file ({e})") from None
    data = data.get("points", data)
    for key, value in data.items():
        if key not in rubric:
            raise ConfigError(f"--rubric {path}: unknown question {key!r}; the questions are {', '.join(QUESTIONS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"--rubric {path}: {key} = {value!r} is not a number of points >= 0")
        rubric[key] = float(value)
    return rubric


def propose(record: dict[str, Any], rubric: dict[str, float]) -> dict[str, float | None]:
    """Proposed points per question: `ok` full points, `mismatch` and `missing` 0, `review` None (the TA's)."""
    report = record.get("report")
    if report is None:
        return {q: 0.0 for q in rubric}
    table = {"ok": lambda q: rubric[q], "mismatch": lambda q: 0.0, "missing": lambda q: 0.0}
    return {q: table[r["status"]](q) if r["status"] in table else None for q, r in report["questions"].items()}


def hold(out: str | Path) -> None:
    """Take `out` for this process until the calling `scoped` function returns: one writer of a class's grades
    at a time (a second is refused, naming the first). What `out` already holds stays: its grades are made
    again from its shards. Shards themselves take no lock: an array job's tasks write their own files."""
    Path(out).mkdir(parents=True, exist_ok=True)
    claim_dir(out, "grades", kind="grades", resume=True)


@scoped
def merge(out: str | Path, rubric_path: str | Path | None = None) -> dict[str, Any]:
    """The class from every shard in `out`: grades.csv, grades.json, feedback/<student>.html, class.html."""
    from mnistlab.grading.reports import write_class

    hold(out)
    records = read_shards(out)
    rubric = read_rubric(rubric_path)
    for r in records:
        r["points"] = propose(r, rubric)
    return write_class(Path(out), records, duplicates(records), rubric)


@scoped
def grade_class(submissions: str | Path, out: str | Path, jobs: int = 1, rubric: str | Path | None = None,
                data_dir: str | Path | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
                run: Any = None) -> dict[str, Any]:
    """The whole class in one go: its one shard, then the merge. Earlier shards in `out` are replaced; `out`
    is held by this process throughout (`hold`)."""
    read_rubric(rubric)  # a bad rubric stops before any grading
    hold(out)
    for old in (Path(out) / SHARDS).glob("*-of-*.json"):
        old.unlink()
    grade_shard(submissions, out, (1, 1), jobs, data_dir, progress, run)
    return merge(out, rubric)
