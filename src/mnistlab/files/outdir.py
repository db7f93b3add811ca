"""Output directories: one writer at a time, never a silent overwrite, room enough before anything is written.

Every command that writes a directory of results (train, sweep, compare, lab, and any later one) takes it
with `claim_dir`:

- **One writer.** The claim holds an exclusive `fcntl.flock` on `<dir>/.lock` (the holder's process id and
  command line are written into it; the file is removed on release). The kernel drops the lock when the
  process ends, however it ends (SIGKILL included), so a `.lock` left behind is never stale: the next
  claimant simply takes it. A second writer is refused, naming the holder.
- **No silent overwrite.** A directory that holds anything is refused with what is there, unless the caller
  continues it (`resume`) or replaces it (`overwrite`). Replacing writes into a hidden sibling
  (`.<name>.new-*`), which `Claim.commit()` swaps into place (three renames, the old contents set aside in
  another hidden sibling first); the caller commits once its first checkpoint is durable. Until then the old
  contents are untouched, and a failure or an interruption before that leaves them so.
- **Room.** `check_space` refuses at once, with both numbers, what the file system cannot hold.

Claims taken inside a `scoped` call are released when that call returns or raises; elsewhere a claim is a
context manager. A process claiming a directory it already holds gets the same claim back (a command may
claim its directory, write into it, then call `train` into it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shlex
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mnistlab.errors import ConfigError, MnistlabError, WriteError, os_error_sentence
from mnistlab.files.runs import free_bytes, new_run_dir, read_json, read_metrics
from mnistlab.tables import pct
from mnistlab.tables import size as size_text

LOCK = ".lock"
F = TypeVar("F", bound=Callable[..., Any])


class DirInUse(MnistlabError):
    """The directory is locked by another process that writes into it."""


@dataclass(eq=False)
class Claim:
    """A directory this process writes: `path`, its final name, and `work`, where files go now (`path`, or
    the hidden sibling that replaces it at `commit()`)."""

    path: Path
    work: Path
    made: list[Path]  # the directories this claim made, deepest first (removed again, when empty, on failure)
    key: str
    fds: list[int] = field(default_factory=list)
    holders: int = 1

    @property
    def replacing(self) -> bool:
        """True until a replacement has been committed: `path` still holds the old contents."""
        return self.work != self.path

    def commit(self) -> Path:
        """Put the replacement in place (once; later calls do nothing) and return `path`."""
        if self.replacing:
            _exchange(self.work, self.path)  # `work` now names the old contents
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = self.path
        return self.path

    def release(self, failed: bool = False) -> None:
        """Let go of the directory (the last holder does): an uncommitted replacement is deleted, and with
        `failed` a directory this claim made that holds nothing is removed."""
        self.holders -= 1
        if self.holders > 0:
            return
        _HELD.pop(self.key, None)
        if self.replacing:
            shutil.rmtree(self.work, ignore_errors=True)
        if self.fds:  # while still held: a claimant that opened it re-checks which file it locked
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink()
        if failed and self.made and _contents(self.path) == []:
            with contextlib.suppress(OSError):
                for made in self.made:
                    made.rmdir()  # stops at the first that is not empty
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self.release(failed=kind is not None)


_HELD: dict[str, Claim] = {}
_scopes = threading.local()


def claim_dir(out: str | Path | None, name: str, *, kind: str = "run", resume: bool = False,
              overwrite: bool = False, root: str | Path = "runs") -> Claim:
    """Take the output directory `out` (None: a new `root/<name>-<timestamp>`) for writing.

    Refused with one line (MnistlabError): `out` is a file or lies under one; another process holds it; it
    holds anything and neither `resume` (continue what is there; it must exist) nor `overwrite` (replace it,
    see `Claim.commit`) is given. `kind` names what is written ("run": the refusal offers --resume and
    --overwrite; otherwise another --out). Registered with the innermost `scoped` call, if any.
    """
    if out is None and not resume:
        made = _missing(Path(root))
        path = new_run_dir(name, root=root)
        made.insert(0, path)
    else:
        path = Path(out if out is not None else ".")
        key = _key(path)
        if key in _HELD:
            held = _HELD[key]
            held.holders += 1
            return _in_scope(held)
        made = _make_dir(path, must_exist=resume)
    claim = Claim(path, path, made, _key(path))
    try:
        claim.fds.append(_lock(path))
        there = _contents(path)
        if there and not resume:
            if not overwrite:
                raise ConfigError(refusal(path, kind, there))
            claim.work = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
            os.chmod(claim.work, stat.S_IMODE(path.stat().st_mode))  # the permissions of what it replaces
            claim.fds.append(_lock(claim.work))
    except BaseException:
        claim.release(failed=True)
        raise
    _HELD[claim.key] = claim
    return _in_scope(claim)


def refusal(path: Path, kind: str, there: list[str]) -> str:
    """Why `path` is not written into, what it holds, and the ways on."""
    if (path / "config.json").exists():
        what = f"already holds {describe_run(path)}"
    else:
        shown = ", ".join(there[:3]) + (", ..." if len(there) > 3 else "")
        what = f"is not empty ({len(there)} entr{'y' if len(there) == 1 else 'ies'}: {shown})"
    if kind != "run":
        return f"{path} {what}; choose another --out"
    on = f"continue it with --resume {shlex.quote(str(path))}, " if (path / "config.json").exists() else ""
    return f"{path} {what}: {on}choose another --out, or pass --overwrite to replace it"


def describe_run(path: Path) -> str:
    """"a finished run (preset best, 8/8 epochs, test accuracy 99.61%)", from its files."""
    try:
        cfg = read_json(path / "config.json")
        rows = read_metrics(path) if (path / "metrics.jsonl").exists() else []
    except (MnistlabError, ValueError):
        return "a run directory (its files are unreadable)"
    state = "a finished run" if (path / "model.safetensors").exists() else "an unfinished run"
    facts = [f"preset {cfg.get('preset')}", f"{len(rows)}/{cfg.get('epochs')} epochs"]
    if rows and isinstance(rows[-1].get("test_acc"), int | float):
        facts.append(f"test accuracy {pct(rows[-1]['test_acc'])}")
    return f"{state} ({', '.join(facts)})"


def check_space(path: str | Path, need: int, what: str) -> None:
    """Refuse (WriteError) when the file system holding `path` has less than `need` bytes free for `what`."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise WriteError(f"not enough space in {path} for {what}: it needs about {size_text(need)} and "
                         f"{size_text(free)} is free; free some space or choose another --out")


