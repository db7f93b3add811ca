"""A handed-in weight file: loaded safely, matched against the lab's network, scored on MNIST's test set.

Loading goes through the project's model loader (`inference.predict.load_model`: safetensors or
`torch.load(weights_only=True)`); a pickled whole model is refused and never unpickled. The score is the
engine's one evaluation (`training.engine.evaluate`, fp32, eval mode) over the 10,000 test images, which are
read once per process (`TestSet`) however many notebooks are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError, UnsafeFileError
from mnistlab.inference.predict import LoadedModel, load_model

LAB_MODEL = "notebook"  # the lab's NnDigitsClassifier in mnistlab's model registry
SUFFIXES = (".safetensors", ".pt", ".pth")
TOLERANCE = 0.1  # percentage points: a GPU and a CPU differ by a few of the 10,000 images
# Test images per forward pass, as training's own evaluation: two single-threaded graders side by side score the
# test set in 0.90 s with 1,000-image batches and 1.0 s with 100-image ones (AMD EPYC, 2 cores).
BATCH = 1000


class WeightsRefused(MnistlabError):
    """A weight file that cannot be scored as the lab's network; the message says why, in one sentence."""


def find_weights(notebook: Path, shared_folder: bool = False) -> list[Path]:
    """Weight files handed in beside `notebook`: in its folder and the folders directly inside it. In a folder
    shared by several students' notebooks (`shared_folder`), only files named after the notebook's stem."""
    folder = notebook.parent
    files = [p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()]
    if shared_folder:
        return sorted(p for p in files if p.stem.startswith(notebook.stem))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += [p for p in sub.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: (p.suffix.lower() != ".safetensors", str(p)))


def _lab_shapes() -> dict[str, tuple[int, ...]]:
    from mnistlab.models import build_model

    return {k: tuple(v.shape) for k, v in build_model(LAB_MODEL).state_dict().items()}


def _raw_state(path: Path) -> dict[str, Any]:
    from mnistlab.files.checkpoints import load_checkpoint, plain_state, read_safetensors

    if path.suffix.lower() == ".safetensors":
        return read_safetensors(path)[0]
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = plain_state(obj)
    if state is None:
        raise WeightsRefused(f"{path.name}: holds a {type(obj).__name__}, not a state_dict of weights")
    return state


def shape_problem(state: dict[str, Any]) -> str | None:
    """None when `state` has the lab network's tensors (by name, or in order under other names), else which
    layer differs."""
    lab = _lab_shapes()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if list(shapes.values()) == list(lab.values()):
        return None
    for key, shape in lab.items():
        if key not in shapes:
            if len(shapes) == len(lab):
                continue
            return f"it has no {key} (the lab's network has {', '.join(lab)})"
        if shapes[key] != shape:
            return f"its {key} is {shapes[key]}, the lab's network has {shape}"
    extra = [k for k in shapes if k not in lab]
    if extra:
        return f"it holds tensors the lab's network has not ({', '.join(extra[:3])})"
    return "its tensors, in order, do not have the lab network's shapes"


def load_lab_weights(path: str | Path) -> LoadedModel:
    """The weights at `path` as the lab's network, ready to score; WeightsRefused saying why otherwise."""
    path = Path(path)
    try:
        loaded = load_model(path)
        if loaded.name == LAB_MODEL:
            return loaded
    except UnsafeFileError:
        raise WeightsRefused(f"{path.name}: a pickled whole model (torch.save(model)); refused and not "
                             "unpickled, because unpickling runs code from the file. Hand in "
                             "torch.save(model.state_dict(), ...) instead") from None
    except MnistlabError:
        pass  # not a file mnistlab recognises on its own: compare its tensors with the lab network's
    try:
        state = _raw_state(path)
    except UnsafeFileError:  # pragma: no cover - load_model refuses these first
        raise WeightsRefused(f"{path.name}: a pickled object, refused and not unpickled") from None
    except MnistlabError as e:
        raise WeightsRefused(str(e)) from None
    problem = shape_problem(state)
    if problem:
        raise WeightsRefused(f"{path.name} is not the lab's network: {problem}")
    from mnistlab.files.checkpoints import model_from

    renamed = dict(zip(_lab_shapes(), state.values(), strict=True))
    meta = {"model": LAB_MODEL, "model_args": {}, "normalise": None}
    return LoadedModel.of(model_from(renamed, meta), meta, path, "state_dict")


