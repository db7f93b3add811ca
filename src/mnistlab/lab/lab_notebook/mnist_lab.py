# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     name: mnist_lab.ipynb
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Neural Networks Part 2: MNIST with GPU
#
# The lab in plain PyTorch: the data read from MNIST's own files, the lab's network as an `nn.Module`, a training
# loop you can read line by line, and the four exercises, each with its code changes. The answers at the end are
# written from the numbers this notebook computed when it ran, so run every cell (Runtime > Run all) before
# handing it in.
#
# Everything here uses `torch`, `numpy` and `matplotlib` only. On Colab choose a GPU runtime (Runtime > Change
# runtime type > GPU): the whole notebook then takes a minute or two; on a laptop CPU a few minutes.

# %% [markdown]
# ## Parameters
#
# Every setting in one cell. Change one and run all cells again; `papermill` (and `mnistlab notebook --execute`)
# replace this cell's values when they run the notebook.

# %% tags=["parameters"]
epochs = 5  # Exercise 1: the lab's notebook trains for 5 epochs
lr = 1e-3  # Adam's learning rate in the lab's notebook
batch_size = 32  # the lab's batch size
train_subset = None  # None: all 60,000 training images; N: only the first N (a quick first look)
val_size = 10_000  # the last val_size of those images are held out as the validation split
device_name = "auto"  # "auto": CUDA, then Apple's MPS, then the CPU; or "cpu", "cuda", "cuda:1", "mps"
bf16 = "auto"  # bfloat16 autocast for training: "auto" (where the hardware computes it natively), True, False
data_dir = None  # None: $MNISTLAB_DATA, else $XDG_CACHE_HOME/mnistlab, else ~/.cache/mnistlab
download = False  # True: download MNIST with torchvision when the files are missing (needs internet)
seed = 0  # the initial weights and the order of the batches
more_epochs = 8  # Exercise 2: train Exercise 1's run on to this many epochs
other_lrs = [5e-4, 2e-3]  # Exercise 2: two other learning rates ...
other_lr_epochs = 3  # ... each trained for this many epochs, from the same initial weights
sgd_lr = 0.01  # Exercise 3: SGD's learning rate, with momentum 0.9 and without
sgd_epochs = 3  # Exercise 3: epochs of each SGD run, compared with Exercise 1's epoch by epoch (up to 5)
n_samples = 10  # Exercise 4: training samples classified by the reloaded model
out_dir = "mnist_lab_outputs"  # the CSV, the figures and the saved model go here
progress_bars = True  # a bar per epoch while it runs (papermill turns it off: a saved bar is noise)

# %%
import copy
import gzip
import os
import platform
import struct
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
from IPython.display import Markdown, display
from matplotlib.ticker import MaxNLocator
from torch.utils.data import DataLoader, TensorDataset

try:  # a progress bar for each epoch (tqdm comes with Jupyter and Colab); without it, one line per epoch
    from tqdm import tqdm
except ImportError:
    tqdm = None

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
print(f"torch {torch.__version__}, numpy {np.__version__}; outputs in {out.resolve()}")

# %% [markdown]
# ## Device
#
# This is the "with GPU" lab: use a CUDA GPU when there is one, then an Apple GPU (MPS), else the CPU.
#
# Training precision: float32 by default. Where the hardware computes bfloat16 natively (NVIDIA GPUs from
# Ampere on; CPUs with AVX512-BF16 or AMX), `bf16 = "auto"` trains under `torch.autocast(..., torch.bfloat16)`:
# the matrix products run in bf16 (about 1.5x faster on such a CPU for this network) while the weights,
# the optimizer and every evaluation stay float32. Elsewhere bf16 would be emulated and slower, so it stays off.

# %%
if device_name == "auto":
    if torch.cuda.is_available():
        device_name = "cuda"
    elif torch.backends.mps.is_available():
        device_name = "mps"
    else:
        device_name = "cpu"
device = torch.device(device_name)
if device.type == "cuda":
    where = f"GPU: {torch.cuda.get_device_name(device)}"
elif device.type == "mps":
    where = "Apple GPU (MPS)"
else:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""  # Linux
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    where = f"CPU: {cpu}, {torch.get_num_threads()} threads"
    # Adam's running averages decay into tiny "denormal" floats that CPUs compute very slowly: flush them to zero.
    torch.set_flush_denormal(True)
