"""The `mnistlab` command: one module per subcommand group, each a thin layer over the Python API.

Each module in COMMANDS exposes `add_parser(subparsers)`, which registers its subcommand(s) and sets
`func=handler` as the parser default; handlers take the parsed args and return an exit code.
This is the one place that turns a MnistlabError or an OSError into "error: ..." and exit code 2, and an
interruption into its line and 130 (SIGINT) or 143 (SIGTERM); the table is in docs/interrupting.md.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Any

from mnistlab import __version__
from mnistlab.errors import Interrupted, MnistlabError, os_error_sentence

# Subcommand modules, in the order `mnistlab --help` lists them.
COMMANDS = [
    "data",
    "train",
    "inspect",
    "predict",
    "explain",
    "evaluate",
    "export",
    "serve",
    "bench",
    "compare",
    "sweep",
    "tune",
    "lr_find",
    "lab",
    "notebook",
    "check",
    "grade",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2, without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnistlab",
        description="The 'MNIST with GPU' lab as a toolkit: real data, fast training, answers and reports.",
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mnistlab.cli.{name}").add_parser(sub)
    return parser


def run() -> None:
    """The `mnistlab` program (its console script and `python -m mnistlab`): the CPU settings a process that
    trains wants from its start (`prepare_cpu_process`, which may restart it once), then `main`."""
    from mnistlab.training.process import prepare_cpu_process

    prepare_cpu_process()
    raise SystemExit(main())


def main(argv: list[str] | None = None) -> int:
    """Run one command line (`sys.argv` when None) in this process as it is; return the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the subcommand
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.getsignal(signal.SIGTERM)
    handles = threading.current_thread() is threading.main_thread() and previous is not None
    if handles:  # SIGTERM ends a command as Ctrl-C does
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.func(args) or 0)
    except Interrupted as e:  # a run stopped by SIGINT/SIGTERM: what is saved and how to go on
        if e.message:
            print(e.message, file=sys.stderr)
        return e.exit_code
    except MnistlabError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the reader went away
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a bad path, an existing file, no permission, a full disk: one sentence
        if args.debug:
            raise
        print(f"error: {os_error_sentence(e)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        if handles:
            signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: Any) -> None:
    raise Interrupted(signum, "terminated (SIGTERM)")
