"""`mnistlab lab`: every exercise of the lab on real MNIST, in one directory, with a report whose every number
comes from the runs made here, and the plain-PyTorch lab notebook executed with the same settings.

    lab_dir/
      exercise1/   inspect.json, the notebook preset's run (metrics.csv, model.safetensors, initial.safetensors),
                   accuracy.csv/json (Q7), analysis.json (Q6), curves.png, confusion.png, mistakes.png,
                   filters.png, feature-maps.png (Q4), mistakes-ig.png (why the mistakes; with Captum)
      exercise2/   the sweep: sweep.csv, sweep.json, sweep.png, one run directory per trained setting
      exercise3/   the comparison: compare.csv/md/json, compare.png, initial.safetensors, one run per optimizer
      exercise4/   the model saved three ways, exercise4.json (reloaded predictions vs originals), samples.png
      quirks/      the double-softmax run and quirks.json (the notebook's two quirks, measured)
      notebook/    the files of the lab notebook's own run (its CSV, figures and saved model)
      report.md, report.html (self-contained), lab_notebook.ipynb and .html (the plain-PyTorch notebook,
      executed with the lab's settings), summary.json

Every step shares one split: the last `val` training images are held out as validation and every choice
(question 6, Exercise 2's setting) is made on them; the test set is only reported. Exercise 1's run is then the
run Exercise 2 continues (question 6's direct evidence) and Exercise 3 reuses.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mnistlab.experiments.compare import CompareResult, compare, save_state, states_equal
from mnistlab.experiments.sweep import SweepResult, sweep
from mnistlab.files.checkpoints import model_metadata
from mnistlab.files.outdir import claim_dir, scoped
from mnistlab.files.runs import read_json, write_json
from mnistlab.lab.analysis import analyse, analyse_run, write_analysis
from mnistlab.lab.insight import insight_figures
from mnistlab.lab.inspect import inspect
from mnistlab.presets import Config, resolve
from mnistlab.tables import pct
from mnistlab.training.run import TrainResult, init_weights, train

# The full lab keeps to roughly 10-15 minutes on a 2-core CPU; --quick is a first look (and CI).
FULL = {"subset": None, "val": 10_000, "epochs": 5, "lrs": [5e-4, 1e-3, 2e-3], "sweep_epochs": [5, 8],
        "softmax_epochs": 1, "samples": 10}
QUICK = {"subset": 1500, "val": 500, "epochs": 2, "lrs": [1e-3, 2e-3], "sweep_epochs": [2, 3], "softmax_epochs": 1,
         "samples": 5}  # trains on the first 1,000 images, validates on the next 500
NOTEBOOK_BATCH = 32  # the notebook's accuracy helper assumes batches of this size
SOFTMAX_FLOOR = math.log(1 + 9 / math.e)  # the least CrossEntropyLoss of softmax outputs: log(1 + 9/e)


@dataclass
class LabResult:
    """Everything the report and the notebook quote."""

    run_dir: Path
    quick: bool
    settings: dict[str, Any]
    config: Config
    info: dict[str, Any] = field(default_factory=dict)
    step1: TrainResult | None = None
    analysis: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    sweep: SweepResult | None = None
    compare: CompareResult | None = None
    exercise4: dict[str, Any] = field(default_factory=dict)
    quirks: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    jobs: int = 1
    notebook: Any = None  # the executed lab notebook (lab.notebook.Executed)

    @property
    def train_images(self) -> int:
        """Images the lab's runs train on: the first (subset or 60,000) less the validation split."""
        return (self.config.subset or 60_000) - self.config.val


