"""`mnistlab inspect`: Exercise 1, questions 1-5, from the preset, the model and the optimizer."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mnistlab.cli.common import add_training_options, overrides_from
from mnistlab.lab.inspect import inspect
from mnistlab.lab.report.sections import LAYER_COLUMNS as COLUMNS
from mnistlab.lab.report.sections import cell as _cell


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="answer Exercise 1 questions 1-5 from the code",
                       description="Batch size, epochs, print(model), a traced layer table, FLOPs and the "
                                   "optimizer with each hyper-parameter explained.")
    add_training_options(p)
    p.add_argument("--format", choices=["text", "md", "json"], default="text")
    p.set_defaults(func=run)


def markdown(info: dict[str, Any]) -> str:
    """The inspection as Markdown (the lab report renders the same blocks)."""
    from mnistlab.lab.report.blocks import block_md
    from mnistlab.lab.report.sections import inspect_blocks

    return "\n".join(block_md(b) for b in inspect_blocks(info))


def run(args: argparse.Namespace) -> int:
    info = inspect(args.preset, **overrides_from(args))
    if args.format == "json":
        print(json.dumps(info, indent=2))
    elif args.format == "md":
        print(f"```\n{info['print_model']}\n```\n")
        print(markdown(info))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        console.print(f"preset {info['preset']}: batch size {info['batch_size']}, epochs {info['epochs']}")
        console.print(info["print_model"], markup=False)
        table = Table(title=f"layers ({info['weight_layers']} with weights)")
        for c in COLUMNS:
            table.add_column(c)
        for row in info["layers"]:
            table.add_row(*(_cell(row[c]) for c in COLUMNS))
        console.print(table)
        console.print(f"total parameters {info['total_params']:,}; forward FLOPs per image "
                      f"{info['flops_per_image']:,}")
        opt = info["optimizer"]
        console.print(f"optimizer {opt['name']}")
        for k, v in opt["params"].items():
            console.print(f"  {k} = {v}: {opt['meanings'].get(k, '')}", markup=False)
    return 0
