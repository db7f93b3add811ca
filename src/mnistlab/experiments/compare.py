"""Exercise 3: `compare("notebook", ["adam", "sgd"])` trains every optimizer from the same initial weights and
data order, and writes a side-by-side table (CSV, Markdown, JSON), a figure and a verdict from the numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import ConfigError
from mnistlab.experiments.trial import make_spec, reuse_problem
from mnistlab.files.checkpoints import model_metadata, read_safetensors, save_safetensors
from mnistlab.files.outdir import claim_dir, scoped
from mnistlab.files.runs import atomic_write, read_metrics, write_json, write_metrics
from mnistlab.presets import Config, optimizer_class, read_run_config, resolve
from mnistlab.stats import Difference
from mnistlab.tables import csv_text, md_table, pct
from mnistlab.training.run import build, init_weights, train

# Where the preset's (Adam) learning rate would be wrong for another optimizer: explicit, overridable defaults.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "SGD": {"lr": 0.01, "momentum": 0.9},
    "Adadelta": {"lr": 1.0},
    "Adagrad": {"lr": 0.01},
}
DEFAULT_WHY = {
    "SGD": "plain SGD at Adam's lr 1e-3 learns far more slowly (its step is the raw gradient times lr, with no "
           "per-weight scaling and no momentum; on small runs it barely moves)",
    "Adadelta": "Adadelta is designed for lr 1.0 (pytorch/examples uses it)",
    "Adagrad": "Adagrad's accumulated squared gradients shrink its steps quickly",
}
def save_state(state: dict[str, torch.Tensor], cfg: Config, path: str | Path) -> Path:
    """Initial weights as safetensors (with the usual model metadata), so runs can prove where they started."""
    model = build(cfg, torch.device("cpu"))
    model.load_state_dict(state)
    return save_safetensors(model, path, model_metadata(cfg, {"role": "initial weights"}))


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ---------------------------------------------------------------- compare (Exercise 3)
def parse_optimizers(spec: str | Sequence[str]) -> list[tuple[str, str]]:
    """"adam,sgd,plain-sgd=sgd" -> [(label, optimizer class name)], labels unique."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[tuple[str, str]] = []
    for item in items:
        label, _, name = item.partition("=")
        label = label.strip().lower()
        out.append((label, optimizer_class(name.strip() or label).__name__))
    labels = [label for label, _ in out]
    if len(out) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"compare needs at least two distinct optimizer labels, got {', '.join(labels) or 'none'}")
    return out


def optimizer_config(base: Config, label: str, name: str, opts: dict[str, Any] | None = None,
                     use_defaults: bool = True) -> tuple[Config, list[str]]:
    """`base` trained with optimizer `name`: the preset's arguments for its own optimizer, else the explicit
    OPTIMIZER_DEFAULTS (said in the notes), then the user's `opts`."""
    notes, args = [], {}
    if name != base.optimizer:
        applied = {k: v for k, v in OPTIMIZER_DEFAULTS.get(name, {}).items() if k not in (opts or {})}
        if use_defaults and applied:
            args.update(applied)
            told = ", ".join(f"{k} {v}" for k, v in applied.items())
            notes.append(f"{label}: {DEFAULT_WHY[name]}, so it uses {told} instead of the preset's lr {base.lr:g} "
                         f"(override with --opt {label}:lr=...; `mnistlab sweep --optimizer {name.lower()} "
                         f"--lr ...` finds a good one)")
    args.update(opts or {})
    return resolve(base=base, optimizer=name, opt_args=args), notes


@dataclass
class CompareResult:
    run_dir: Path
    configs: dict[str, Config]
    histories: dict[str, list[dict[str, Any]]]
    table: list[dict[str, Any]]
    verdict: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> list[str]:
        return self.notes + self.verdict["lines"]


