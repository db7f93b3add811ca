"""`train()`: a resolved Config -> data on the device -> model -> engine.fit -> a run directory.

This is the Python API behind `mnistlab train` (and, through it, compare, sweep, lab and bench). It also
resumes an interrupted run from its last completed epoch, and runs under torchrun as DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.data import load_split
from mnistlab.data.loader import DeviceLoader
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.files.checkpoints import load_checkpoint, model_metadata, save_safetensors
from mnistlab.files.outdir import Claim, check_space, claim_dir, enter_scope, scoped
from mnistlab.files.runs import (
    environment,
    record_environment,
    remove_partial_files,
    write_json,
)
from mnistlab.models import build_model
from mnistlab.presets import Config, read_run_config, resolve
from mnistlab.training import distributed, tensorboard
from mnistlab.training.augment import RandomAffine
from mnistlab.training.callbacks import EarlyStopping, RunWriter, SignalStop, WeightAverage, run_bytes, set_rng_state
from mnistlab.training.device import (
    amp_dtype,
    amp_name,
    cpu_settings,
    cpu_supports_bf16,
    describe_precision,
    pick_device,
)
from mnistlab.training.engine import Callback, EpochMetrics, FitPlan, StepOptions, fit
from mnistlab.training.live import LiveObserver
from mnistlab.training.optim import make_optimizer, make_scheduler
from mnistlab.training.progress import Progress


@dataclass
class TrainResult:
    """What a training run produced: its directory, resolved config, per-epoch history and the model.

    With early stopping `model` holds the weights of `best_epoch` (the best on validation), which may be
    earlier than the last epoch of `history`; otherwise those of the last epoch.
    """

    run_dir: Path | None
    config: Config
    history: list[EpochMetrics]
    model: nn.Module = field(repr=False)
    best_epoch: int | None = None
    stopped_epoch: int | None = None

    @property
    def model_epoch(self) -> int:
        """The epoch whose weights `model` holds."""
        return self.best_epoch or len(self.history)

    @property
    def model_row(self) -> EpochMetrics:
        """The metrics row of `model_epoch`: the saved model's fp32 val/test accuracies."""
        return self.history[self.model_epoch - 1]

    @property
    def test_acc(self) -> float:
        """The fp32 test accuracy of `model` (what `mnistlab evaluate` prints for model.safetensors)."""
        return self.model_row["test_acc"]


@dataclass
class Data:
    train: DeviceLoader
    evals: dict[str, DeviceLoader]


def load_data(cfg: Config, device: torch.device, data_dir: str | Path | None = None,
              env: distributed.DistEnv | None = None) -> Data:
    """The Config's train/val/test splits as on-device loaders (val = last `cfg.val` training images; test =
    the first `cfg.test_subset` test images, all of them by default)."""
    env = env or distributed.DistEnv()
    images, labels = load_split(cfg.dataset, "train", data_dir)
    if cfg.subset is not None:
        images, labels = images[: cfg.subset], labels[: cfg.subset]
    if cfg.val >= len(labels):
        raise ConfigError(f"--val {cfg.val} leaves no training images (only {len(labels)} available)")
    common = dict(device=device, normalise=cfg.normalise, rank=env.rank, world_size=env.world_size,
                  channels_last=cfg.channels_last)
    n_train = len(labels) - cfg.val
    train = DeviceLoader(images[:n_train], labels[:n_train], cfg.batch_size, shuffle=True, seed=cfg.seed,
                         **common)
    evals = {}
    if cfg.val:
        evals["val"] = DeviceLoader(images[n_train:], labels[n_train:], cfg.test_batch_size, **common)
    test_images, test_labels = load_split(cfg.dataset, "test", data_dir)
    if cfg.test_subset is not None:
        test_images, test_labels = test_images[: cfg.test_subset], test_labels[: cfg.test_subset]
    evals["test"] = DeviceLoader(test_images, test_labels, cfg.test_batch_size, **common)
    return Data(train, evals)


