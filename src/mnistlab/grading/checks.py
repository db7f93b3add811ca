"""Each question of the lab checked against the notebook's own evidence, and the whole notebook's report.

A question gets a status with its evidence (the cells and the code or printed lines it was checked against):
`ok`, `mismatch` (the answer names one value, the notebook another, and both are said), `missing`, or
`review` (free text, or nothing in the notebook to check against: for a person to read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.grading import QUESTIONS
from mnistlab.grading.answers import Answer, find_answers
from mnistlab.grading.evidence import CodeFacts, OutputFacts, Printed, Run, agrees, read_code, read_outputs
from mnistlab.grading.read import Notebook, read_notebook

WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
         "ten": 10}
INTEGER = re.compile(r"(?<![\w.,])(\d+)(?![\w]|[.,]\d)|\b(" + "|".join(WORDS) + r")\b", re.I)
PERCENT = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d+)?)\s*%|(?<![\w.])(\d{1,3}\.\d+)(?![\w.])")
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:e-?\d+)?|10\s*\^\s*-?\d+)(?![\w])", re.I)
COUNTED = re.compile(r"(\d+|" + "|".join(WORDS) + r")\s+(?:[\w-]+\s+){0,3}?(?:layers?|modules?)\b", re.I)
TYPE_WORDS = {"Conv": r"conv", "Linear": r"linear|dense|fully[- ]connected|\bfc\b", "BatchNorm": r"batch ?norm",
              "LSTM": r"lstm", "GRU": r"gru", "Embedding": r"embedding", "LayerNorm": r"layer ?norm"}


@dataclass
class Result:
    status: str
    answer: str | None = None
    found: Any = None
    evidence: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {"status": self.status, "answer": self.answer, "found": self.found, "evidence": self.evidence}


def _int(text: str) -> int | None:
    m = INTEGER.search(text)
    if not m:
        return None
    return int(m.group(1)) if m.group(1) else WORDS[m.group(2).lower()]


def _percentages(text: str) -> list[str]:
    """The accuracies a text quotes: numbers with a percent sign, and bare decimals from 10 to 100 (a loss or a
    learning rate is below 10)."""
    found = []
    for m in PERCENT.finditer(text):
        number = m.group(1) or m.group(2)
        if float(number) <= 100 and (m.group(1) or float(number) >= 10):
            found.append(number)
    return found


def _number(text: str) -> float:
    text = text.replace(" ", "")
    if "^" in text:
        base, exp = text.split("^")
        return float(base) ** float(exp)
    return float(text)


def _run_line(run: Run) -> str:
    return "; ".join(f"{e.line}" for e in run.epochs[:8])


def _missing(a: Answer | None) -> Result | None:
    return Result("missing", evidence=["no answer found in the notebook's text cells or answer outputs"]) \
        if a is None else None


def check_batch_size(a: Answer | None, code: CodeFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    found = code.batch_size
    said = _int(a.text)
    if found is None or found.value is None:
        return Result("review", a.text, None, ["no DataLoader batch_size or BATCH_SIZE constant found in the code"])
    cite = found.cite()
    if said is None:
        return Result("mismatch", a.text, found.value, [f"the answer states no number, the code uses {found.value}",
                                                        cite])
    if said != found.value:
        return Result("mismatch", a.text, found.value, [f"the answer says {said}, the code uses {found.value}", cite])
    return Result("ok", a.text, found.value, [cite])


def check_epochs(a: Answer | None, code: CodeFacts, out: OutputFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    said = _int(a.text)
    first = out.runs[0] if out.runs else None
    printed = len(first.epochs) if first else None
    coded = code.epochs.value if code.epochs else None
    evidence = [code.epochs.cite()] if code.epochs else ["no epochs setting found in the code"]
    if first:
        evidence.append(f"cell {first.cell} printed {printed} epochs: {_run_line(first)}")
    if coded is None and printed is None:
        return Result("review", a.text, None, evidence)
    if said is None:
        return Result("mismatch", a.text, coded if coded is not None else printed,
                      ["the answer states no number"] + evidence)
    wrong = []
    if coded is not None and said != coded:
        wrong.append(f"the code sets {coded}")
    if printed is not None and said != printed:
        wrong.append(f"cell {first.cell} printed {printed} epochs")
    if wrong:
        return Result("mismatch", a.text, coded if coded is not None else printed,
                      [f"the answer says {said}, " + " and ".join(wrong)] + evidence)
    return Result("ok", a.text, coded if coded is not None else printed, evidence)


def _network_summary(code: CodeFacts) -> tuple[dict[str, int], str]:
    net = code.network
    assert net is not None
    weighted = net.weighted
    counts = {"layers with weights": len(weighted), "modules in __init__": len(net.modules)}
    if net.forward:
        counts["steps in forward()"] = len(net.forward)
    text = (f"cell {net.cell}: class {net.name}: {len(weighted)} layers with weights "
            f"({', '.join(f'{m.name} {m.type}' for m in weighted)}), {len(net.modules)} modules in __init__; "
            f"forward(): {' -> '.join(net.forward) or '?'}")
    return counts, text


def check_layers(a: Answer | None, code: CodeFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    if code.network is None:
        return Result("review", a.text, None, ["no nn.Module subclass with layers found in the code"])
    counts, summary = _network_summary(code)
    stated = [int(m.group(1)) if m.group(1).isdigit() else WORDS[m.group(1).lower()] for m in COUNTED.finditer(a.text)]
    if not stated and (n := _int(a.text)) is not None:
        stated = [n]
    found = counts["layers with weights"]
    if not stated:
        return Result("mismatch", a.text, found, ["the answer states no count of layers", summary])
    accepted = set(counts.values())
    wrong = [n for n in stated if n not in accepted]
    if wrong:
        described = ", ".join(f"{v} {k}" for k, v in counts.items())
        return Result("mismatch", a.text, found, [f"the answer says {wrong[0]}, the code has {described}", summary])
    return Result("ok", a.text, found, [summary])


def check_layer_details(a: Answer | None, code: CodeFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    if code.network is None:
        return Result("review", a.text, None, ["no nn.Module subclass with layers found in the code"])
    _, summary = _network_summary(code)
    layers = [f"{m.name}: `{m.code}`" for m in code.network.weighted]
    evidence = [summary] + [f"cell {code.network.cell}, code: {line}" for line in layers]
    text = a.text.lower()
    for m in code.network.weighted:
        kernel = m.kwargs.get("kernel_size", m.args[2] if len(m.args) > 2 else None)
        if m.type.startswith("Conv") and isinstance(kernel, int):
            said = re.findall(r"(\d+)\s*[x×*]\s*\d+\s*(?:kernel|filter)|(?:kernel|filter)[\w ]{0,12}?(\d+)\s*[x×*]",
                              text)
            sizes = {int(x or y) for x, y in said}
            if sizes and kernel not in sizes:
                return Result("mismatch", a.text, [x.type for x in code.network.weighted],
                              [f"the answer says a {min(sizes)}x{min(sizes)} filter, {m.name} has {kernel}x{kernel}"]
                              + evidence)
    unnamed = [m.name for m in code.network.weighted
               if not re.search(next((w for t, w in TYPE_WORDS.items() if m.type.startswith(t)), m.type.lower()),
                                text)]
    status = "ok" if not unnamed else "review"
    if unnamed:
        evidence.insert(0, f"the answer does not name the type of {', '.join(unnamed)}")
    return Result(status, a.text, [m.type for m in code.network.weighted], evidence)


def check_optimizer(a: Answer | None, code: CodeFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    if not code.optimizers:
        return Result("review", a.text, None, ["no torch.optim optimizer found in the code"])
    opt = code.optimizers[0]
    name, lr = opt.value["name"], opt.value["lr"]
    found = {"name": name, "lr": lr}
    named = sorted({n for n in re.findall(r"[a-z]+", a.text.lower())} & {o.lower() for o in _OPTIMIZER_NAMES},
                   key=len, reverse=True)
    problems = []
    if name.lower() not in named:
        problems.append(f"the answer says {named[0] if named else 'no optimizer'}, the code uses {name}")
    if lr is not None:
        numbers = [_number(m.group(1)) for m in NUMBER.finditer(a.text)]
        if not any(abs(x - lr) <= 1e-12 + 1e-9 * abs(lr) for x in numbers):
            stated = re.search(r"(?:lr|learning[ _]rate)\W{0,4}(\d[\d.e^ -]*)", a.text, re.I)
            said = stated.group(1).strip() if stated else "no learning rate"
            problems.append(f"the answer says {said}, the code's learning rate is {lr:g}")
    if problems:
        return Result("mismatch", a.text, found, problems + [opt.cite()])
    return Result("ok", a.text, found, [opt.cite()])


def check_free_text(a: Answer | None, out: OutputFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    evidence = [f"cell {run.cell} printed: {_run_line(run)}" for run in out.runs[:1]]
    return Result("review", a.text, None, evidence or ["nothing printed per epoch"])


def _epoch_of(text: str, number: str) -> tuple[int | None, str | None]:
    """The epoch named on the answer's line that quotes `number`, and the split named just before it."""
    for line in text.splitlines():
        if number in line and (m := re.search(r"\bepoch\s*(\d+)", line, re.I)):
            before = line[: line.index(number)].lower().split()
            word = next((w for w in reversed(before) if w.strip(":,(") in SPLIT_WORDS), None)
            return int(m.group(1)), SPLIT_WORDS.get(word.strip(":,(")) if word else None
    return None, None


