"""`mnistlab notebook`: the lab as a plain-PyTorch notebook; written for Jupyter/Colab, or executed."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.common import add_device_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notebook", help="the lab as a plain-PyTorch notebook: write it, or execute it with answers",
                       description="Write the lab notebook (plain PyTorch: data, network, loop, the four "
                                   "exercises, answers rendered from its own numbers) for Jupyter or Colab; with "
                                   "--execute, run it through a Jupyter kernel and save it with its outputs and "
                                   "an HTML copy.")
    p.add_argument("--out", help="the .ipynb to write (default mnist_lab.ipynb; with --execute "
                                 "runs/notebook-<timestamp>/mnist_lab.ipynb)")
    p.add_argument("--execute", action="store_true", help="run every cell and save the outputs, plus an HTML copy")
    p.add_argument("--quick", action="store_true", help="with --execute: 1,000 training images, 1-3 epochs")
    add_device_option(p)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="with --execute: train in bf16 autocast (auto: where the device computes it natively)")
    p.add_argument("--data-dir", default=None,
                   help="data root holding mnist/ (default: $MNISTLAB_DATA, else ~/.cache/mnistlab)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.errors import ConfigError
    from mnistlab.lab.notebook import execute, parameters_for, write_notebook

    if not args.execute:
        if args.quick or args.device or args.data_dir or args.amp != "auto":
            raise ConfigError("--quick, --device, --amp and --data-dir only apply with --execute")
        path = write_notebook(args.out or "mnist_lab.ipynb")
        print(f"wrote {path}: open it in Jupyter or upload it to Colab (Runtime > Change runtime type > GPU)")
        return 0
    if args.out:
        out = Path(args.out)
    else:
        from mnistlab.files.runs import new_run_dir

        out = new_run_dir("notebook") / "mnist_lab.ipynb"
    params = parameters_for(quick=args.quick, device=args.device, data_dir=args.data_dir, amp=args.amp)
    print(f"executing the lab notebook on {params['device_name']} "
          f"({'bf16 autocast' if params['bf16'] else 'fp32'}{', quick' if args.quick else ''}) -> {out}", flush=True)
    done = execute(out, parameters=params, echo=lambda line: print(line, flush=True))  # its epochs, live
    print(f"executed in {done.seconds:.0f} s: {done.ipynb}  html: {done.html}  files: {done.outputs}")
    return 0
