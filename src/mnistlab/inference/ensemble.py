"""Ensembles: K models of one preset trained with seeds seed, seed+1, ..., their softmax outputs averaged.

An ensemble is one more model: `ensemble_model(members)` is a LoadedModel that predict, evaluate and serve
use like any other. `train_ensemble("best", 3)` trains the members one after another (each a normal run
directory, `<out>/member-<seed>`) and writes `<out>/ensemble.json`; `evaluate_runs(run_dirs)` scores saved
members, and `evaluate_ensemble(loaded)` is what `mnistlab evaluate --model RUN_A --model RUN_B ...` prints.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.errors import ConfigError
from mnistlab.files.checkpoints import model_metadata
from mnistlab.files.outdir import claim_dir, scoped
from mnistlab.files.runs import write_json
from mnistlab.inference.evaluate import evaluate_model
from mnistlab.inference.predict import LoadedModel, load_model
from mnistlab.models import unwrap
from mnistlab.presets import resolve
from mnistlab.training.run import TrainResult, train


def average_probs(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' softmax probabilities, (N, 10), from their (N, 10) logits."""
    if not outputs:
        raise ConfigError("an ensemble needs at least one member")
    return torch.stack([t.float().softmax(dim=1) for t in outputs]).mean(0)


class EnsembleNet(nn.Module):
    """The members side by side; its output is their averaged class probabilities."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_probs([m(x) for m in self.members])


def ensemble_model(members: Sequence[LoadedModel]) -> LoadedModel:
    """One LoadedModel for `members`, which must share the dataset and the input normalisation."""
    if not members:
        raise ConfigError("an ensemble needs at least one member")
    if len({json.dumps(m.normalise) for m in members}) > 1 or len({m.dataset for m in members}) > 1:
        raise ConfigError("ensemble members must share the dataset and input normalisation")
    first = members[0]
    meta = {**first.meta, "model": "ensemble", "members": [str(m.path) for m in members], "test_acc": None,
            "normalise_baked": first.normalise is None}
    return LoadedModel.of(EnsembleNet([m.model for m in members]), meta, first.path, "ensemble")


def evaluate_ensemble(members: Sequence[LoadedModel], split: str = "test", data_dir: str | Path | None = None,
                      out: str | Path | None = None, worst: int = 24) -> dict[str, Any]:
    """The ensemble of `members` evaluated like any model (`evaluate_model`, figures in `out`), with each
    member's accuracy on the split in "member_accuracies" (what `mnistlab evaluate --model A --model B` prints)."""
    result = evaluate_model(ensemble_model(members), split, data_dir, out, worst)
    result["member_accuracies"] = [evaluate_model(m, split, data_dir)["accuracy"] for m in members]
    return result


def score(members: Sequence[LoadedModel], data_dir: str | Path | None = None,
          split: str = "test") -> dict[str, Any]:
    """Each member's accuracy on `split` and the ensemble's (`evaluate_ensemble`)."""
    result = evaluate_ensemble(members, split, data_dir)
    member = result["member_accuracies"]
    return {
        "members": len(member),
        "member_test_accs": member,
        "mean_member_test_acc": sum(member) / len(member),
        "ensemble_test_acc": result["accuracy"],
    }


@dataclass
class EnsembleResult:
    """The members' training results and the ensemble's scores (see `score`)."""

    run_dir: Path | None
    members: list[TrainResult]
    scores: dict[str, Any]

    @property
    def test_acc(self) -> float:
        return self.scores["ensemble_test_acc"]


def _loaded(result: TrainResult) -> LoadedModel:
    """A trained member as a LoadedModel on the CPU (a copy: the TrainResult keeps its model)."""
    model = copy.deepcopy(unwrap(result.model)).cpu()
    return LoadedModel.of(model, model_metadata(result.config), result.run_dir or Path("."), "safetensors")


@scoped  # the ensemble's directory stays locked while its members train
def train_ensemble(preset: str = "best", k: int = 3, *, out: str | Path | None = None,
                   data_dir: str | Path | None = None, quiet: bool = False, write_run: bool = True,
                   **overrides: Any) -> EnsembleResult:
    """Train `k` members of `preset` (seeds seed..seed+k-1, same overrides) and average their predictions."""
    if k < 1:
        raise ConfigError(f"--ensemble needs at least 1 member, got {k}")
    base = resolve(preset, **overrides)
    run_dir = claim_dir(out, f"{preset}-ensemble", kind="ensemble").path if write_run else None
    members = []
    for i in range(k):
        seed = base.seed + i
        if not quiet:
            print(f"ensemble member {i + 1}/{k} (seed {seed})", flush=True)
        members.append(train(preset, out=run_dir / f"member-{seed}" if run_dir else None, data_dir=data_dir,
                             quiet=quiet, write_run=write_run, **{**overrides, "seed": seed}))
    scores = score([_loaded(m) for m in members], data_dir)
    if run_dir is not None:
        write_json(run_dir / "ensemble.json", {"preset": preset, "seeds": [m.config.seed for m in members],
                                               "runs": [str(m.run_dir) for m in members], **scores})
    return EnsembleResult(run_dir, members, scores)


def evaluate_runs(paths: Sequence[str | Path], data_dir: str | Path | None = None) -> dict[str, Any]:
    """Score saved members (run directories or model files) alone and as an ensemble on the test split."""
    return {"runs": [str(p) for p in paths], **score([load_model(p) for p in paths], data_dir)}
