"""Ensembles: averaged probabilities, training K members, scoring saved runs."""

from __future__ import annotations

import json

import pytest
import torch

from mnistlab.cli import main
from mnistlab.errors import ConfigError
from mnistlab.inference.ensemble import EnsembleNet, average_probs, evaluate_runs, train_ensemble


class Fixed(torch.nn.Module):
    """A stand-in member whose logits are given, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_average_probs_and_the_ensemble_net():
    m1 = torch.tensor([[5.0, 0, 0], [0, 5, 0], [5, 0, 0]])  # wrong on the last
    m2 = torch.tensor([[5.0, 0, 0], [0, 0, 5], [0, 0, 5]])  # wrong on the second
    m3 = torch.tensor([[0.0, 5, 0], [0, 5, 0], [0, 0, 5]])  # wrong on the first
    probs = average_probs([m1, m2, m3])
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.allclose(probs[0], (m1[0].softmax(0) * 2 + m3[0].softmax(0)) / 3)
    out = EnsembleNet([Fixed(m1), Fixed(m2), Fixed(m3)])(torch.zeros(3, 1, 28, 28))
    assert torch.equal(out, probs) and out.argmax(1).tolist() == [0, 1, 2]  # every mistake is outvoted
    with pytest.raises(ConfigError):
        average_probs([])


def test_train_ensemble_writes_members_and_scores(mnist_dir, tmp_path):
    ens = train_ensemble("fast", 2, out=tmp_path / "ens", subset=1024, device="cpu", amp="off",
                         data_dir=mnist_dir, quiet=True, seed=3)
    assert [m.config.seed for m in ens.members] == [3, 4]
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert saved["seeds"] == [3, 4] and saved["ensemble_test_acc"] == ens.test_acc
    assert saved["member_test_accs"] == pytest.approx([m.test_acc for m in ens.members], abs=1e-3)
    again = evaluate_runs([tmp_path / "ens" / "member-3", tmp_path / "ens" / "member-4"], mnist_dir)
    assert again["ensemble_test_acc"] == ens.test_acc  # the saved weights score what the run reported
    assert ens.test_acc > 30


def test_cli_ensemble(mnist_dir, tmp_path, capsys):
    rc = main(["train", "--preset", "fast", "--subset", "512", "--ensemble", "2", "--device", "cpu",
               "--data-dir", str(mnist_dir), "--out", str(tmp_path / "e")])
    assert rc == 0 and "ensemble of 2: test accuracy" in capsys.readouterr().out
    assert (tmp_path / "e" / "member-1" / "model.safetensors").exists()
    saved = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    members = [str(tmp_path / "e" / f"member-{seed}") for seed in saved["seeds"]]
    rc = main(["evaluate", "--model", members[0], "--model", members[1], "--data-dir", str(mnist_dir),
               "--out", str(tmp_path / "eval"), "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["accuracy"] == saved["ensemble_test_acc"]
    assert result["member_accuracies"] == saved["member_test_accs"] and result["model"] == "ensemble"
    assert main(["train", "--ensemble", "2", "--resume", str(tmp_path / "e")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "--ensemble", "0"])
    assert e.value.code == 2
