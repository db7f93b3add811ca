"""`mnistlab grade`: a class's lab notebooks checked, with proposed points, feedback pages and a class page."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.check import add_grading_options, run_options
from mnistlab.cli.common import positive_int
from mnistlab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="grade a class: every notebook checked, points proposed, class.html",
                       description="SUBMISSIONS: a folder of .ipynb files (the student is the file's stem), a folder "
                                   "of folders (the folder's name), or an LMS .zip. Writes grades.csv, grades.json, "
                                   "feedback/<student>.html and class.html into --out. With --shard K/N, grades "
                                   "a stable share of the class into --out/shards; `mnistlab grade --out DIR` "
                                   "without SUBMISSIONS merges the shards there.")
    p.add_argument("submissions", metavar="SUBMISSIONS", nargs="?", help="folder or .zip; leave out to merge shards")
    p.add_argument("--out", metavar="DIR", required=True, help="where the grades go")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="notebooks checked in parallel")
    p.add_argument("--rubric", metavar="FILE", help="TOML: points per question (default: 1 each of the 10)")
    p.add_argument("--shard", metavar="K/N", help="grade only shard K of N of the students (for an array job)")
    p.add_argument("--quiet", action="store_true", help="no line per student")
    add_grading_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.grading.grade import grade_class, grade_shard, merge, parse_shard, read_rubric

    out = Path(args.out)
    run = run_options(args, keep=str((out / "executed").resolve()))
    progress = None if args.quiet else (lambda r: print(f"{r['student']}: {r['status']}", flush=True))
    if args.submissions is None:
        if args.shard or args.execute:
            raise ConfigError("--shard and --execute need SUBMISSIONS (the merge takes every shard in --out)")
        done = merge(out, args.rubric)
    elif args.shard:
        read_rubric(args.rubric)
        shard = parse_shard(args.shard)
        path = grade_shard(args.submissions, out, shard, args.jobs, args.data_dir, progress, run)
        print(f"shard {shard[0]}/{shard[1]}: {path}; when every shard is done: mnistlab grade --out {out}")
        return 0
    else:
        done = grade_class(args.submissions, out, args.jobs, args.rubric, args.data_dir, progress, run)
    statuses: dict[str, int] = {}
    for row in done["table"]:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    print(f"{done['students']} students: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    print(f"grades: {done['csv']}  class page: {done['html']}  feedback: {out / 'feedback'}")
    return 0
