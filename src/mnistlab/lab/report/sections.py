"""The lab report's content as sections of blocks (see blocks.py), built from a LabResult's numbers.

Every accuracy is formatted by `pct` from a value that is also in a metrics/JSON file of the lab directory.
"""

from __future__ import annotations

from typing import Any

from mnistlab.lab.analysis import NAMES
from mnistlab.lab.report.blocks import Block, Section
from mnistlab.stats import accuracy_halfwidth, difference_halfwidth
from mnistlab.tables import pct, pts

LAYER_COLUMNS = ["name", "type", "input_shape", "output_shape", "units", "activation", "kernel_size", "stride",
                 "padding", "params"]

QUESTIONS = {
    1: "What batch size is used for training the neural network?",
    2: "How many epochs the network is trained?",
    3: "How many layers are there in the network?",
    4: "Describe each layer: type, dimensions of its neurons, activation; for a convolution its filter size "
       "and stride.",
    5: "What method is used for optimization and describe the parameters of the algorithm.",
    6: "Will the network improve with epoch for training, why or why not?",
    7: "Note the accuracy after each epoch and save it.",
}


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def inspect_blocks(info: dict[str, Any]) -> list[Block]:
    """Exercise 1, questions 1-5, from `mnistlab.inspect()` (also `mnistlab inspect --format md`)."""
    opt = info["optimizer"]
    return [
        ("list", [f"Batch size: **{info['batch_size']}**", f"Epochs: **{info['epochs']}**",
                  f"Layers with weights: **{info['weight_layers']}** (of {len(info['layers'])} layer modules)",
                  f"Parameters: **{info['total_params']:,}**; forward FLOPs per image: "
                  f"{info['flops_per_image']:,}"]),
        ("table", LAYER_COLUMNS, [[cell(row[c]) for c in LAYER_COLUMNS] for row in info["layers"]]),
        ("p", f"Optimizer: **{opt['name']}**"),
        ("table", ["parameter", "value", "meaning"],
         [[k, "-" if v is None else str(v), opt["meanings"].get(k, "")] for k, v in opt["params"].items()]),
    ]


def _q(n: int) -> Block:
    return ("p", f"**Q{n}. {QUESTIONS[n]}**")


def exercise1(r) -> Section:
    info, a, cfg = r.info, r.analysis, r.config
    d = r.run_dir / "exercise1"
    layers = "; ".join(
        f"{row['name']}: {row['type']} {cell(row['input_shape'])} -> {cell(row['output_shape'])}"
        + (f", kernel {cell(row['kernel_size'])} stride {cell(row['stride'])}" if row.get("kernel_size") else "")
        + f", activation {row['activation'] or 'none (logits)'}"
        for row in info["layers"] if row["params"])
    opt = info["optimizer"]
    blocks: list[Block] = [
        ("p", "Answers read from the objects themselves (`mnistlab inspect`): the preset, the model traced with "
              "torch.fx on a dummy batch, and the optimizer the preset builds."),
        ("code", info["print_model"]),
        _q(1), ("p", f"**{info['batch_size']}** images per training step."),
        _q(2), ("p", f"**{info['epochs']}** epochs" + ("." if cfg.epochs == info["epochs"] else
                     f" (this quick run trains {cfg.epochs}, on the first {r.train_images:,} training images).")),
        _q(3), ("p", f"**{info['weight_layers']}** layers with weights (a 3x3 convolution and two fully connected "
                     f"layers); with the flatten step, {len(info['layers'])} layer modules. "
                     f"{info['total_params']:,} parameters."),
        _q(4), ("p", layers + "."), inspect_blocks(info)[1], *insight_blocks(d),
        _q(5), ("p", f"**{opt['name']}**, " + ", ".join(f"{k} = {v}" for k, v in opt["params"].items()
                                                       if k in ("lr", "betas", "eps", "weight_decay", "amsgrad",
                                                                "momentum")) + ". Loss: " + info["loss"] + "."),
        inspect_blocks(info)[3],
        _q(6), ("p", f"Judged on the {NAMES[a['split']]} split ({a['images']:,} images), since how long to train "
                     "is a choice; differences are weighed against the noise of an accuracy over those images."),
        ("p", a["answer"]),
        ("img", d / "curves.png", "accuracy and loss per epoch"),
        _q(7), ("p", f"Saved as `exercise1/accuracy.csv` and `accuracy.json` (run of {cfg.epochs} epochs on the "
                     f"first {r.train_images:,} training images; validation = the next {cfg.val:,}; test = all 10,000 "
                     "test images)."),
        _accuracy_table(a["table"]),
        ("p", f"Where the final model goes wrong on the test set ({r.evaluation['images'] - r.evaluation['correct']:,} "
              "mistakes):"),
        ("img", d / "confusion.png", "confusion matrix (rows: true class)"),
    ]
    if (d / "mistakes.png").exists():
        blocks.append(("img", d / "mistakes.png", "the most confident mistakes"))
    if (d / "mistakes-ig.png").exists():
        blocks += [("p", "Why the model made them (Integrated Gradients, `mnistlab explain --mistakes 8`): the "
                         "pixels that speak for the predicted class (red) beside those that speak for the true "
                         "class; blue pixels speak against it."),
                   ("img", d / "mistakes-ig.png", "the most confident mistakes explained: predicted and true class")]
    return "Exercise 1: reading the notebook, accuracy per epoch", blocks


