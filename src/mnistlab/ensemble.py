"""Ensembles: K models of one preset trained with seeds seed, seed+1, ..., their softmax outputs averaged.

`train_ensemble("best", 3)` trains the members one after another (each a normal run directory,
`<out>/member-<seed>`) and writes `<out>/ensemble.json`; `evaluate_runs(run_dirs)` scores saved members.
`python -m mnistlab.ensemble RUN_DIR...` prints that evaluation as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.checkpoints import model_from, read_safetensors
from mnistlab.data import load_split
from mnistlab.data.loader import DeviceLoader
from mnistlab.engine import pick_device, predict_logits
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.presets import resolve
from mnistlab.runs import new_run_dir, write_json
from mnistlab.training import TrainResult, train


def average_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' softmax probabilities, (N, 10), from their (N, 10) logits."""
    if not logits:
        raise ConfigError("an ensemble needs at least one member")
    return torch.stack([t.float().softmax(dim=1) for t in logits]).mean(0)


def accuracy(probs_or_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of rows whose arg-max is the label."""
    return 100.0 * (probs_or_logits.argmax(1) == labels.to(probs_or_logits.device)).float().mean().item()


def score(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """Each member's test accuracy and the ensemble's."""
    member = [accuracy(t, labels) for t in logits]
    return {
        "members": len(member),
        "member_test_accs": member,
        "mean_member_test_acc": sum(member) / len(member),
        "ensemble_test_acc": accuracy(average_probs(logits), labels),
    }


def _test_loader(dataset: str, normalise, device: torch.device, data_dir) -> DeviceLoader:
    images, labels = load_split(dataset, "test", data_dir)
    return DeviceLoader(images, labels, 1000, device=device, normalise=tuple(normalise) if normalise else None)


def _logits(models: Sequence[nn.Module], loader: DeviceLoader) -> list[torch.Tensor]:
    return [predict_logits(m.to(loader.device), loader) for m in models]


@dataclass
class EnsembleResult:
    """The members' training results and the ensemble's scores (see `score`)."""

    run_dir: Path | None
    members: list[TrainResult]
    scores: dict[str, Any]

    @property
    def test_acc(self) -> float:
        return self.scores["ensemble_test_acc"]


def train_ensemble(preset: str = "best", k: int = 3, *, out: str | Path | None = None,
                   data_dir: str | Path | None = None, quiet: bool = False, write_run: bool = True,
                   **overrides: Any) -> EnsembleResult:
    """Train `k` members of `preset` (seeds seed..seed+k-1, same overrides) and average their predictions."""
    if k < 1:
        raise ConfigError(f"--ensemble needs at least 1 member, got {k}")
    base = resolve(preset, **overrides)
    run_dir = new_run_dir(f"{preset}-ensemble", out) if write_run else None
    members = []
    for i in range(k):
        seed = base.seed + i
        if not quiet:
            print(f"ensemble member {i + 1}/{k} (seed {seed})", flush=True)
        members.append(train(preset, out=run_dir / f"member-{seed}" if run_dir else None, data_dir=data_dir,
                             quiet=quiet, write_run=write_run, **{**overrides, "seed": seed}))
    device = pick_device(base.device)
    loader = _test_loader(base.dataset, base.normalise, device, data_dir)
    scores = score(_logits([m.model for m in members], loader), loader.labels)
    if run_dir is not None:
        write_json(run_dir / "ensemble.json", {"preset": preset, "seeds": [m.config.seed for m in members],
                                               "runs": [str(m.run_dir) for m in members], **scores})
    return EnsembleResult(run_dir, members, scores)


def evaluate_runs(run_dirs: Sequence[str | Path], data_dir: str | Path | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Score the saved members (their model.safetensors) alone and as an ensemble on the test split."""
    models, metas = [], []
    for d in run_dirs:
        state, meta = read_safetensors(Path(d) / "model.safetensors")
        models.append(model_from(state, meta))
        metas.append(meta)
    norms = {json.dumps(m.get("normalise")) for m in metas}
    datasets = {(m.get("config") or {}).get("dataset", "mnist") for m in metas}
    if len(norms) > 1 or len(datasets) > 1:
        raise ConfigError("ensemble members must share the dataset and input normalisation")
    loader = _test_loader(datasets.pop(), metas[0].get("normalise"), pick_device(device), data_dir)
    return {"runs": [str(d) for d in run_dirs], **score(_logits(models, loader), loader.labels)}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m mnistlab.ensemble RUN_DIR...", file=sys.stderr)
        return 2
    try:
        print(json.dumps(evaluate_runs(args), indent=2))
    except MnistlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