SPLIT_WORDS = {"train": "train", "training": "train", "validation": "val", "val": "val", "test": "test"}


def check_accuracy_per_epoch(a: Answer | None, out: OutputFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    if not out.runs:
        return Result("review", a.text, None, ["no accuracy printed per epoch to check against"])
    run = out.runs[0]
    printed = [p for e in run.epochs for p in e.acc.values()]
    found = [{"epoch": e.epoch, **{k: p.value for k, p in e.acc.items()}} for e in run.epochs]
    cite = f"cell {run.cell} printed: {_run_line(run)}"
    claimed = _percentages(a.text)
    if not claimed:
        return Result("mismatch", a.text, found, ["the answer quotes no accuracy", cite])
    offset = run.epochs[0].epoch - 1  # a run printed from epoch 0 is answered from epoch 1
    by_position = len(claimed) == len(run.epochs)  # one number per epoch, in order
    for i, number in enumerate(claimed):
        if any(agrees(number, p.text) for p in printed):
            continue
        epoch, split = _epoch_of(a.text, number)
        row = next((e for e in run.epochs if epoch is not None and e.epoch == epoch + offset), None)
        if row is None and by_position:
            row = run.epochs[i]
            split = max(row.acc, key=lambda k: sum(k in e.acc and agrees(c, e.acc[k].text)
                                                   for c, e in zip(claimed, run.epochs, strict=True)))
        if row is not None:
            values = row.acc[split].text if split in row.acc else ", ".join(p.text for p in row.acc.values())
            why = f"the answer says {number}, epoch {row.epoch} printed {values}"
        else:
            near = min(printed, key=lambda p: abs(p.value - float(number)))
            epoch_of = next(e.epoch for e in run.epochs if near in e.acc.values())
            why = f"the answer says {number}, epoch {epoch_of} printed {near.text} (the nearest)"
        return Result("mismatch", a.text, found, [why, cite])
    return Result("ok", a.text, found, [cite])


def _printed_numbers(nb: Notebook) -> list[Printed]:
    return [Printed(c.number, line.strip(), m.group(1) or m.group(2)) for c in nb.code()
            for line in c.text.splitlines()
            for m in re.finditer(r"(?<![\w.])(\d{1,3}\.\d+)|(?<![\w.])(\d{1,3})\s*%", line)]


def _percentages_printed(a: Answer, nb: Notebook) -> str | None:
    """None when every percentage the answer quotes was printed by some cell, else the first one that was not."""
    printed = _printed_numbers(nb)
    for number in _percentages(a.text):
        if not any(agrees(number, p.text) for p in printed):
            return number
    return None


def check_exercise2(a: Answer | None, nb: Notebook) -> Result:
    if (r := _missing(a)) is not None:
        return r
    chosen = a.text[a.text.lower().find("chosen"):] if "chosen" in a.text.lower() else a.text
    lr = re.search(r"(?:lr|learning[ _]rate)\W{0,4}(\d[\d.]*(?:e-?\d+)?)", chosen, re.I)
    epochs = re.search(r"(\d+)\s+epochs?", chosen, re.I)
    test = re.search(r"test[^%\d]{0,30}?(\d{1,3}\.\d+)", a.text, re.I)
    found = {"lr": float(lr.group(1)) if lr else None, "epochs": int(epochs.group(1)) if epochs else None,
             "test_acc": float(test.group(1)) if test else None}
    unprinted = _percentages_printed(a, nb)
    if unprinted is not None:
        return Result("mismatch", a.text, found, [f"the answer says {unprinted}, which no cell printed"])
    if not _percentages(a.text):
        return Result("review", a.text, found, ["the answer quotes no accuracy to check"])
    return Result("ok", a.text, found, ["every accuracy the answer quotes was printed by a cell"])


def check_exercise3(a: Answer | None, nb: Notebook, code: CodeFacts, out: OutputFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    sgd = next((o for o in code.optimizers if o.value["name"] == "SGD"), None)
    if sgd is None:
        return Result("mismatch", a.text, None, ["the answer is there, but no torch.optim.SGD in the code"])
    runs = [r for r in out.runs if r.cell >= sgd.cell]
    evidence = [sgd.cite()] + [f"cell {r.cell} printed: {_run_line(r)}" for r in runs[:2]]
    found = {"lr": sgd.value["lr"], "epochs": len(runs[0].epochs) if runs else 0}
    if not runs:
        return Result("mismatch", a.text, found, ["no epochs printed by or after the SGD cell"] + evidence)
    unprinted = _percentages_printed(a, nb)
    if unprinted is not None:
        return Result("mismatch", a.text, found, [f"the answer says {unprinted}, which no cell printed"] + evidence)
    return Result("ok", a.text, found, evidence)


def check_exercise4(a: Answer | None, nb: Notebook, code: CodeFacts) -> Result:
    if (r := _missing(a)) is not None:
        return r
    problems, evidence = [], []
    if code.saves:
        evidence.append(code.saves[0].cite())
    else:
        problems.append("no torch.save in the code")
    if code.loads:
        load = next((f for f in code.loads if "load(" in f.code.split("load_state_dict")[-1]), code.loads[0])
        evidence.append(load.cite())
        after = [c for c in nb.code() if c.number >= load.cell and (c.text.strip() or c.images)]
        if after:
            shown = after[0].text.strip().splitlines()[-1] if after[0].text.strip() else "an image"
            evidence.append(f"cell {after[0].number} printed: {shown}")
        else:
            problems.append("no output from classifying samples after the model was loaded")
    else:
        problems.append("no torch.load or load_state_dict in the code")
    found = {"save": bool(code.saves), "load": bool(code.loads)}
    return Result("mismatch" if problems else "ok", a.text, found, problems + evidence)


_OPTIMIZER_NAMES = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "LBFGS")


def check_questions(nb: Notebook, code: CodeFacts, out: OutputFacts) -> dict[str, Result]:
    answers = find_answers(nb)
    a = answers.get
    return {
        "1.1": check_batch_size(a("1.1"), code),
        "1.2": check_epochs(a("1.2"), code, out),
        "1.3": check_layers(a("1.3"), code),
        "1.4": check_layer_details(a("1.4"), code),
        "1.5": check_optimizer(a("1.5"), code),
        "1.6": check_free_text(a("1.6"), out),
        "1.7": check_accuracy_per_epoch(a("1.7"), out),
        "2": check_exercise2(a("2"), nb),
        "3": check_exercise3(a("3"), nb, code, out),
        "4": check_exercise4(a("4"), nb, code),
    }


def claimed_test_accuracies(nb: Notebook, out: OutputFacts, answers: dict[str, Result]) -> list[Printed]:
    """Every test accuracy the notebook reports: printed (per epoch and on its own lines) and in the answers."""
    claimed = list(out.test_accuracies())
    for q in QUESTIONS:
        text = answers[q].answer or ""
        for line in text.splitlines():
            for m in re.finditer(r"\btest\b[^%\d\n]{0,30}?(\d{1,3}\.\d+)", line, re.I):
                claimed.append(Printed(0, line.strip(), m.group(1)))
    return claimed


@dataclass
class Checked:
    """A notebook's report (the `mnistlab check --json` object) with what it was read from."""

    report: dict[str, Any]
    notebook: Notebook
    outputs: OutputFacts

    @property
    def exercise1_test_acc(self) -> float | None:
        """Exercise 1's final test accuracy as printed: the first run's last epoch, else a test line."""
        runs = [r for r in self.outputs.runs[:1] if "test" in r.epochs[-1].acc]
        if runs:
            return runs[0].epochs[-1].acc["test"].value
        return self.outputs.test_lines[0].value if self.outputs.test_lines else None


def examine(path: str | Path, weights: str | Path | None = None, test_set: Any = None,
            shared_folder: bool = False) -> Checked:
    """Check the notebook at `path`. `weights`: a weight file, else the ones beside the notebook (in a
    `shared_folder` of several students' notebooks, only those named after it); `test_set`: a
    `weights.TestSet` already read (else read here when needed). ConfigError when it cannot be read."""
    nb = read_notebook(path)
    code, out = read_code(nb), read_outputs(nb)
    cells = nb.code()
    executed = bool(cells) and all(c.execution_count is not None for c in cells)
    counts = [c.execution_count for c in cells if c.execution_count is not None]
    in_order = all(b > a for a, b in zip(counts, counts[1:], strict=False))
    errors = [{"cell": c.number, "ename": e} for c in cells for e in c.errors]
    results = check_questions(nb, code, out)
    from mnistlab.grading.weights import check_weights

    w = check_weights(nb, code, claimed_test_accuracies(nb, out, results), weights, test_set, shared_folder)
    # Refused weights are said, not counted: the lab itself asks for the entire model, which is refused unread.
    findings = (not executed or not in_order or errors or (w is not None and w["status"] == "mismatch")
                or any(r.status in ("mismatch", "missing") for r in results.values()))
    report = {"notebook": str(path), "executed": executed, "in_order": in_order, "errors": errors,
              "questions": {q: results[q].json() for q in QUESTIONS}, "weights": w,
              "status": "findings" if findings else "ok"}
    return Checked(report, nb, out)


def check_notebook(path: str | Path, weights: str | Path | None = None, test_set: Any = None,
                   shared_folder: bool = False) -> dict[str, Any]:
    """The report of one notebook (the `mnistlab check --json` object); see `examine`."""
    return examine(path, weights, test_set, shared_folder).report
