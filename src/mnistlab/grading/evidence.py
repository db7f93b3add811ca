"""The notebook's own evidence: what its code says (read from the syntax tree, never run) and what its outputs
printed (epochs, accuracies).

Code is read cell by cell with `ast`; IPython magics (`%matplotlib`, `!pip`) are blanked first. A name used
for a setting (`batch_size=BATCH_SIZE`, `lr=learning_rate`) is resolved to the last literal assigned to it at
the top level of a cell above or at the use, which is also what papermill's injected parameters cell sets.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from mnistlab.grading.read import Cell, Notebook

OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "LBFGS",
              "ASGD", "Rprop", "SparseAdam")
WEIGHTED = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
            "LazyLinear", "LazyConv2d", "Bilinear", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Embedding",
            "LSTM", "GRU", "RNN")
EPOCH_NAMES = ("num_epochs", "epochs", "n_epochs", "EPOCHS", "NUM_EPOCHS", "N_EPOCHS", "nb_epochs", "epoch_count")
BATCH_NAMES = ("BATCH_SIZE", "batch_size", "BATCH", "bs")
FUNCTIONAL = {"relu": "ReLU", "softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid",
              "tanh": "Tanh", "flatten": "Flatten", "view": "Flatten", "max_pool2d": "MaxPool2d",
              "dropout": "Dropout", "leaky_relu": "LeakyReLU", "gelu": "GELU"}


@dataclass
class Found:
    """A value read from the code: where, the line it was read from, and the value."""

    cell: int
    code: str
    value: Any = None

    def cite(self) -> str:
        return f"cell {self.cell}, code: `{self.code}`"


@dataclass
class Layer:
    name: str
    type: str
    args: list[Any]
    kwargs: dict[str, Any]
    cell: int
    code: str

    @property
    def weighted(self) -> bool:
        return self.type in WEIGHTED


@dataclass
class Network:
    name: str
    cell: int
    modules: list[Layer]
    forward: list[str]  # the steps of forward(), in order: module names and functional ops (e.g. "F.relu")
    ends_in_softmax: bool

    @property
    def weighted(self) -> list[Layer]:
        return [m for m in self.modules if m.weighted]


@dataclass
class CodeFacts:
    constants: dict[str, list[tuple[int, Any, str]]] = field(default_factory=dict)  # name -> (cell, value, line)
    batch_size: Found | None = None
    epochs: Found | None = None
    network: Network | None = None
    optimizers: list[Found] = field(default_factory=list)  # value: {"name", "lr"}
    saves: list[Found] = field(default_factory=list)
    loads: list[Found] = field(default_factory=list)
    quirk: Found | None = None  # the per-batch accuracy sum divided by the last batch index
    unparsed: list[int] = field(default_factory=list)


def _parse(source: str) -> ast.Module | None:
    lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _segment(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ""
    text = " ".join(text.split())
    return text if len(text) <= 100 else text[:97] + "..."


def _name(node: ast.AST) -> str:
    """`torch.optim.Adam` -> "Adam"; `DataLoader` -> "DataLoader"."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


