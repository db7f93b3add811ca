"""`mnistlab serve`: the draw-a-digit web app and prediction API for a trained model, and the runs explorer
(`--runs DIR`) (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from mnistlab.cli.common import positive_int
from mnistlab.errors import ConfigError, MnistlabError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web page to draw digits and see them classified, plus a JSON API",
                       description="Serve a trained model: a page to draw or upload a digit (GET /) and an "
                                   "API (POST /api/predict, GET /api/model, /api/samples, /api/health, /docs). "
                                   "With --runs DIR: the runs explorer (GET /runs, /api/runs) over every run "
                                   "directory under DIR, each run's model on its own draw page.")
    p.add_argument("--model", metavar="M", help="model file or run directory (default: the latest run in runs/, "
                                                "unless --runs is given)")
    p.add_argument("--runs", metavar="DIR", help="explore the run directories under DIR (read-only)")
    p.add_argument("--allow-train", action="store_true",
                   help="offer /train (start runs from the browser) on another address than loopback; on loopback "
                        "it is on with --runs. Training from the web spends this machine")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port (default 8000)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per inference (default 1: concurrent requests use the cores)")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a pickled model you trust")
    p.add_argument("--data-dir", help="data root for the gallery's test images (default: $MNISTLAB_DATA, else "
                                      "~/.cache/mnistlab)")
    p.set_defaults(func=run)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {text!r}")
    return value


def check_listen(host: str, port: int) -> None:
    """Fail early, in one line, when `host:port` cannot be listened on (address in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def train_offered(host: str, runs: str | None, allow_train: bool) -> bool:
    """Whether /train (runs started from the browser, which spend this machine) is offered: with a runs
    directory to write into, on loopback, or anywhere with --allow-train."""
    return runs is not None and (is_loopback(host) or allow_train)


def load(model: str | Path | None, trust_pickle: bool = False):
    """The LoadedModel for --model (default: the latest run)."""
    from mnistlab.inference.predict import load_model

    return load_model(model, trust_pickle=trust_pickle)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mnistlab.serve import create_app
    except ImportError as e:
        raise MnistlabError(f"serving needs the 'serve' extra ({e.name} is missing): "
                            "pip install 'mnistlab[serve]'") from None
    import torch

    if args.runs is not None and not Path(args.runs).is_dir():
        raise ConfigError(f"--runs {args.runs}: not a directory")
    if args.allow_train and args.runs is None:
        raise ConfigError("--allow-train needs --runs DIR: the runs started from the browser are written there")
    train = train_offered(args.host, args.runs, args.allow_train)
    loaded = load(args.model, args.trust_pickle) if args.model is not None or args.runs is None else None
    check_listen(args.host, args.port)
    app = create_app(loaded, data_dir=args.data_dir, runs_dir=args.runs, train=train)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: other machines can reach this server", flush=True)
    shown = f"http://[{args.host}]:{args.port}" if ":" in args.host else f"http://{args.host}:{args.port}"
    if loaded is not None:
        print(f"serving {loaded.name} from {loaded.path} at {shown}/  (Ctrl+C stops)", flush=True)
    if args.runs is not None:
        print(f"exploring the runs under {args.runs} at {shown}/runs  (Ctrl+C stops)", flush=True)
    if train:
        print(f"start a run and watch it learn at {shown}/train", flush=True)
    torch.set_num_threads(args.threads)
    # Open event streams (/train) would hold a graceful shutdown forever: they get 2 s to end.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0