@dataclass
class TestSet:
    """MNIST's 10,000 test images, read once (at the first score) and shared by every score after it."""

    data_dir: str | Path | None = None
    images: Any = None
    labels: Any = None
    loaders: dict[Any, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: str | Path | None = None) -> TestSet:
        """The test set of the MNIST under `data_dir` (mnistlab's data folder by default), read when first used."""
        return cls(data_dir)

    def __len__(self) -> int:
        self._read()
        return len(self.labels)

    def _read(self) -> None:
        if self.images is None:
            from mnistlab.data import load_split

            self.images, self.labels = load_split("mnist", "test", self.data_dir)

    def correct(self, loaded: LoadedModel) -> int:
        """How many test images `loaded` classifies right, by the engine's one evaluation (fp32)."""
        from mnistlab.data.loader import DeviceLoader
        from mnistlab.training.engine import evaluate

        self._read()
        key = loaded.normalise
        if key not in self.loaders:
            self.loaders[key] = DeviceLoader(self.images, self.labels, BATCH, normalise=key)
        result = evaluate(loaded.model, self.loaders[key])
        return round(result["acc"] * result["n"] / 100)


def notebook_formula(correct: int, n: int, batch_size: int) -> float:
    """What the lab notebook's accuracy helper prints for `correct` of `n` images: per-batch percentages that
    assume full batches of `batch_size`, summed, then divided by the index of the last batch."""
    batches = math.ceil(n / batch_size)
    return 100.0 * correct / (batch_size * max(batches - 1, 1))


def check_weights(nb: Any, code: Any, claimed: list[Any], weights: str | Path | None = None,
                  test_set: TestSet | None = None, shared_folder: bool = False) -> dict[str, Any] | None:
    """The weights part of a notebook's report: None when no weight file was handed in, else {"file",
    "test_acc", "claimed", "status", "evidence"}. `status`: ok (a test accuracy the notebook reports is within
    TOLERANCE of what the weights score), mismatch, review (the notebook reports no test accuracy) or refused
    (a file that cannot be scored as the lab's network, with the reason)."""
    files = [Path(weights)] if weights is not None else find_weights(Path(nb.path), shared_folder)
    if not files:
        return None
    refusals = []
    for file in files:
        try:
            loaded = load_lab_weights(file)
            break
        except WeightsRefused as e:
            refusals.append(str(e))
    else:
        return {"file": str(files[0]), "test_acc": None, "claimed": [p.value for p in claimed],
                "status": "refused", "evidence": refusals[:1]}
    test_set = test_set if test_set is not None else TestSet.load()
    correct = test_set.correct(loaded)
    n = len(test_set)
    exact = 100.0 * correct / n
    evidence = [f"{file.name}: {correct:,} of {n:,} test images right in fp32: {exact:.2f}%"]
    reference = exact
    if code.quirk is not None:
        batch = code.batch_size.value if code.batch_size and isinstance(code.batch_size.value, int) else 32
        reference = notebook_formula(correct, n, batch)
        evidence.append(f"the notebook computes accuracy as the lab's original does ({code.quirk.cite()}: per-batch "
                        f"accuracies summed and divided by the last batch's index), which gives {reference:.2f}% "
                        "for these weights: compared with that")
    unique: dict[str, Any] = {}
    for p in claimed:  # printed lines come first: a number both printed and quoted is cited as printed
        unique.setdefault(p.text, p)
    values = sorted(unique.values(), key=lambda p: abs(p.value - reference))
    out = {"file": str(file), "test_acc": round(exact, 4), "claimed": [p.value for p in values]}
    if not values:
        return {**out, "status": "review", "evidence": evidence + ["the notebook reports no test accuracy"]}
    best = values[0]
    where = f"cell {best.cell} printed" if best.cell else "the answers say"
    if abs(best.value - reference) <= TOLERANCE:
        return {**out, "status": "ok", "evidence": evidence + [f"{where} {best.text}: `{best.line}`"]}
    return {**out, "status": "mismatch",
            "evidence": [f"the weights score {reference:.2f}%, the nearest test accuracy the notebook reports is "
                         f"{best.text} ({where}: `{best.line}`)"] + evidence}