def build(cfg: Config, device: torch.device) -> nn.Module:
    """The Config's model, seeded, on `device` (channels_last if asked)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **cfg.model_args).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def augmenter(cfg: Config):
    """The on-device augmentation the Config asks for, or None."""
    if not cfg.augment:
        return None
    return RandomAffine(**cfg.augment)


@scoped  # the run directory's claim (its lock) and the signal handlers end with the call
def train(
    preset: str = "notebook",
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    quiet: bool = False,
    write_run: bool = True,
    config: Config | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    callbacks: Sequence[Callback] = (),
    live: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train a preset (with overrides such as epochs=8, lr=2e-3, optimizer="sgd") and return the result.

    `resume=RUN_DIR` continues that run from its last completed epoch with its recorded config; of the
    overrides only `epochs` (more of them) and `device` may change it (`resumed_config`). `config` gives a
    ready Config instead of the preset, the overrides applied to it; `init_state` starts from given initial
    weights (compare uses it to give every optimizer the same start). `live` appends what the network is
    doing to the run directory's live.jsonl as it trains (`training.live`; it changes no number of the run).

    The run directory is locked while this trains (`files.outdir.claim_dir`): a directory holding anything
    is refused unless `overwrite` (replaced once the new run's first checkpoint is durable), and so is a disk
    without room for the run. SIGINT/SIGTERM stop at the next step and raise `errors.Interrupted`.
    """
    if resume is not None:
        cfg = resumed_config(resume, overrides, quiet)
    else:
        cfg = resolve(preset, base=config, **overrides)
    env = distributed.setup(cfg.device)  # the group is left at exit: a later train() reuses it
    claim = None
    if write_run and env.is_main:  # one writer, holding the directory's lock; refused before any training
        claim = claim_dir(resume if resume is not None else out, cfg.preset, resume=resume is not None,
                          overwrite=overwrite)
        check_space(claim.work, run_bytes(cfg, resume is not None), f"this {cfg.preset} run (checkpoints, model)")
    stop = enter_scope(SignalStop(claim, env.active, env.is_main))  # from here SIGINT/SIGTERM stop at a step
    prep = prepare(cfg, env, resume, data_dir, init_state)
    net = wrap(prep, cfg, env)
    run_dir = claim.work if claim is not None else None
    cbs = [*run_callbacks(prep, cfg, env, run_dir, quiet, callbacks, claim=claim, live=live, data_dir=data_dir),
           stop]  # last: a completed epoch is saved before a stop is raised
    stopped = prep.stopper is not None and prep.stopper.stopped_epoch is not None
    if resume is not None and env.is_main and not quiet:
        if stopped:
            print(f"{resume}: stopped early after epoch {prep.stopper.stopped_epoch}; nothing to do", flush=True)
        else:
            done = "; nothing to do" if prep.start_epoch >= cfg.epochs else ""
            print(f"resuming {resume} after epoch {prep.start_epoch}/{cfg.epochs}{done}", flush=True)
    plan = FitPlan(epochs=prep.start_epoch if stopped else cfg.epochs, start_epoch=prep.start_epoch,
                   scheduler=prep.scheduler, schedule_per_step=prep.schedule_per_step,
                   step=step_options(cfg, prep.amp), callbacks=cbs, history=prep.history,
                   eval_model=prep.averager.for_eval if prep.averager else None)
    history = fit(net, prep.optimizer, prep.data.train, prep.data.evals, plan)
    run_dir = claim.commit() if claim is not None else None  # a replacement is in place after its first epoch
    final = prep.model if prep.averager is None else prep.averager.average.module  # what was evaluated
    result = TrainResult(run_dir, cfg, history, final)
    if prep.stopper is not None and prep.stopper.best_state is not None:
        result.best_epoch, result.stopped_epoch = prep.stopper.restore(), prep.stopper.stopped_epoch
        if env.is_main and not quiet:
            print(early_stop_line(result), flush=True)
    if run_dir is not None:
        save_safetensors(final, run_dir / "model.safetensors", model_metadata(cfg, model_facts(result)))
    for board in (cb for cb in cbs if isinstance(cb, tensorboard.TensorBoardLogger)):
        board.summarise(final, history, prep.data.evals["test"])
    distributed.barrier(env)
    final.eval()
    return result


# What a resumed run may change: how long it trains and where. Anything else (the learning rate, the batch
# size, the precision, ...) would make its later epochs another run's: that is a new run.
RESUMABLE = ("epochs", "device")