@dataclass(frozen=True)
class CompareSpec:
    """One comparison: `base` trained once per optimizer of `optimizers` ("adam,sgd,plain=sgd"), `opts`
    mapping a label to its arguments ({"sgd": {"lr": 0.05}}); `use_defaults` applies OPTIMIZER_DEFAULTS;
    `init_state` the common start (default: the base's seeded weights); `reuse` maps a label to an existing
    run directory to take its metrics from instead of training, once `trial.reuse_problem` finds nothing
    against it and it started from the same weights."""

    base: Config
    optimizers: str | Sequence[str] = ("adam", "sgd")
    opts: dict[str, dict[str, Any]] = field(default_factory=dict)
    use_defaults: bool = True
    init_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    reuse: dict[str, str | Path] = field(default_factory=dict)
    out: str | Path | None = None
    data_dir: str | Path | None = None
    quiet: bool = False


def compare(preset: str = "notebook", optimizers: str | Sequence[str] = ("adam", "sgd"),
            opts: dict[str, dict[str, Any]] | None = None, *, config: Config | None = None,
            **kwargs: Any) -> CompareResult:
    """Train `preset` once per optimizer from the same initial weights and data order; table, figure, verdict.

    Keywords naming a `CompareSpec` field (use_defaults, init_state, reuse, out, data_dir, quiet) set it; the
    others override the preset, or `config` is the base.
    """
    return run_compare(make_spec(CompareSpec, "compare", preset, config, kwargs, optimizers=optimizers,
                                 opts=opts or {}))


@scoped  # the comparison's directory stays locked while it runs
def run_compare(spec: CompareSpec) -> CompareResult:
    """Train `spec`'s optimizers; compare.csv/md/json, compare.png, the verdict."""
    base, opts, quiet = spec.base, spec.opts, spec.quiet
    specs = parse_optimizers(spec.optimizers)
    unknown = set(opts) - {label for label, _ in specs}
    if unknown:
        raise ConfigError(f"--opt names {', '.join(sorted(unknown))}, which is not among the optimizers compared")
    run_dir = claim_dir(spec.out, f"compare-{base.preset}", kind="compare").path
    init_state = spec.init_state if spec.init_state is not None else init_weights(base)
    save_state(init_state, base, run_dir / "initial.safetensors")
    configs, histories, notes = {}, {}, []
    for i, (label, name) in enumerate(specs, 1):
        cfg, why = optimizer_config(base, label, name, opts.get(label), spec.use_defaults)
        configs[label], notes = cfg, notes + why
        if not quiet:
            args = ", ".join(f"{k}={v}" for k, v in cfg.opt_args.items())
            print(f"[compare {i}/{len(specs)}] {label}: {name}({args})", flush=True)
        source = spec.reuse.get(label)
        if source is not None:
            histories[label] = _reuse_run(Path(source), cfg, init_state, run_dir / label)
            notes.append(f"{label}: metrics reused from {source} (same settings, initial weights and data order)")
        else:
            histories[label] = train(config=cfg, out=run_dir / label, data_dir=spec.data_dir, quiet=quiet,
                                     init_state=init_state).history
    table = side_by_side(histories)
    verdict = compare_verdict(histories)
    result = CompareResult(run_dir, configs, histories, table, verdict, notes)
    _write_compare(result)
    return result


def _reuse_run(source: Path, cfg: Config, init_state: dict[str, torch.Tensor], dest: Path) -> list[dict[str, Any]]:
    history = read_metrics(source)
    problem = reuse_problem(source, cfg) or (f"fewer than {cfg.epochs} epochs" if len(history) < cfg.epochs else None)
    if problem is not None:
        raise ConfigError(f"{source}: not the same run as this comparison's {cfg.optimizer} ({problem}); "
                          "cannot reuse it")
    src_cfg = read_run_config(source)[0]
    initial = source / "initial.safetensors"
    start = read_safetensors(initial)[0] if initial.exists() else init_weights(src_cfg)
    if not states_equal(start, init_state):
        raise ConfigError(f"{source}: started from other initial weights; cannot reuse it")
    history = history[: cfg.epochs]
    write_json(dest / "config.json", cfg.to_dict())
    write_json(dest / "source.json", {"reused_from": str(source)})
    write_metrics(dest, history)
    return history