# ---------------------------------------------------------------- scopes
def scoped(fn: F) -> F:
    """Decorate a function whose claims (and any context manager given to `enter_scope` during the call) are
    released when it returns or raises, the last taken first, told whether it failed."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        stacks = _scopes.__dict__.setdefault("stacks", [])
        with contextlib.ExitStack() as stack:
            stacks.append(stack)
            try:
                return fn(*args, **kwargs)
            finally:
                stacks.pop()

    return call  # type: ignore[return-value]


def enter_scope(cm: Any) -> Any:
    """Enter `cm` now and exit it when the innermost `scoped` call ends; without one, return `cm` unentered
    (the caller then uses it in a `with`)."""
    stacks = getattr(_scopes, "stacks", [])
    return stacks[-1].enter_context(cm) if stacks else cm


def _in_scope(claim: Claim) -> Claim:
    enter_scope(claim)
    return claim


# ---------------------------------------------------------------- the parts
def _key(path: Path) -> str:
    return str(path.resolve())


def _contents(path: Path) -> list[str]:
    """What `path` holds, leaving out its lock and temporary files that killed writers left."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n != LOCK and not (n.startswith(".") and n.endswith(".tmp")))


def _missing(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist, deepest first."""
    return [p for p in (path, *path.parents) if not p.exists()]


def _make_dir(path: Path, must_exist: bool) -> list[Path]:
    """Make `path` (and its parents) unless it is there; the directories made, deepest first. A file in the
    way is a ConfigError."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{path} is a file, not a directory; choose another --out" if p == path else
                                  f"{path}: {p} is a file, so no directory can be made under it")
            break
    if must_exist:
        if not path.is_dir():
            raise MnistlabError(f"{path}: not found (is it a run directory?)")
        return []
    made = _missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(os_error_sentence(e, f"cannot make the directory {path}")) from None
    return made


def _lock(path: Path) -> int:
    """An open descriptor holding the exclusive flock of `path`/.lock, with this process written into it."""
    lock = path / LOCK
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise WriteError(os_error_sentence(e, f"cannot lock {path} for writing")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").splitlines()
            os.close(fd)
            who = f"process {holder[0]}" + (f" ({holder[1]})" if len(holder) > 1 else "") if holder else \
                "another process"
            raise DirInUse(f"{path} is in use by {who}, which is writing into it; wait for it to end, or choose "
                           "another --out") from None
        try:
            here = os.stat(lock)
            mine = os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                break  # else the directory was swapped or removed meanwhile: lock the one there now
        except FileNotFoundError:
            pass
        os.close(fd)
    argv = ["mnistlab", *sys.argv[1:]] if "mnistlab" in Path(sys.argv[0] or "?").parts[-2:] else sys.argv
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{shlex.join(argv)}\n".encode(), 0)
    return fd


def held(path: str | Path) -> bool:
    """Whether a process holds `path`'s lock now (is writing into it). Asked with a shared lock taken and
    dropped at once, so it never creates a lock file; a writer claiming the directory in that instant is
    refused as if it were in use."""
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock, when taken
    return False


def _exchange(a: Path, b: Path) -> None:
    """Swap the directories `a` and `b` with three renames, `b` set aside in a hidden sibling first: a process
    killed between them leaves `b`'s contents whole in `.<b>.old-*` (Python has no renameat2's exchange)."""
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.old-", dir=b.parent))
    os.rename(b, aside / "x")
    os.rename(a, b)
    os.rename(aside / "x", a)
    aside.rmdir()