def resumed_config(run_dir: str | Path, overrides: dict[str, Any], quiet: bool = True) -> Config:
    """The config `run_dir` recorded, with the overrides a resumed run may apply (`RESUMABLE`); any other
    override that would change it is a ConfigError naming it, as is extending a schedule that spans exactly
    the recorded epochs. Settings the file lacked are said (unless `quiet`)."""
    recorded, filled = read_run_config(run_dir)
    cfg = resolve(base=recorded, **overrides)
    before, after = recorded.to_dict(), cfg.to_dict()
    changed = [k for k in after if after[k] != before[k] and k not in RESUMABLE]
    if changed:
        said = ", ".join(f"{k} {before[k]!r} -> {after[k]!r}" for k in changed)
        raise ConfigError(f"--resume {run_dir} continues the run with its own settings; it cannot change {said} "
                          f"(only {' and '.join(RESUMABLE)} may change): start a new run with --out instead")
    if cfg.epochs != recorded.epochs and cfg.schedule in ("onecycle", "cosine"):
        raise ConfigError(f"--resume {run_dir}: its {cfg.schedule} schedule spans exactly {recorded.epochs} "
                          "epochs, so it cannot be extended; start a new run with more --epochs")
    if filled and not quiet:
        print(f"{run_dir}/config.json has no {', '.join(filled)} (an older mnistlab): their defaults apply",
              flush=True)
    return cfg


def model_facts(r: TrainResult) -> dict[str, Any]:
    """The saved model's epoch and fp32 accuracies (its metrics row), for the model file's metadata."""
    if not r.history:
        return {"test_acc": None}
    row = r.model_row
    facts = {"test_acc": row["test_acc"], "val_acc": row.get("val_acc"), "epoch": r.model_epoch}
    if r.config.early_stop:
        facts.update(best_epoch=r.best_epoch, stopped_epoch=r.stopped_epoch)
    return facts


def early_stop_line(r: TrainResult) -> str:
    """How early stopping ended, in one line."""
    row = r.model_row
    how = (f"stopped after epoch {r.stopped_epoch}: validation accuracy had not improved for "
           f"{r.config.early_stop} epoch(s)" if r.stopped_epoch else f"trained all {len(r.history)} epochs")
    return (f"early stopping: {how}; the model is epoch {r.model_epoch}'s, the best on validation "
            f"(val {row['val_acc']:.2f}%, test {row['test_acc']:.2f}%)")


# ---------------------------------------------------------------- the phases of a run
@dataclass
class Prepared:
    """What `prepare` made ready on this rank before training: where, on what, and from which epoch."""

    device: torch.device
    data: Data
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    schedule_per_step: bool
    amp: torch.dtype | None  # the autocast dtype training runs under; None: fp32
    history: list[EpochMetrics] = field(default_factory=list)
    start_epoch: int = 0
    averager: WeightAverage | None = None
    stopper: EarlyStopping | None = None


def prepare(cfg: Config, env: distributed.DistEnv, resume: str | Path | None, data_dir: str | Path | None,
            init_state: dict[str, torch.Tensor] | None) -> Prepared:
    """Phase 1, on this rank: device, data, model, optimizer and schedule, restored from the checkpoint when
    resuming. A failure on any rank stops every rank (`distributed.agree`), before the first collective."""
    prep, error = None, None
    try:
        device = distributed.rank_device(env, pick_device(cfg.device))
        if cfg.cuda_graphs and device.type != "cuda":
            raise ConfigError(f"--cuda-graphs needs a CUDA device; this run is on {device.type}")
        if cfg.cuda_graphs and env.active:  # DDP's gradient all-reduce hooks run outside the recorded graphs
            raise ConfigError("--cuda-graphs is for one process; under torchrun use --compile")
        distributed.per_rank_batch(cfg.batch_size, env)  # checks divisibility
        ckpt = None
        if resume is not None and (Path(resume) / "checkpoint.pt").exists():
            ckpt = load_checkpoint(Path(resume) / "checkpoint.pt")  # every rank loads the same file
        data = load_data(cfg, device, data_dir, env)
        model = build(cfg, device)
        if init_state is not None:
            model.load_state_dict(init_state)
        optimizer = make_optimizer(cfg, model.parameters(), device)
        scheduler, per_step = make_scheduler(cfg, optimizer, len(data.train))
        prep = Prepared(device, data, model, optimizer, scheduler, per_step, amp_dtype(cfg.amp, device))
        prep.averager = WeightAverage(model, cfg.ema, data.train) if cfg.ema else None
        if cfg.early_stop:  # watches (and keeps the best of) the weights that are evaluated
            evaluated = model if prep.averager is None else prep.averager.average.module
            prep.stopper = EarlyStopping(cfg.early_stop, evaluated)
        if ckpt is not None:
            restore(prep, ckpt, reseed=not env.active)  # DDP ranks reseed every epoch (distributed.RankSeed)
    except Exception as e:  # noqa: BLE001 - re-raised by agree, after telling the other ranks
        error = e
    distributed.agree(env, error)
    assert prep is not None
    last = prep.history[-1].get("seconds", 0.0) if prep.history else -1.0
    if resume is not None and not distributed.same_everywhere(env, [prep.start_epoch, last]):
        raise ConfigError(f"--resume {resume}: the ranks loaded different checkpoints; every node must read "
                          "the same run directory (shared storage)")
    return prep