def insight_blocks(d) -> list[Block]:
    """Question 4, shown: the trained convolution's filters and what they compute from one test digit."""
    blocks: list[Block] = []
    if (d / "filters.png").exists():
        blocks += [("p", "What the trained convolution learned: each of its filters is a 3x3 grid of weights "
                         "slid over the image (red positive, blue negative); most respond to an edge or a stroke "
                         "in one direction."),
                   ("img", d / "filters.png", "the learned filters of the convolution")]
    if (d / "feature-maps.png").exists():
        blocks += [("p", "The feature maps one test digit produces there (the convolution's output, before "
                         "ReLU): each shows where its filter responds."),
                   ("img", d / "feature-maps.png", "the feature maps of one test digit")]
    return blocks


def _accuracy_table(table: list[dict[str, Any]]) -> Block:
    """Question 7's table: accuracy and loss per split (validation when held out), and the gap."""
    splits = [s for s in ("train", "val", "test") if f"{s}_acc" in table[0]]
    held = "val" if "val" in splits else "test"
    return ("table", ["epoch", *[f"{NAMES.get(s, s)} acc" for s in splits],
                      *[f"{NAMES.get(s, s)} loss" for s in splits], f"gap (train - {NAMES[held]})"],
            [[t["epoch"], *[pct(t[f"{s}_acc"]) for s in splits], *[f"{t[f'{s}_loss']:.4f}" for s in splits],
              pts(t["gap"])] for t in table])


def exercise2(r) -> Section:
    s = r.sweep
    rows = [[row["label"], row["epochs"], pct(row["val_acc"]), pct(row["test_acc"]),
             f"{pct(row['best_val_acc'])} (epoch {row['best_epoch']})", pct(row["final_train_acc"]),
             f"{row['seconds']:.0f}", row["source"]] for row in s.rows]
    return "Exercise 2: tuning epochs and learning rate", [
        ("p", "A grid around the preset (`mnistlab sweep`), the lab's own: learning rate and epochs are its "
              f"knobs. The setting is **chosen by validation accuracy** (the last {s.val_n:,} training images, "
              "which no run trains on). Choosing by test accuracy, the way the exercise is often done, would "
              "report the winner's test number with the luck of the choice in it; here the test set is evaluated "
              "for every setting and reported beside the choice, but chooses nothing."),
        ("table", ["setting", "epochs", "val acc", "test acc", "best val acc", "final train acc", "seconds", "how"],
         rows),
        ("list", s.summary),
        ("img", s.run_dir / "sweep.png", "validation accuracy per epoch of each learning rate; dots: the grid; "
                                         "star: the chosen setting"),
    ]


def exercise3(r) -> Section:
    from mnistlab.experiments.compare import compare_table

    c = r.compare
    headers, rows = compare_table(c)
    keep = [0] + [i for i, h in enumerate(headers) if h.endswith("acc")]
    configs = [f"{label}: {cfg.optimizer}(" + ", ".join(f"{k}={v}" for k, v in cfg.opt_args.items()) + ")"
               for label, cfg in c.configs.items()]
    return "Exercise 3: SGD against Adam", [
        ("p", "Every optimizer starts from the same initial weights (`exercise3/initial.safetensors`) and sees the "
              "same batches in the same order; Adam's numbers are step 1's run (Exercise 1.7), not a new one. "
              "Changing optimizer is one constructor; the engine calls `optimizer.zero_grad()` before every "
              "backward pass, since PyTorch accumulates gradients."),
        ("list", configs),
        ("table", [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]),
        ("list", c.summary),
        ("img", c.run_dir / "compare.png", "test (solid) and train (dashed) accuracy per epoch"),
    ]