@scoped  # the lab's directory stays locked while it runs
def lab(out: str | Path | None = None, *, quick: bool = False, data_dir: str | Path | None = None,
        device: str | None = None, jobs: int = 1, quiet: bool = False, tensorboard: bool = True,
        notebook: bool = True) -> LabResult:
    """Run the four exercises and the quirks, execute the lab notebook (unless `notebook=False`), then write
    report.md and report.html."""
    if notebook:
        from mnistlab.lab.notebook import require

        require("papermill", "ipykernel", "nbconvert", "jupytext")  # before any training
    settings = dict(QUICK if quick else FULL)
    cfg = resolve("notebook", epochs=settings["epochs"], subset=settings["subset"], val=settings["val"],
                  device=device, tensorboard=tensorboard)
    run_dir = claim_dir(out, "lab-quick" if quick else "lab", kind="lab").path
    r = LabResult(run_dir, quick, settings, cfg, data_dir=str(data_dir) if data_dir else None, jobs=jobs)
    steps = [("Exercise 1: inspect the notebook preset (questions 1-5)", _inspect),
             (f"Exercise 1: train it for {cfg.epochs} epochs, accuracy per epoch and analysis (6, 7)", _exercise1),
             ("Exercise 2: sweep learning rates and epochs", _exercise2),
             ("Exercise 3: SGD against the notebook's Adam", _exercise3),
             ("Exercise 4: save, reload and classify", _exercise4),
             ("The notebook's quirks: double softmax and accuracy averaging", _quirks),
             *([("The lab notebook in plain PyTorch, executed", _notebook)] if notebook else []),
             ("Report and HTML", _write)]
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(steps, 1):
        if not quiet:
            print(f"[lab {i}/{len(steps)}] {title}", flush=True)
        t0 = time.perf_counter()
        step(r, data_dir, quiet)
        r.seconds[step.__name__.strip("_")] = round(time.perf_counter() - t0, 1)
    r.seconds["total"] = round(time.perf_counter() - t_all, 1)
    write_json(run_dir / "summary.json", {"seconds": r.seconds, "answers": summary_rows(r)})
    return r


def _inspect(r: LabResult, data_dir, quiet: bool) -> None:
    r.info = inspect(config=resolve("notebook", device=r.config.device))  # questions 1-5: the notebook as written
    ex1 = claim_dir(r.run_dir / "exercise1", "exercise1").path  # held by the lab: step 1 trains in beside these
    write_json(ex1 / "inspect.json", r.info)


def _exercise1(r: LabResult, data_dir, quiet: bool) -> None:
    ex1 = r.run_dir / "exercise1"
    init = init_weights(r.config)
    save_state(init, r.config, ex1 / "initial.safetensors")
    r.step1 = train(config=r.config, out=ex1, data_dir=data_dir, quiet=quiet, init_state=init)
    r.environment = read_json(ex1 / "env.json")  # what step 1 ran on, its training precision included
    r.analysis, r.evaluation = analyse_run(ex1, data_dir)
    insight_figures(ex1, r.evaluation["mistakes"], data_dir)  # question 4's filters, the mistakes explained


def _exercise2(r: LabResult, data_dir, quiet: bool) -> None:
    r.sweep = sweep(config=r.config, lrs=r.settings["lrs"], epochs=r.settings["sweep_epochs"], jobs=r.jobs,
                    out=r.run_dir / "exercise2", data_dir=data_dir, quiet=quiet, runs=[r.run_dir / "exercise1"])
    # The sweep continued Exercise 1's very run (its first epochs are step 1's): question 6's direct evidence.
    done = r.step1.history
    longer = next((h for h in r.sweep.curves.values() if len(h) > len(done) and h[: len(done)] == done), None)
    if longer is not None:
        r.analysis = analyse(done, continued=longer)
        write_analysis(r.run_dir / "exercise1", r.analysis)


def _exercise3(r: LabResult, data_dir, quiet: bool) -> None:
    init = init_weights(r.config)
    # adam: step 1's run (same start, same data order); sgd: the explicit SGD defaults; plain-sgd: the
    # one-line constructor swap the lab text suggests, at the notebook's lr, to show why the defaults exist.
    r.compare = compare(config=r.config, optimizers="adam,sgd,plain-sgd=sgd",
                        opts={"plain-sgd": {"lr": r.config.lr, "momentum": 0.0}}, out=r.run_dir / "exercise3",
                        data_dir=data_dir, quiet=quiet, init_state=init, reuse={"adam": r.run_dir / "exercise1"})


