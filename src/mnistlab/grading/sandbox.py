"""A handed-in notebook executed as untrusted code: inside bubblewrap, with kernel-enforced limits.

The project's one notebook executor (`lab.notebook.execute`: papermill and a Jupyter kernel) runs whole
inside `bwrap`, so the notebook, its kernel and anything they start see only:

    the system's libraries (/usr and the loader's files in /etc) and the Python environment, read-only;
    MNIST, read-only, where notebooks look for it: mnistlab's data folder ($MNISTLAB_DATA) and
        torchvision's ./data/MNIST/raw;
    a scratch copy of its own student's folder (the working directory), and a private /tmp;

and nothing else of the host: no home folders, no other student, no rubric, no grades folder. The network is
unshared (only the sandbox's own loopback exists). Memory and the number of processes are capped by a cgroup
(v2, or v1's memory and pids controllers) where mnistlab may create one, else by rlimits (address space, where
an allocation past the limit fails with MemoryError; processes, which the kernel does not apply to root); the
wall time by killing the whole process group at the deadline.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMORY = 4 << 30  # bytes
PROCESSES = 256
TIMEOUT = 15 * 60  # seconds
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "localtime", "nsswitch.conf", "hosts", "passwd",
       "group", "ssl", "alternatives")
DATA = "/data/mnistlab"  # where MNIST appears inside the sandbox
WORK = "/work/student"  # the scratch copy of the student's folder


@dataclass
class Limits:
    memory: int = MEMORY
    processes: int = PROCESSES
    timeout: float = TIMEOUT


@dataclass
class Execution:
    """What happened when a notebook was executed: `status` is "ran", "error" (a cell raised), "timeout",
    "memory" (killed at the memory limit) or "failed" (the executor itself could not run)."""

    status: str
    seconds: float
    message: str = ""
    notebook: Path | None = None  # the executed copy, when there is one

    def json(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 1), "message": self.message,
                "notebook": str(self.notebook) if self.notebook else None}


def unavailable() -> str | None:
    """Why bubblewrap cannot sandbox a notebook here, or None when it can."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed (Debian: apt-get install bubblewrap; scripts/system-deps.sh)"
    probe = subprocess.run([bwrap, "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no reason given"])[0]
        return f"bubblewrap cannot create its namespaces here ({why}); user namespaces are probably disabled"
    return None


# ------------------------------------------------------------------ limits
class Cgroup:
    """A cgroup capping memory and processes for one notebook, or None where none can be made here."""

    def __init__(self, dirs: list[Path], version: int) -> None:
        self.dirs, self.version = dirs, version

    @classmethod
    def make(cls, limits: Limits) -> Cgroup | None:
        name = f"mnistlab-{uuid.uuid4().hex[:12]}"
        root = Path("/sys/fs/cgroup")
        try:
            if (root / "cgroup.controllers").is_file():  # v2
                group = root / name
                group.mkdir()
                (group / "memory.max").write_text(str(limits.memory))
                (group / "memory.swap.max").write_text("0") if (group / "memory.swap.max").exists() else None
                (group / "pids.max").write_text(str(limits.processes))
                return cls([group], 2)
            memory, pids = root / "memory" / name, root / "pids" / name
            memory.mkdir()
            pids.mkdir()
            (memory / "memory.limit_in_bytes").write_text(str(limits.memory))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
            (pids / "pids.max").write_text(str(limits.processes))
            return cls([memory, pids], 1)
        except OSError:
            for d in (root / name, root / "memory" / name, root / "pids" / name):
                if d.is_dir():
                    d.rmdir()
            return None

    def enter(self) -> None:
        """Move the calling process (the sandbox's first, before bwrap starts) into the group."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def oom_killed(self) -> bool:
        try:
            if self.version == 2:
                events = (self.dirs[0] / "memory.events").read_text().split()
                return int(events[events.index("oom_kill") + 1]) > 0
            control = (self.dirs[0] / "memory.oom_control").read_text().split()
            if "oom_kill" in control:
                return int(control[control.index("oom_kill") + 1]) > 0
            return int((self.dirs[0] / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError, IndexError):
            return False

    def remove(self) -> None:
        for d in self.dirs:
            for pid in (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def _rlimits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


# ------------------------------------------------------------------ the sandbox
def _python_paths() -> list[Path]:
    """What the executor needs of this Python: the environment, the interpreter it was made from, mnistlab."""
    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), _mnistlab_root()}
    paths.add(Path(os.path.realpath(sys.executable)).parent.parent)
    return sorted(p for p in paths if not str(p).startswith("/usr/"))


def bwrap_command(scratch: Path, mnist: Path, argv: list[str]) -> list[str]:
    """bwrap's command line: the read-only system and Python, MNIST read-only in both layouts, the scratch
    folder read-write as the working directory, a private /tmp; every namespace unshared (the network too)."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr",
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / link
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            cmd += ["--ro-bind", str(path), str(path)]
    for name in ETC:
        if (Path("/etc") / name).exists():
            cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for path in _python_paths():
        cmd += ["--ro-bind", str(path), str(path)]
    cmd += ["--ro-bind", str(mnist), f"{DATA}/mnist", "--bind", str(scratch), WORK,
            "--ro-bind", str(mnist), f"{WORK}/data/MNIST/raw", "--chdir", WORK,
            "--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "PATH", f"{Path(sys.executable).parent}:/usr/bin",
            "--setenv", "MNISTLAB_DATA", DATA, "--setenv", "MPLBACKEND", "Agg",
            "--setenv", "PYTHONPATH", str(_mnistlab_root()), "--"]
    return cmd + argv