def exercise4(r) -> Section:
    e = r.exercise4
    files = [[f["format"], f"`{f['file']}`", f"{f['bytes'] / 1e6:.1f} MB", f["note"],
              "yes" if f["fresh_object"] else "no", "yes" if f["weights_equal"] else "NO",
              "yes" if f["probabilities_equal"] else "NO"] for f in e["formats"]]
    samples = [[s["split"], s["index"], s["label"], s["prediction"], f"{s['probability']:.4f}"] for s in e["samples"]]
    return "Exercise 4: saving and reloading the model", [
        ("p", "The trained model saved three ways, each reloaded from its file into a fresh model object "
              "(`mnistlab.load(path)`), then used to classify samples of the training and the test set."),
        ("table", ["format", "file", "size", "what it is", "fresh object", "weights equal", "probabilities equal"],
         files),
        ("p", "**The pickled whole model is for trusted sources only**: unpickling runs code from the file. "
              "mnistlab refuses it unless asked (`trust_pickle=True`, `--trust-pickle`); safetensors and the "
              "state_dict load without running anything."),
        ("p", "Reloaded predictions equal the originals exactly (bit-for-bit probabilities): "
              f"**{'yes' if e['all_equal'] else 'NO'}**."),
        ("table", ["split", "index", "label", "prediction", "probability"], samples),
        ("img", r.run_dir / "exercise4" / "samples.png", "samples classified by the reloaded model"),
        ("code", "import mnistlab\nloaded = mnistlab.load(\"exercise4/model.safetensors\")  # no code runs\n"
                 "probs = loaded.probabilities(images)  # images: (N, 28, 28) in [0, 1]"),
    ]


def quirks(r) -> Section:
    q = r.quirks
    rows = [[x["epoch"], f"{x['normal_train_loss']:.4f}", f"{x['double_train_loss']:.4f}", pct(x["normal_test_acc"]),
             pct(x["double_test_acc"])] for x in q["double_softmax"]]
    return "The notebook's two quirks, measured", [
        ("p", "**1. Double softmax.** The notebook's forward() ends in softmax and CrossEntropyLoss applies "
              "log-softmax again. The probabilities fed to the loss lie in [0, 1], so the loss cannot go below "
              f"log(1 + 9/e) = {q['softmax_floor']:.4f} and the gradients are squashed. Same start, same batches:"),
        ("table", ["epoch", "train loss (logits)", "train loss (double softmax)", "test acc (logits)",
                   "test acc (double softmax)"], rows),
        ("p", "**2. Accuracy averaging.** The notebook sums per-batch percentages, assumes every batch holds "
              f"{q['batch_size']} images and divides by the index of the last batch. On the test set "
              f"({q['batches']} batches, the last holding {q['last_batch']} images) and the same predictions of the "
              f"final model: notebook formula {pct(q['notebook_test_acc'])}, exact {pct(q['exact_test_acc'])} "
              f"({pts(q['difference'])})."),
    ]


TEST_IMAGES = 10_000


def cross_check(r) -> dict[str, Any]:
    """The notebook's Exercise 1 test accuracy against the lab's own run of the same network and recipe: two
    independent implementations, so they should agree within the noise of two accuracies on 10,000 images."""
    a, b = r.notebook.test_acc, r.step1.test_acc
    half = difference_halfwidth(a, b, TEST_IMAGES)
    agree = abs(a - b) <= half
    word = "agree" if agree else "differ (expected of a quick run)" if r.quick else "DIFFER"
    return {"notebook_test_acc": a, "lab_test_acc": b, "difference": a - b, "halfwidth": half, "agree": agree,
            "short": f"{pct(a)} vs {pct(b)}, {pts(a - b)} (±{half:.2f} pt): {word}"}