def _exercise4(r: LabResult, data_dir, quiet: bool) -> None:
    from mnistlab.files.checkpoints import save_model
    from mnistlab.inference.predict import LoadedModel, dataset_samples, load_model
    from mnistlab.plots import sample_grid

    ex4 = r.run_dir / "exercise4"
    model = r.step1.model.cpu().eval()
    meta = model_metadata(r.config, {"test_acc": r.step1.test_acc})
    original = LoadedModel.of(model, meta, ex4, "in memory")
    g = torch.Generator().manual_seed(r.config.seed)
    n = r.settings["samples"]
    picks = {"train": torch.randperm(r.train_images, generator=g)[:n].tolist(),
             "test": torch.randperm(10000, generator=g)[:n].tolist()}
    images, labels, splits, indices = [], [], [], []
    for split, idx in picks.items():
        x, y = dataset_samples(original, idx, split, data_dir)
        images.append(x)
        labels.append(y)
        splits += [split] * len(idx)
        indices += idx
    images, labels = torch.cat(images), torch.cat(labels)
    p0 = original.probabilities(images)
    files = {"safetensors": ("model.safetensors", "weights + metadata; safe to load from anyone"),
             "state_dict": ("model_state_dict.pt", "state_dict, torch.load(weights_only=True); safe to load"),
             "pickle": ("model_pickled.pt", "the entire model pickled (the PyTorch tutorial's torch.save(model)): "
                                           "loading runs code from the file, TRUSTED SOURCES ONLY")}
    formats = []
    for fmt, (name, note) in files.items():
        path = save_model(model, ex4 / name, meta, format=fmt)
        loaded = load_model(path, trust_pickle=fmt == "pickle")
        p = loaded.probabilities(images)
        formats.append({"format": fmt, "file": name, "bytes": path.stat().st_size, "note": note,
                        "fresh_object": loaded.model is not model,
                        "weights_equal": states_equal(loaded.model.state_dict(), model.state_dict()),
                        "predictions_equal": bool(torch.equal(p.argmax(1), p0.argmax(1))),
                        "probabilities_equal": bool(torch.equal(p, p0))})
    conf, pred = p0.max(1)
    samples = [{"split": s, "index": i, "label": int(y), "prediction": int(q), "probability": round(float(c), 4)}
               for s, i, y, q, c in zip(splits, indices, labels, pred, conf, strict=True)]
    sample_grid(images, labels, ex4 / "samples.png", preds=pred, probs=conf, cols=n,
                title=f"reloaded model: {n} training samples (top row), {n} test samples (bottom row)")
    r.exercise4 = {"formats": formats, "samples": samples,
                   "all_equal": all(f["probabilities_equal"] and f["weights_equal"] for f in formats)}
    write_json(ex4 / "exercise4.json", r.exercise4)


def _quirks(r: LabResult, data_dir, quiet: bool) -> None:
    from mnistlab.inference.evaluate import predict_split
    from mnistlab.inference.predict import load_model

    q = r.run_dir / "quirks"
    epochs = r.settings["softmax_epochs"]
    ds_cfg = dataclasses.replace(r.config, double_softmax=True, epochs=epochs)
    ds = train(config=ds_cfg, out=q / "double-softmax", data_dir=data_dir, quiet=quiet,
               init_state=init_weights(r.config))
    rows = [{"epoch": a["epoch"], "normal_train_loss": a["train_loss"], "double_train_loss": b["train_loss"],
             "normal_test_acc": a["test_acc"], "double_test_acc": b["test_acc"]}
            for a, b in zip(r.step1.history, ds.history, strict=False)]
    test = predict_split(load_model(r.run_dir / "exercise1" / "model.safetensors"), "test", data_dir)
    preds, labels = test.preds, test.labels
    correct = (preds == labels).split(NOTEBOOK_BATCH)
    per_batch = [100.0 * float(c.sum()) / NOTEBOOK_BATCH for c in correct]  # "assumes every batch is full"
    notebook_acc = sum(per_batch) / (len(per_batch) - 1)  # divided by the index of the last batch
    exact = 100.0 * float((preds == labels).sum()) / len(labels)
    r.quirks = {"double_softmax": rows, "softmax_floor": SOFTMAX_FLOOR, "batches": len(per_batch),
                "batch_size": NOTEBOOK_BATCH,
                "last_batch": len(correct[-1]), "exact_test_acc": exact, "notebook_test_acc": notebook_acc,
                "difference": notebook_acc - exact, "metrics_test_acc": r.step1.test_acc}
    write_json(q / "quirks.json", r.quirks)