if bf16 == "auto":
    if device.type == "cuda":
        bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    elif device.type == "cpu":
        bf16 = " avx512_bf16" in cpuinfo or " amx_bf16" in cpuinfo
    else:
        bf16 = False
print(f"device: {device} ({where}); training in {'bf16 autocast' if bf16 else 'fp32'}")

# %% [markdown]
# ## Data preparation
#
# MNIST comes as four IDX files: a 4-byte magic number (`0x00000803` for images, `0x00000801` for labels), the
# sizes as big-endian 32-bit integers, then one byte per pixel or label. We read them with numpy and check the
# magic number and the shapes. `mnistlab data fetch` downloads and verifies them into the default folder;
# torchvision's `MNIST(root, download=True)` keeps the same files in `root/MNIST/raw`.

# %%
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MAGIC = {3: 0x00000803, 1: 0x00000801}  # number of dimensions -> magic number


def default_data_dir():
    if os.environ.get("MNISTLAB_DATA"):
        return Path(os.environ["MNISTLAB_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "mnistlab"


def find_file(name, folders):
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path, ndim):
    """An IDX file as a numpy array of uint8, after checking its magic number and its length."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    (magic,) = struct.unpack(">I", raw[:4])
    assert magic == MAGIC[ndim], f"{path}: magic {magic:#010x}, expected {MAGIC[ndim]:#010x}"
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    assert len(raw) == 4 + 4 * ndim + int(np.prod(shape)), f"{path}: length does not match the shape {shape}"
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


root = Path(data_dir).expanduser() if data_dir else default_data_dir()
folders = [root / "mnist", root / "MNIST" / "raw", root]
names = [name for pair in FILES.values() for name in pair]
if download and any(find_file(name, folders) is None for name in names):
    from torchvision.datasets import MNIST  # only for the download

    MNIST(root, train=True, download=True)
    MNIST(root, train=False, download=True)
missing = [name for name in names if find_file(name, folders) is None]
if missing:
    message = (f"MNIST not found: {', '.join(missing)} missing in {root / 'mnist'}. Get the files with "
               "`pip install mnistlab && mnistlab data fetch` (set data_dir to where it puts them if you pass "
               "--data-dir), or set download = True in the parameters cell to download them with torchvision "
               "(needs internet), then run the notebook again.")
    print(message)
    raise SystemExit(message)

arrays = {}
for split, (images_file, labels_file) in FILES.items():
    arrays[split] = (read_idx(find_file(images_file, folders), 3), read_idx(find_file(labels_file, folders), 1))
assert arrays["train"][0].shape == (60000, 28, 28) and arrays["train"][1].shape == (60000,)
assert arrays["test"][0].shape == (10000, 28, 28) and arrays["test"][1].shape == (10000,)
print({split: (images.shape, labels.shape) for split, (images, labels) in arrays.items()})

# %% [markdown]
# Pixels become floats in [0, 1] with one channel, exactly what torchvision's `ToTensor()` does (the lab's
# notebook uses no other transform). The last `val_size` training images are held out as a **validation
# split**: choices (how many epochs? which learning rate?) are made on it, and the test set is only reported.
# All images stay in memory as tensors, so no worker processes are needed.

# %%
def to_tensors(images, labels):
    x = torch.from_numpy(images.copy()).float().div(255).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]
    return x, torch.from_numpy(labels.astype(np.int64))


x_all, y_all = to_tensors(*arrays["train"])
x_test, y_test = to_tensors(*arrays["test"])
n = train_subset or len(x_all)
x_train, y_train = x_all[: n - val_size], y_all[: n - val_size]
x_val, y_val = x_all[n - val_size: n], y_all[n - val_size: n]
print(f"train {tuple(x_train.shape)}, validation {tuple(x_val.shape)}, test {tuple(x_test.shape)}; "
      f"pixels in [{x_train.min():.0f}, {x_train.max():.0f}]")

train_set = TensorDataset(x_train, y_train)


def train_loader_for(seed):
    """Batches of the training set, shuffled in an order fixed by `seed`: every run given the same seed sees
    the same batches in the same order."""
    return DataLoader(train_set, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")


train_loader = train_loader_for(seed)
val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=1000)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=1000)

images, labels = next(iter(train_loader))
fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for ax, image, label in zip(axes.flat, images, labels, strict=False):
    ax.imshow(image[0], cmap="gray")
    ax.set_title(int(label))
    ax.axis("off")
fig.suptitle("the first training batch (shuffled)")
plt.show()

# %% [markdown]
# ## The network
#
# The lab's network (`NnDigitsClassifier`): a 3x3 convolution with 32 filters, ReLU, the 32 x 26 x 26 = 21,632
# values flattened, a dense layer of 128 with ReLU, and 10 outputs.
#
# `forward()` returns the raw scores (**logits**). The lab's notebook ended `forward()` with a softmax and then
# trained with `nn.CrossEntropyLoss`, which applies log-softmax itself: a **double softmax**. The network still
# learns, but the loss sees probabilities in [0, 1] instead of scores: it cannot go below log(1 + 9/e) = 1.46
# (it plateaus near 1.47 instead of approaching 0) and its gradients shrink as the network grows confident.
# Returning logits and applying softmax only to read probabilities avoids both.

# %%
class NnDigitsClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1)  # 1x28x28 -> 32x26x26
        self.act1 = nn.ReLU()
        self.flatten = nn.Flatten()  # -> 21,632
        self.d1 = nn.Linear(32 * 26 * 26, 128)
        self.act2 = nn.ReLU()
        self.d2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.flatten(self.act1(self.conv1(x)))
        return self.d2(self.act2(self.d1(x)))  # logits: no softmax here


torch.manual_seed(seed)
model = NnDigitsClassifier().to(device)
initial_state = copy.deepcopy(model.state_dict())  # Exercises 2 and 3 start again from these very weights
n_params = sum(p.numel() for p in model.parameters())
print(model)
print(f"parameters: {n_params:,}")

# %% [markdown]
# ## The training loop
#
# `train_one_epoch` goes once over the training batches; `evaluate` measures a split without training. Both
# count exactly: correct predictions / images seen.

# %%
loss_fn = nn.CrossEntropyLoss()


def train_one_epoch(model, loader, optimizer, desc="train"):
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = tqdm(loader, desc=desc, leave=False, mininterval=1) if tqdm and progress_bars else loader
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # PyTorch adds every backward pass's gradients to .grad: clear them, or each step would use the sum of
        # all the gradients so far.
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)  # summed on the device: no wait for the GPU at every step
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return float(total_loss) / seen, 100.0 * int(correct) / seen


@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(loss_fn(logits, y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, 100.0 * correct / seen


def fit(model, optimizer, loader, epochs, name, first_epoch=1, val=True, test=True):
    """Train for `epochs` epochs; one row per epoch with the train, validation and test loss and accuracy."""
    rows = []
    for epoch in range(first_epoch, first_epoch + epochs):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, loader, optimizer, desc=f"{name} epoch {epoch}")
        row = {"run": name, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        if val:
            row["val_loss"], row["val_acc"] = evaluate(model, val_loader)
        if test:
            row["test_loss"], row["test_acc"] = evaluate(model, test_loader)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{name} epoch {epoch}: " + ", ".join(f"{k} {row[k]:.2f}%" for k in row if k.endswith("_acc"))
              + f", train loss {train_loss:.4f} ({row['seconds']:.1f} s)", flush=True)
    return rows


def show_table(rows, columns):
    header = " | ".join(f"{c:>10}" for c in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = [f"{row[c]:.2f}%" if c.endswith("_acc") else f"{row[c]:.4f}" if c.endswith("_loss")
                 else str(row[c]) for c in columns]
        lines.append(" | ".join(f"{c:>10}" for c in cells))
    print("\n".join(lines))


def adam(model, lr):
    # fused=True: one kernel updates all the weights; the same Adam, twice as fast on a CPU for this network.
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cuda", "cpu"))


# %% [markdown]
# ## Exercise 1
#
# Questions 1-5, answered by reading the objects themselves.

# %%
optimizer = adam(model, lr)

print("Q1 batch size:", train_loader.batch_size)
print("Q2 epochs:", epochs)
shapes = {}
hooks = [m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
         for name, m in model.named_children()]
with torch.no_grad():
    model(x_train[:1].to(device))
for h in hooks:
    h.remove()
children = list(model.named_children())
layers = []
for i, (name, m) in enumerate(children):
    if not list(m.parameters()):
        continue
    after = children[i + 1][1] if i + 1 < len(children) else None
    layer = {"name": name, "type": type(m).__name__, "output": "x".join(map(str, shapes[name])),
             "neurons": int(np.prod(shapes[name])), "activation": type(after).__name__
             if isinstance(after, nn.ReLU) else "none (logits)", "params": sum(p.numel() for p in m.parameters())}
    if isinstance(m, nn.Conv2d):
        layer["filter"] = f"{m.kernel_size[0]}x{m.kernel_size[1]}, {m.out_channels} filters, stride {m.stride[0]}"
    layers.append(layer)
print(f"Q3 layers with weights: {len(layers)} ({', '.join(layer['name'] for layer in layers)}); "
      f"modules: {len(children)}")
print("Q4 the layers:")
for layer in layers:
    print("  ", layer)
group = optimizer.param_groups[0]
adam_args = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad")}
print(f"Q5 optimizer: {type(optimizer).__name__}, {adam_args}; loss: {type(loss_fn).__name__}")

# %% [markdown]
# Questions 6 and 7: train for `epochs` epochs and note the accuracy after each one, on the training batches
# (as they were seen during the epoch), the validation split and the test set.

# %%
history = fit(model, optimizer, train_loader, epochs, "adam")
columns = ["epoch", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss"]
show_table(history, columns)
csv_path = out / "exercise1_accuracy.csv"
csv_path.write_text("\n".join([",".join(columns)] + [",".join(f"{row[c]:.4f}" if isinstance(row[c], float)
                                                                   else str(row[c]) for c in columns)
                                                          for row in history]) + "\n")
print(f"saved {csv_path.name} (in out_dir)")
ex1_test_acc = history[-1]["test_acc"]

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for split in ("train", "val", "test"):
    ax1.plot([r["epoch"] for r in history], [r[f"{split}_acc"] for r in history], "o-", label=split)
for split in ("train", "val"):
    ax2.plot([r["epoch"] for r in history], [r[f"{split}_loss"] for r in history], "o-", label=split)
ax1.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy per epoch")
ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
ax2.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
ax1.legend()
ax2.legend()
fig.savefig(out / "exercise1_curves.png", dpi=100, bbox_inches="tight")
plt.show()

# %% [markdown]
# Question 6 from the curve: is the last epoch's validation accuracy above the best of the earlier epochs, and
# by more than the noise of an accuracy measured on the validation images? (An accuracy p on n images has a 95%
# interval of about ±1.96·sqrt(p(1-p)/n).) Exercise 2 then trains this very run on, which answers it directly.

# %%
def halfwidth(acc, n):
    """Half-width, in percentage points, of the 95% interval of an accuracy `acc` (%) measured on n images."""
    p = acc / 100
    return 100 * 1.96 * (p * (1 - p) / n) ** 0.5


last = history[-1]
previous = max(history[:-1], key=lambda r: r["val_acc"]) if len(history) > 1 else last  # the best before
val_gain = last["val_acc"] - previous["val_acc"]
val_noise = halfwidth(last["val_acc"], len(x_val))
gap = last["train_acc"] - last["val_acc"]
if val_gain > val_noise:
    q6 = "still improving"
elif val_gain < -val_noise:
    q6 = "getting worse (over-fitting)"
else:
    q6 = "levelling off"
print(f"validation: best before the last epoch {previous['val_acc']:.2f}% (epoch {previous['epoch']}), "
      f"last epoch {last['val_acc']:.2f}% "
      f"({val_gain:+.2f} pt; noise ±{val_noise:.2f} pt), train - validation gap {gap:+.2f} pt: {q6}")

# %% [markdown]
# ## Exercise 2
#
# Epochs and learning rate. Exercise 1's run is trained on to `more_epochs` epochs, and two other learning
# rates are trained from the same initial weights and in the same batch order. Each (learning rate, epochs)
# point is judged by **validation** accuracy; the test set is used once, for the chosen one.

# %%
grid = [{"lr": lr, **r} for r in history]
best = max(grid, key=lambda r: r["val_acc"])
best_state = copy.deepcopy(model.state_dict())  # the weights of the best point so far (epoch `epochs`)
for row in fit(model, optimizer, train_loader, more_epochs - epochs, "adam", first_epoch=epochs + 1, test=False):
    grid.append({"lr": lr, **row})
    if row["val_acc"] > best["val_acc"]:
        best, best_state = grid[-1], copy.deepcopy(model.state_dict())
for other in other_lrs:
    candidate = NnDigitsClassifier().to(device)
    candidate.load_state_dict(initial_state)
    opt = adam(candidate, other)
    for row in fit(candidate, opt, train_loader_for(seed), other_lr_epochs, f"adam lr {other:g}", test=False):
        grid.append({**row, "lr": other})
        if row["val_acc"] > best["val_acc"]:
            best, best_state = grid[-1], copy.deepcopy(candidate.state_dict())

for r in grid:
    r["chosen"] = "<-- chosen" if r is best else ""
show_table(grid, ["lr", "epoch", "val_acc", "train_acc", "chosen"])

chosen = NnDigitsClassifier().to(device)
chosen.load_state_dict(best_state)
chosen_test_loss, chosen_test_acc = evaluate(chosen, test_loader)
n_test = len(x_test)
test_noise = halfwidth(chosen_test_acc, n_test)
noise_989 = halfwidth(98.9, n_test)
gain = chosen_test_acc - ex1_test_acc
print(f"chosen: lr {best['lr']:g}, {best['epoch']} epochs (validation {best['val_acc']:.2f}%): "
      f"test {chosen_test_acc:.2f}% ± {test_noise:.2f} pt, against Exercise 1's {ex1_test_acc:.2f}% "
      f"({gain:+.2f} pt)")
print(f"the 95% interval of an accuracy of 98.9% on {n_test:,} images: ±{noise_989:.2f} pt")
continued_best = max(r["val_acc"] for r in grid if r["lr"] == lr)  # question 6, answered directly
continued_words = ("more epochs helped, by more than the noise" if continued_best - last["val_acc"] > val_noise
                   else "within the noise, so more epochs bring little")
print(f"question 6: trained on to {more_epochs} epochs, best validation {continued_best:.2f}% "
      f"({continued_best - last['val_acc']:+.2f} pt after epoch {epochs}): {continued_words}")

fig, ax = plt.subplots(figsize=(6, 3.5))
for value in sorted({r["lr"] for r in grid}):
    rows = [r for r in grid if r["lr"] == value]
    ax.plot([r["epoch"] for r in rows], [r["val_acc"] for r in rows], "o-", label=f"lr {value:g}")
ax.plot([best["epoch"]], [best["val_acc"]], "k*", markersize=14, label="chosen")
ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Exercise 2: validation accuracy")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.legend()
fig.savefig(out / "exercise2_validation.png", dpi=100, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Exercise 3
#
# SGD instead of Adam: every optimizer in `torch.optim` subclasses `torch.optim.Optimizer`, so the change is one
# constructor. For a fair comparison both SGD runs start from Exercise 1's initial weights (the deep copy of the
# `state_dict` taken before training) and see the same batches in the same order (the same seeded shuffle).

# %%
sgd_runs = {}
sgd_initial = {}
for name, momentum in (("sgd momentum 0.9", 0.9), ("sgd", 0.0)):
    net = NnDigitsClassifier().to(device)
    net.load_state_dict(initial_state)
    sgd_initial[name] = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=sgd_lr, momentum=momentum)
    print(f"{name}: {type(opt).__name__}, lr {opt.param_groups[0]['lr']:g}, momentum {momentum}")
    sgd_runs[name] = fit(net, opt, train_loader_for(seed), sgd_epochs, name, val=False)  # compared on test
same_start = all(torch.equal(state[k], initial_state[k]) for state in sgd_initial.values() for k in initial_state)
print("SGD runs start from Adam's initial weights:", same_start)

# test accuracy per epoch: Adam is Exercise 1's own run (question 7's numbers), not a new one
table = [{"epoch": adam_row["epoch"], "adam_acc": adam_row["test_acc"],
          **{f"{key}_acc": sgd_runs[name][i]["test_acc"] for key, name in (("sgd_mom", "sgd momentum 0.9"),
                                                                           ("sgd", "sgd"))}}
         for i, adam_row in enumerate(history[:sgd_epochs])]
show_table(table, ["epoch", "adam_acc", "sgd_mom_acc", "sgd_acc"])

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, rows in {f"adam lr {lr:g}": history[:sgd_epochs], **sgd_runs}.items():
    ax.plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], "o-", label=name)
ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Exercise 3: Adam and SGD, same start, same batches")
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.legend()
fig.savefig(out / "exercise3_optimizers.png", dpi=100, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Exercise 4
#
# Save the trained network (the one chosen in Exercise 2) and load it back into a fresh model. The
# `state_dict` holds only tensors; `torch.load(..., weights_only=True)` reads tensors and nothing else.

# %%
weights_path = out / "mnist_cnn_state_dict.pt"
torch.save(chosen.state_dict(), weights_path)

reloaded = NnDigitsClassifier().to(device)
reloaded.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
reloaded.eval()
chosen.eval()
batch = x_test[:256].to(device)
with torch.no_grad():
    same_outputs = torch.equal(chosen(batch), reloaded(batch))
assert same_outputs, "the reloaded model's outputs differ from the original's"
print(f"saved {weights_path.name} ({weights_path.stat().st_size / 1e6:.1f} MB); reloaded outputs equal the "
      f"original's on {len(batch)} test images: {same_outputs}")

# %% [markdown]
# The reloaded model classifies some samples of the training set.

# %%
picks = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n_samples]
with torch.no_grad():
    probabilities = torch.softmax(reloaded(x_train[picks].to(device)), dim=1).cpu()
confidence, predicted = probabilities.max(1)
fig, axes = plt.subplots(1, n_samples, figsize=(1.4 * n_samples, 2))
for ax, i, pred in zip(np.atleast_1d(axes), picks, predicted, strict=True):
    ax.imshow(x_train[i, 0], cmap="gray")
    ax.set_title(f"true {int(y_train[i])}\npred {int(pred)}", color="black" if pred == y_train[i] else "red")
    ax.axis("off")
fig.savefig(out / "exercise4_samples.png", dpi=100, bbox_inches="tight")
plt.show()
samples_right = int((predicted == y_train[picks]).sum())
for i, pred, conf in zip(picks.tolist(), predicted.tolist(), confidence.tolist(), strict=True):
    print(f"training image {i}: true {int(y_train[i])}, predicted {pred} (probability {conf:.4f})")
print(f"{samples_right} of {n_samples} right")

# %% [markdown]
# The lab also names the other route of PyTorch's tutorial: **save the entire model** with `torch.save(model,
# path)`. That pickles the object, and unpickling can run any code the file contains. This is why `torch.load`
# refuses such a file by default (`weights_only=True` since PyTorch 2.6), and loading it takes
# `weights_only=False`: only do that with a file you made yourself or whose source you trust. It also needs the
# class `NnDigitsClassifier` defined under the same name when loading. The `state_dict` above needs neither.

# %%
entire_path = out / "mnist_cnn_entire_model.pt"
torch.save(chosen, entire_path)
try:
    torch.load(entire_path, weights_only=True)
    refused = False
except Exception as error:  # the safe loader will not unpickle a model object
    refused = True
    print("weights_only=True refuses it:", type(error).__name__)
entire = torch.load(entire_path, map_location=device, weights_only=False)  # trusted: we made this file
with torch.no_grad():
    entire_same = torch.equal(entire.eval()(batch), chosen(batch))
print(f"the entire model reloaded from {entire_path.name}: outputs equal: {entire_same}")

# %% [markdown]
# ## Answers
#
# Written from this execution's own variables: run all cells again and they change with the numbers.

# %%
def answer(text):
    display(Markdown(text))


def pct(value):
    return f"{value:.2f}%"


# %% tags=["answer"]
layer_lines = "\n".join(
    f"- `{layer['name']}`: {layer['type']}, output {layer['output']} ({layer['neurons']:,} neurons), "
    f"activation {layer['activation']}" + (f", filter {layer['filter']}" if "filter" in layer else "")
    for layer in layers)
answer(f"""### Exercise 1
**Q1. Batch size.** {train_loader.batch_size} images per training step.

**Q2. Epochs.** {epochs}.

**Q3. Layers.** {len(layers)} layers with weights ({", ".join(layer["name"] for layer in layers)}); with the ReLUs
and the flatten step, {len(children)} modules. {n_params:,} parameters.

**Q4. The layers.**
{layer_lines}

**Q5. Optimizer.** {type(optimizer).__name__}: learning rate {adam_args["lr"]:g}, betas {adam_args["betas"]}
(decay rates of the running averages of the gradient and of its square), eps {adam_args["eps"]:g} (added to the
denominator for stability), weight decay {adam_args["weight_decay"]}, amsgrad {adam_args["amsgrad"]}. Loss:
{type(loss_fn).__name__}.""")

# %% tags=["answer"]
why = ": the network fits its training images better than new ones, so more epochs mostly widen that gap"
answer(f"""**Q6. Will the network improve with more epochs?** Validation accuracy was {pct(previous["val_acc"])} at
best before the last epoch and {pct(last["val_acc"])} after it ({val_gain:+.2f} pt), against a noise of
±{val_noise:.2f} pt on {len(x_val):,} validation images: **{q6}**. Training accuracy reached
{pct(last["train_acc"])}, {gap:+.2f} pt {"above" if gap >= 0 else "below"} validation{why if gap > val_noise else ""}.
Training the same run on to {more_epochs} epochs (Exercise 2) gave {pct(continued_best)} at best on validation
({continued_best - last["val_acc"]:+.2f} pt): {continued_words}.

**Q7. Accuracy after each epoch** (saved in `{csv_path.name}`):

""" + "\n".join(f"- epoch {r['epoch']}: train {pct(r['train_acc'])}, validation {pct(r['val_acc'])}, "
                f"test {pct(r['test_acc'])}" for r in history))

# %% tags=["answer"]
answer(f"""### Exercise 2
Tried: learning rate {lr:g} for 1 to {more_epochs} epochs, and {", ".join(f"{v:g}" for v in other_lrs)} for 1 to
{other_lr_epochs} epochs, from the same initial weights. Chosen on validation: **learning rate {best["lr"]:g},
{best["epoch"]} epochs** (validation {pct(best["val_acc"])}). Its test accuracy: **{pct(chosen_test_acc)}**,
against {pct(ex1_test_acc)} for Exercise 1's {epochs} epochs ({gain:+.2f} pt).

Why there is little room: an accuracy measured on {n_test:,} test images is itself uncertain. At 98.9% its 95%
interval is ±{noise_989:.2f} pt, and here ±{test_noise:.2f} pt, so a gain of a few tenths of a point is hard to
tell from luck.""")

# %% tags=["answer"]
sgd_lines = "\n".join(f"- epoch {r['epoch']}: Adam {pct(r['adam_acc'])}, SGD with momentum {pct(r['sgd_mom_acc'])}, "
                      f"SGD without momentum {pct(r['sgd_acc'])}" for r in table)
final = table[-1]
leader = max(("Adam", "adam_acc"), ("SGD with momentum", "sgd_mom_acc"), ("SGD without momentum", "sgd_acc"),
             key=lambda k: final[k[1]])[0]
answer(f"""### Exercise 3
SGD with learning rate {sgd_lr:g}, with momentum 0.9 and without, from Adam's initial weights (same start:
{same_start}) and in the same batch order. Test accuracy per epoch against Exercise 1's (question 7):

{sgd_lines}

After {final["epoch"]} epochs **{leader}** leads. Adam adapts each weight's step size and reaches a high accuracy
in the first epoch; plain SGD at this learning rate moves slowly, and momentum (a running average of the
gradients) speeds it up.""")

# %% tags=["answer"]
answer(f"""### Exercise 4
The chosen model was saved with `torch.save(model.state_dict(), "{weights_path.name}")` and loaded into a fresh
`NnDigitsClassifier` with `torch.load(..., weights_only=True)`; its outputs equal the original's: **{same_outputs}**.
It classified {samples_right} of {n_samples} training samples right. Saving the entire model
(`torch.save(model, ...)`) also works (outputs equal: {entire_same}), but loading it unpickles the file, which can
run code: `weights_only=True` refuses it ({refused}) and `weights_only=False` is only for files you trust.""")