def restore(prep: Prepared, ckpt: dict[str, Any], reseed: bool) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, RNG, history and the weight average."""
    prep.model.load_state_dict(ckpt["model"])
    prep.optimizer.load_state_dict(ckpt["optimizer"])
    if prep.scheduler is not None and ckpt.get("scheduler") is not None:
        prep.scheduler.load_state_dict(ckpt["scheduler"])
    if reseed:
        set_rng_state(ckpt["rng"])
    prep.history, prep.start_epoch = list(ckpt["history"]), int(ckpt["epoch"])
    if prep.averager is not None and ckpt.get("ema") is not None:
        prep.averager.average.load_state_dict(ckpt["ema"])
    if prep.stopper is not None and ckpt.get("early_stop") is not None:
        prep.stopper.load_state_dict(ckpt["early_stop"])


def wrap(prep: Prepared, cfg: Config, env: distributed.DistEnv) -> nn.Module:
    """Phase 2: what the loop trains: SyncBatchNorm under nccl, torch.compile, DDP. The wrappers share the
    model's parameters, so `prep.model` itself is what gets saved."""
    net, device = prep.model, prep.device
    if env.backend == "nccl":  # batch statistics over the global batch (SyncBatchNorm is CUDA-only)
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if cfg.compile or cfg.cuda_graphs:
        net = torch.compile(net, mode="reduce-overhead" if cfg.cuda_graphs else None)
    if env.active:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


def run_callbacks(prep: Prepared, cfg: Config, env: distributed.DistEnv, run_dir: Path | None, quiet: bool,
                  extra: Sequence[Callback] = (), claim: Claim | None = None, live: bool = False,
                  data_dir: str | Path | None = None) -> list[Callback]:
    """Phase 3: the engine callbacks, in the order they run: progress, per-rank seeding, weight averaging,
    the caller's, early stopping, the run directory's writer (`run_dir`: only the main rank writes; `claim`:
    its lock, and what it replaces), then TensorBoard, then (`live`) the live observer, so that an epoch's
    event follows its checkpoint."""
    cbs: list[Callback] = []
    if env.is_main and not quiet:
        print(describe_precision(cfg.amp, prep.amp, prep.device), flush=True)
        cbs.append(Progress(cfg.epochs))
    if env.active:
        cbs.append(distributed.RankSeed(cfg.seed, env.rank))
    if prep.averager is not None:
        cbs.append(prep.averager)
    cbs.extend(extra)
    if prep.stopper is not None:
        cbs.append(prep.stopper)
    if run_dir is not None:
        remove_partial_files(run_dir)
        write_json(run_dir / "config.json", cfg.to_dict())
        precision = amp_name(prep.amp)  # what "auto" chose; None: fp32
        now = environment(prep.device, env.world_size, env.backend, precision, cpu_supports_bf16())
        record_environment(run_dir / "env.json", {**now, **cpu_settings(prep.device)}, prep.start_epoch)
        writer = RunWriter(run_dir, cfg, prep.model, prep.optimizer, prep.scheduler,
                           prep.averager.average if prep.averager else None, prep.stopper, claim)
        writer.history = list(prep.history)
        cbs.append(writer)
        board = tensorboard.open_logger(lambda: writer.run_dir, cfg, precision or "fp32", prep.history)
        if board is not None:  # after RunWriter: no event is logged for an epoch its checkpoint lacks
            cbs.append(board)
        if live:
            cbs.append(LiveObserver(lambda: writer.run_dir, cfg, data_dir))
    return cbs


def step_options(cfg: Config, amp: torch.dtype | None) -> StepOptions:
    """How each step of this Config runs (autocast dtype `amp`, loss, augmentation, CUDA graphs)."""
    return StepOptions(amp=amp, label_smoothing=cfg.label_smoothing, double_softmax=cfg.double_softmax,
                       augment=augmenter(cfg), cuda_graphs=cfg.cuda_graphs)


def init_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The seeded initial weights a Config's model starts from (on the CPU)."""
    return {k: v.clone() for k, v in build(cfg, torch.device("cpu")).state_dict().items()}


__all__ = ["TrainResult", "train", "load_data", "build", "init_weights", "MnistlabError"]