def _notebook(r: LabResult, data_dir, quiet: bool) -> None:
    from mnistlab.lab.notebook import execute, parameters_for

    params = parameters_for(quick=r.quick, device=r.config.device, data_dir=data_dir, amp=r.config.amp,
                            outputs=(r.run_dir / "notebook").resolve(), epochs=r.config.epochs,
                            train_subset=r.config.subset, val_size=r.config.val, seed=r.config.seed)
    r.notebook = execute(r.run_dir / "lab_notebook.ipynb", parameters=params,  # its epochs, as it trains them
                         echo=None if quiet else lambda line: print(f"  notebook: {line}", flush=True))


def _write(r: LabResult, data_dir, quiet: bool) -> None:
    from mnistlab.lab.report import write_report

    write_report(r)
    if not quiet:
        print_summary(r)


def summary_rows(r: LabResult) -> list[tuple[str, str]]:
    """(question, short answer) for the terminal table and summary.json."""
    a, s, c = r.analysis, r.sweep, r.compare
    rows = [("E1 Q1 batch size", str(r.info.get("batch_size"))), ("E1 Q2 epochs", str(r.info.get("epochs"))),
            ("E1 Q3 layers with weights", str(r.info.get("weight_layers"))),
            ("E1 Q5 optimizer", f"{r.info['optimizer']['name']} lr {r.config.lr:g}" if r.info else "-")]
    if a:
        more = a["continuation"]
        best = f"best {a['split']} {pct(a['best_acc'])} at epoch {a['best_epoch']}"
        evidence = (f"{a['split']} {pct(a['final_acc'])} after epoch {a['epochs']}, {pct(more['acc'])} after "
                    f"{more['epochs']}" if more else best)
        rows += [("E1 Q6 more epochs?", f"{a['verdict']} ({evidence})"),
                 ("E1 Q7 test acc per epoch", ", ".join(pct(t["test_acc"]) for t in a["table"]))]
    if s is not None:
        beyond = "beyond" if s.gain_noise is not None and s.gain_noise.exceeds else "within"
        gain = "" if s.gain_noise is None or s.best is s.preset_row else \
            f"; {s.gain_noise.value:+.2f} pt test vs the preset ({beyond} noise)"
        rows.append(("E2 chosen on validation", f"{s.best['label']}, {s.best['epochs']} epochs: val "
                                                f"{pct(s.best['val_acc'])}, test {pct(s.best['test_acc'])}{gain}"))
    if c is not None:
        rows.append(("E3 final test acc", ", ".join(f"{k} {pct(h[-1]['test_acc'])}" for k, h in c.histories.items())))
    if r.exercise4:
        rows.append(("E4 reloaded = original", "yes, exactly" if r.exercise4["all_equal"] else "NO"))
    if r.notebook is not None and r.step1 is not None:
        from mnistlab.lab.report.sections import cross_check

        rows.append(("notebook E1 test acc vs lab's", cross_check(r)["short"]))
    if r.quirks:
        rows.append(("notebook accuracy formula", f"{pct(r.quirks['notebook_test_acc'])} vs exact "
                                                  f"{pct(r.quirks['exact_test_acc'])}"))
    return rows


def print_summary(r: LabResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lab answers ({'quick' if r.quick else 'full'} run)")
    table.add_column("question")
    table.add_column("answer")
    for q, ans in summary_rows(r):
        table.add_row(q, ans)
    console = Console()
    console.print(table)
    notebook = f"  notebook: {r.notebook.ipynb}" if r.notebook is not None else ""
    console.print(f"report: {r.run_dir / 'report.md'}  html: {r.run_dir / 'report.html'}{notebook}", markup=False)