def side_by_side(histories: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per epoch: each label's train/test accuracy and loss."""
    rows = []
    for e in range(max(len(h) for h in histories.values())):
        row: dict[str, Any] = {"epoch": e + 1}
        for label, h in histories.items():
            for key in ("train_acc", "test_acc", "train_loss", "test_loss"):
                row[f"{label}_{key}"] = h[e][key] if e < len(h) else None
        rows.append(row)
    return rows


def _epochs_to_reach(history: list[dict[str, Any]], target: float) -> int | None:
    return next((int(r["epoch"]) for r in history if r["test_acc"] >= target), None)


def compare_verdict(histories: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Against the first label: who is ahead each epoch, the final gap weighed against the noise of an accuracy
    over the test images (stats.Difference), epochs each needs for the other's final."""
    labels = list(histories)
    ref = labels[0]
    lines, pairs = [], []
    for other in labels[1:]:
        a, b = histories[ref], histories[other]
        n = min(len(a), len(b))
        ahead = [ref if a[e]["test_acc"] >= b[e]["test_acc"] else other for e in range(n)]
        gap = Difference(a[n - 1]["test_acc"], b[n - 1]["test_acc"], int(a[n - 1]["test_n"]))
        reach = {ref: _epochs_to_reach(a, b[n - 1]["test_acc"]), other: _epochs_to_reach(b, a[n - 1]["test_acc"])}
        pairs.append({"reference": ref, "other": other, "ahead": ahead, "final_gap": gap.value,
                      "noise": gap.noise, "exceeds_noise": gap.exceeds, "epochs_to_reach": reach})
        leads = {lab: ahead.count(lab) for lab in (ref, other)}
        winner = ref if gap.value > 0 else other
        lines.append(f"{ref} vs {other}: {ref} ahead on test accuracy in {leads[ref]} of {n} epochs, {other} in "
                     f"{leads[other]}; after epoch {n}: {pct(a[n - 1]['test_acc'])} vs {pct(b[n - 1]['test_acc'])}, "
                     f"{ref} {gap.words()}; " + (f"{winner} is ahead by more than the noise." if gap.exceeds else
                                                 "no difference beyond the noise."))
        for x, y in ((ref, other), (other, ref)):
            target = histories[y][n - 1]["test_acc"]
            e = reach[x]
            lines.append(f"{x} reaches {y}'s final {pct(target)} " +
                         (f"at epoch {e}." if e else f"in none of its {len(histories[x])} epochs."))
    return {"pairs": pairs, "lines": lines}


def _write_compare(r: CompareResult) -> None:
    atomic_write(r.run_dir / "compare.csv", csv_text(r.table))
    write_json(r.run_dir / "compare.json", {
        "configs": {k: c.to_dict() for k, c in r.configs.items()}, "notes": r.notes, "verdict": r.verdict,
        "table": r.table})
    atomic_write(r.run_dir / "compare.md", compare_markdown(r))
    from mnistlab.plots import compare_plot

    compare_plot(r.histories, r.run_dir / "compare.png")


def compare_markdown(r: CompareResult) -> str:
    headers, rows = compare_table(r)
    return md_table(headers, rows) + "\n" + "".join(f"- {line}\n" for line in r.summary)


def compare_table(r: CompareResult) -> tuple[list[str], list[list[str]]]:
    """(headers, formatted rows) of the side-by-side table: train and test accuracy and loss per optimizer."""
    labels = list(r.histories)
    headers = ["epoch"] + [f"{lab} {k}" for lab in labels for k in ("train acc", "test acc", "train loss",
                                                                      "test loss")]
    rows = []
    for row in r.table:
        cells = [str(row["epoch"])]
        for lab in labels:
            vals = [row[f"{lab}_{k}"] for k in ("train_acc", "test_acc", "train_loss", "test_loss")]
            cells += ["-" if v is None else (pct(v) if i < 2 else f"{v:.4f}") for i, v in enumerate(vals)]
        rows.append(cells)
    return headers, rows