def _mnistlab_root() -> Path:
    import mnistlab

    return Path(mnistlab.__file__).parents[1]


def execute_sandboxed(notebook: Path, folder: Path, out: Path, *, limits: Limits | None = None,
                      parameters: dict[str, Any] | None = None, data_dir: str | Path | None = None,
                      sandbox: bool = True) -> Execution:
    """Execute the handed-in `notebook` (inside the student's `folder`) into `out`, in a scratch copy of the
    folder. `sandbox=False` runs it without bubblewrap (the `--unsafe-no-sandbox` override), limits still on."""
    from mnistlab.data import dataset_dir

    limits = limits or Limits()
    mnist = dataset_dir("mnist", data_dir)
    with tempfile.TemporaryDirectory(prefix="mnistlab-run-") as tmp:
        scratch = Path(tmp) / "student"
        shutil.copytree(folder, scratch, symlinks=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        name = f"{notebook.stem}.executed.ipynb"
        rel = notebook.relative_to(folder)
        inner = [sys.executable, "-m", "mnistlab.grading.sandbox", str(rel), name, json.dumps(parameters or {})]
        if sandbox:
            argv = bwrap_command(scratch, mnist, inner)
            cwd = None
        else:
            argv, cwd = inner, scratch
        group = Cgroup.make(limits)

        def setup() -> None:
            if group is not None:
                group.enter()
            else:
                _rlimits(limits)

        env = None if sandbox else {**os.environ, "MNISTLAB_DATA": str(Path(mnist).parent)}
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, preexec_fn=setup, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = proc.communicate(timeout=limits.timeout)
            status = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = "timeout"
        seconds = time.perf_counter() - start
        oom = group.oom_killed() if group is not None else False
        if group is not None:
            group.remove()
        executed = scratch / name
        kept = None
        if executed.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            kept = Path(shutil.copy(executed, out))
        last = (output.strip().splitlines() or [""])[-1]
        if status == "timeout":
            return Execution("timeout", seconds, f"killed after {limits.timeout:g} s (the --timeout)", kept)
        if oom:
            return Execution("memory", seconds, f"killed at the memory limit ({limits.memory / 2**30:g} GiB)", kept)
        if proc.returncode == 0:
            return Execution("ran", seconds, "", kept)
        if proc.returncode == 3:  # under an address-space rlimit the allocation fails instead of being killed
            return Execution("memory" if ": MemoryError:" in last else "error", seconds, last, kept)
        return Execution("failed", seconds, last or f"exit code {proc.returncode}", kept)


# ------------------------------------------------------------------ a re-run compared with the hand-in
BAND = 1.0  # percentage points: two trainings of the same recipe differ by a few tenths (seed, device)
SETTINGS = ("1.1", "1.2", "1.3", "1.4", "1.5")  # what training noise cannot move


@dataclass
class RunOptions:
    """How `--execute` runs notebooks: the limits, the sandbox (or the unsafe override), where MNIST is, and
    where the executed copies are kept (None: discarded after the comparison)."""

    limits: Limits
    sandbox: bool = True
    data_dir: str | None = None
    keep: str | None = None


def has_parameters_cell(notebook: Path) -> bool:
    from mnistlab.grading.read import read_notebook

    return any("parameters" in c.tags for c in read_notebook(notebook).cells if c.kind == "code")


def rerun(notebook: Path, folder: Path | None, handed: Any, options: RunOptions, name: str) -> dict[str, Any]:
    """Execute a handed-in notebook and compare it with the hand-in (`handed`: its `checks.Checked`): the
    execution's status, whether questions 1-5 read the same from the executed copy, and Exercise 1's test
    accuracy against a band of BAND points (only when it ran as written: quick settings train less)."""
    from mnistlab.data import dataset_dir
    from mnistlab.grading.checks import examine
    from mnistlab.lab.notebook import parameters_for

    quick = has_parameters_cell(notebook)
    data = DATA if options.sandbox else dataset_dir("mnist", options.data_dir).parent  # where it sees MNIST
    params = parameters_for(quick=True, device="cpu", amp="off", data_dir=data) if quick else None
    with tempfile.TemporaryDirectory(prefix="mnistlab-rerun-") as tmp:
        if folder is None:  # a notebook in a folder shared with others: only it travels
            folder = Path(tmp) / "own"
            folder.mkdir()
            shutil.copy(notebook, folder / notebook.name)
            notebook = folder / notebook.name
        out = Path(options.keep or tmp) / f"{name}.ipynb"
        done = execute_sandboxed(notebook, folder, out, limits=options.limits, parameters=params,
                                 data_dir=options.data_dir, sandbox=options.sandbox)
        result = {**done.json(), "quick_settings": quick, "settings": None, "exercise1_test_acc": None,
                  "band": None}
        if done.notebook is None:
            return result
        again = examine(done.notebook, weights=None, shared_folder=True)
        result["notebook"] = str(done.notebook) if options.keep else None
        before, after = handed.report["questions"], again.report["questions"]
        result["settings"] = [f"{q}: {before[q]['found']} handed in, {after[q]['found']} executed"
                              for q in SETTINGS if None not in (before[q]["found"], after[q]["found"])
                              and before[q]["found"] != after[q]["found"]
                              and not (quick and q == "1.2")]  # quick settings train fewer epochs
        result["exercise1_test_acc"] = again.exercise1_test_acc
        if not quick and handed.exercise1_test_acc is not None and again.exercise1_test_acc is not None:
            result["band"] = abs(handed.exercise1_test_acc - again.exercise1_test_acc) <= BAND
        return result


def _inside(argv: list[str]) -> int:
    """The sandbox's side: run the notebook with the project's executor. Exit 0 when every cell ran, 3 when
    a cell raised (the message on the last line), 4 when the executor could not run it."""
    from mnistlab.lab.notebook import NotebookError, execute

    source, name, parameters = argv[0], argv[1], json.loads(argv[2])
    try:
        execute(Path(name).resolve(), parameters=parameters or None, source=source, cwd=Path.cwd(),
                timeout=None)
    except NotebookError as e:
        print(str(e).split("; the partly executed notebook")[0], flush=True)
        return 3 if "failed in cell" in str(e) else 4
    except Exception as e:  # noqa: BLE001 - whatever stops the executor, said in one line
        print(f"{type(e).__name__}: {e}", flush=True)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(_inside(sys.argv[1:]))