def notebook_section(r) -> Section:
    nb, c = r.notebook, cross_check(r)
    p = nb.parameters
    rows = [[int(x["epoch"]), pct(x["train_acc"]), pct(x["val_acc"]), pct(x["test_acc"])] for x in nb.exercise1]
    lab = [[t["epoch"], pct(t["train_acc"]), pct(t["val_acc"]), pct(t["test_acc"])] for t in r.step1.history]
    verdict = ("they **agree**: the difference is within the noise" if c["agree"] else
               "they **differ** by more than the noise" + (
                   ". In a quick run that is expected: after a few epochs on 1,000 images the initial weights "
                   "alone move test accuracy by points, which this interval (the test images' noise) does not "
                   "cover; the full lab is the real check" if r.quick else
                   ": look for a difference in the recipe"))
    return "The lab notebook, executed, and cross-checked", [
        ("p", "`lab_notebook.ipynb` (and `lab_notebook.html`) is the notebook students hand in: plain PyTorch "
              "(numpy reads the IDX files, an nn.Module, a loop with `optimizer.zero_grad()`), every exercise "
              "with its code, and answer cells rendered from its own numbers. It ran through a Jupyter kernel "
              f"with the lab's settings ({p.get('epochs', 5)} epochs, the same split, device "
              f"{p['device_name']}, {'bf16 autocast' if p['bf16'] else 'fp32'}) in {nb.seconds:.0f} s; "
              "its files are in `notebook/`."),
        ("p", "**Cross-check.** Exercise 1 in the notebook and the lab's own run (step 1) train the same network "
              "with the same recipe (Adam lr 1e-3, batch 32, the same training and validation images) in two "
              f"independent implementations, from different initial weights. Final test accuracy: notebook "
              f"{pct(c['notebook_test_acc'])}, lab {pct(c['lab_test_acc'])}, difference {pts(c['difference'])}; "
              f"the 95% interval of the difference of two accuracies on {TEST_IMAGES:,} images is "
              f"±{c['halfwidth']:.2f} pt, so {verdict}."),
        ("table", ["epoch", "notebook train acc", "notebook val acc", "notebook test acc"], rows),
        ("table", ["epoch", "lab train acc", "lab val acc", "lab test acc"], lab),
    ]


def overview(r) -> Section:
    env, cfg = r.environment, r.config
    return "About this run", [
        ("p", ("Quick run (a first look: a subset and few epochs; the full lab is `mnistlab lab`)" if r.quick
               else "Full lab") + " on real MNIST. Every number below comes from the runs in this directory."),
        ("p", f"**Validation policy.** Every choice in this report (question 6: train longer?; Exercise 2: which "
              f"setting?) is made on a validation split, the last {cfg.val:,} of the first {cfg.subset or 60000:,} "
              "training images, which no run trains on; the test set is evaluated for what was chosen and "
              "reported beside it, never used to choose. All steps share this one split, so Exercise 1 trains on "
              f"{r.train_images:,} images where the notebook uses all 60,000: that lets Exercise 2 continue "
              "Exercise 1's very run (question 6's direct evidence) and Exercise 3 reuse it, every step judged on "
              "the same held-out images. A difference is called real only when it is larger than the noise: the "
              "95% interval of one accuracy over the images it is measured on "
              f"(±{accuracy_halfwidth(98.0, 10_000):.2f} pt at 98% over 10,000)."),
        ("list", [f"device: {env.get('device')} ({env.get('device_name')}), {env.get('torch_threads')} CPU threads",
                  f"torch {env.get('torch')}, python {env.get('python')}, mnistlab {env.get('mnistlab')}",
                  f"training precision: {env.get('amp_dtype') or 'fp32'} (`--amp {cfg.amp}`); every test "
                  "accuracy and loss is the weights evaluated in fp32",
                  f"training images: {r.train_images:,}; validation images: {cfg.val:,}; test images: 10,000; "
                  f"seed {cfg.seed}",
                  "wall time of the steps before this report: "
                  f"{sum(v for k, v in r.seconds.items() if k != 'total'):.0f} s"]),
    ]


def sections(r) -> list[Section]:
    secs = [overview(r), exercise1(r), exercise2(r), exercise3(r), exercise4(r), quirks(r)]
    if r.notebook is not None and r.step1 is not None:
        secs.append(notebook_section(r))
    return secs