class _Values:
    """Literal values of names, as the notebook assigned them up to a given cell."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[int, Any, str]]] = {}

    def value(self, node: ast.AST | None, cell: int) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                     bool):
            return node.value
        if isinstance(node, ast.Name):
            earlier = [v for c, v, _ in self.seen.get(node.id, []) if c <= cell]
            return earlier[-1] if earlier else None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = self.value(node.operand, cell)
            return -v if isinstance(v, (int, float)) else None
        if isinstance(node, ast.BinOp):
            a, b = self.value(node.left, cell), self.value(node.right, cell)
            if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
                return None
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                   ast.Div: lambda: a / b if b else None, ast.FloorDiv: lambda: a // b if b else None,
                   ast.Pow: lambda: a ** b if abs(b) < 64 else None}
            fn = ops.get(type(node.op))
            return fn() if fn else None
        return None

    def line(self, name: str, cell: int) -> str | None:
        earlier = [line for c, _, line in self.seen.get(name, []) if c <= cell]
        return earlier[-1] if earlier else None


def _call_arg(call: ast.Call, keyword: str, position: int) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if len(call.args) > position else None


def _network(cls: ast.ClassDef, cell: Cell, values: _Values) -> Network:
    modules: list[Layer] = []
    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        if fn.name == "__init__":
            for node in ast.walk(fn):
                if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                    continue
                target = node.targets[0]
                if not (isinstance(target, ast.Attribute) and _dotted(target.value) == "self"):
                    continue
                calls = [node.value]
                if _name(node.value.func) == "Sequential":
                    calls = [a for a in node.value.args if isinstance(a, ast.Call)]
                for i, call in enumerate(calls):
                    name = target.attr if len(calls) == 1 and calls[0] is node.value else f"{target.attr}.{i}"
                    modules.append(Layer(name, _name(call.func), [values.value(a, cell.number) for a in call.args],
                                         {k.arg: values.value(k.value, cell.number) for k in call.keywords if k.arg},
                                         cell.number, _segment(cell.source, node)))
    forward = _forward_in_order(cls)
    softmax = bool(forward) and (forward[-1].rsplit(".", 1)[-1] == "softmax" or any(
        m.type == "Softmax" and m.name == forward[-1] for m in modules))
    return Network(cls.name, cell.number, modules, forward, softmax)


def _enumerate_indices(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and _name(node.iter.func) == "enumerate"
                and isinstance(node.target, ast.Tuple) and isinstance(node.target.elts[0], ast.Name)):
            names.add(node.target.elts[0].id)
    return names


def read_code(nb: Notebook) -> CodeFacts:
    """Every fact the checks need from the code cells, in notebook order."""
    facts = CodeFacts()
    values = _Values()
    loaders: list[tuple[Found, bool]] = []  # (batch size found, shuffled)
    loops: list[Found] = []  # `for ... in range(N)` loops that call backward()
    for cell in nb.code():
        tree = _parse(cell.source)
        if tree is None:
            facts.unparsed.append(cell.number)
            continue
        for node in tree.body:  # top-level literal assignments: settings
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                value = values.value(node.value, cell.number) if node.value is not None else None
                for t in targets:
                    if isinstance(t, ast.Name) and value is not None:
                        values.seen.setdefault(t.id, []).append((cell.number, value, _segment(cell.source, node)))
        indices = _enumerate_indices(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_name(b) == "Module" for b in node.bases):
                net = _network(node, cell, values)
                if net.modules and facts.network is None:  # the first network defined is the lab's
                    facts.network = net
            elif isinstance(node, ast.Call):
                name = _name(node.func)
                code = _segment(cell.source, node)
                if name == "DataLoader":
                    arg = _call_arg(node, "batch_size", 1)
                    size = values.value(arg, cell.number) if arg is not None else 1
                    shuffle = _call_arg(node, "shuffle", 2)
                    shuffled = isinstance(shuffle, ast.Constant) and shuffle.value is True
                    shown = code
                    if isinstance(arg, ast.Name) and values.line(arg.id, cell.number):
                        shown = f"{code}` with `{values.line(arg.id, cell.number)}"
                    loaders.append((Found(cell.number, shown, size), shuffled))
                elif name in OPTIMIZERS and isinstance(node.func, ast.Attribute | ast.Name):
                    lr_node = _call_arg(node, "lr", 1)
                    lr = values.value(lr_node, cell.number)
                    shown = code
                    if isinstance(lr_node, ast.Name) and values.line(lr_node.id, cell.number):
                        shown = f"{code}` with `{values.line(lr_node.id, cell.number)}"
                    facts.optimizers.append(Found(cell.number, shown, {"name": name, "lr": lr}))
                elif _dotted(node.func) in ("torch.save", "save_file", "safetensors.torch.save_file"):
                    facts.saves.append(Found(cell.number, code))
                elif _dotted(node.func) in ("torch.load", "load_file", "safetensors.torch.load_file") \
                        or name == "load_state_dict":
                    facts.loads.append(Found(cell.number, code))
            elif isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and _name(node.iter.func) == "range":
                if any(isinstance(n, ast.Call) and _name(n.func) == "backward" for n in ast.walk(node)) \
                        and node.iter.args:
                    n = values.value(node.iter.args[-1] if len(node.iter.args) < 3 else None, cell.number)
                    loops.append(Found(cell.number, f"for ... in {_segment(cell.source, node.iter)}", n))
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Name)
                  and node.right.id in indices and "acc" in _segment(cell.source, node.left).lower()
                  and facts.quirk is None):
                facts.quirk = Found(cell.number, _segment(cell.source, node))
    facts.constants = values.seen
    if loaders:
        train = next((f for f, shuffled in loaders if shuffled), loaders[0][0])
        facts.batch_size = train
    else:
        for name in BATCH_NAMES:
            if name in values.seen:
                cell, value, line = values.seen[name][-1]
                facts.batch_size = Found(cell, line, value)
                break
    for name in EPOCH_NAMES:
        if name in values.seen:
            cell, value, line = values.seen[name][-1]
            facts.epochs = Found(cell, line, value)
            break
    else:
        if loops and loops[0].value is not None:
            facts.epochs = loops[0]
    return facts


def _forward_in_order(cls: ast.ClassDef) -> list[str]:
    steps: list[tuple[int, int, str]] = []
    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward"):
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and _dotted(func.value) == "self":
                steps.append((node.end_lineno or 0, node.end_col_offset or 0, func.attr))
            elif _name(func) in FUNCTIONAL:
                steps.append((node.end_lineno or 0, node.end_col_offset or 0, _dotted(func)))
    return [s for _, _, s in sorted(steps)]


# ------------------------------------------------------------------ what the outputs printed
EPOCH = re.compile(r"\bepoch\b\s*[:#=]?\s*(\d+)", re.I)
ACC = re.compile(r"\b(?P<split>train(?:ing)?|val(?:idation)?|test)?[ _]*acc(?:uracy)?\b\s*[:=]?\s*"
                 r"(?P<value>\d+(?:\.\d+)?)\s*%?", re.I)
TEST = re.compile(r"\btest(?:[ _]*acc(?:uracy)?)?\b\s*[:=]?\s*(?P<value>\d+\.\d+)\s*%?", re.I)
SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass
class Printed:
    """A number as printed: its text keeps the printed digits, for comparisons within their rounding."""

    cell: int
    line: str
    text: str

    @property
    def value(self) -> float:
        return float(self.text)


@dataclass
class Epoch:
    cell: int
    run: str  # the words before "epoch" on the line ("adam", "sgd momentum 0.9"; "" when none)
    epoch: int
    line: str
    acc: dict[str, Printed]  # split ("train", "val", "test", "acc") -> the printed number


@dataclass
class Run:
    cell: int
    name: str
    epochs: list[Epoch]


@dataclass
class OutputFacts:
    runs: list[Run] = field(default_factory=list)
    test_lines: list[Printed] = field(default_factory=list)  # test accuracies printed outside the epoch lines

    def test_accuracies(self) -> list[Printed]:
        """Every test accuracy the notebook printed: per epoch, and on its own lines."""
        return [e.acc["test"] for r in self.runs for e in r.epochs if "test" in e.acc] + self.test_lines


def _epoch_line(cell: Cell, line: str) -> Epoch | None:
    m = EPOCH.search(line)
    if not m:
        return None
    acc: dict[str, Printed] = {}
    for a in ACC.finditer(line):
        split = SPLITS.get((a.group("split") or "").lower(), "acc")
        if float(a.group("value")) <= 100 and split not in acc:
            acc[split] = Printed(cell.number, line.strip(), a.group("value"))
    if not acc:
        return None
    run = line[:m.start()].strip(" :|-[]")
    return Epoch(cell.number, run if len(run) <= 40 else "", int(m.group(1)), line.strip(), acc)


def read_outputs(nb: Notebook) -> OutputFacts:
    facts = OutputFacts()
    for cell in nb.code():
        for line in cell.text.splitlines():
            epoch = _epoch_line(cell, line)
            if epoch is not None:
                last = facts.runs[-1] if facts.runs else None
                if (last is None or last.cell != cell.number or last.name != epoch.run
                        or epoch.epoch <= last.epochs[-1].epoch):
                    facts.runs.append(Run(cell.number, epoch.run, []))
                facts.runs[-1].epochs.append(epoch)
                continue
            for m in TEST.finditer(line):
                if float(m.group("value")) <= 100:
                    facts.test_lines.append(Printed(cell.number, line.strip(), m.group("value")))
    return facts


def decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


def agrees(claimed: str, printed: str) -> bool:
    """True when two numbers are equal within the rounding of the less precise one ("98.7" and "98.71")."""
    d = min(decimals(claimed), decimals(printed))
    return abs(float(claimed) - float(printed)) <= 0.5 * 10 ** -d + 1e-9
