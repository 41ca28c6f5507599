"""``dsh report``: each class's typical code and how close the classes' codes are."""

from __future__ import annotations

import argparse
import json

from ..errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="each class's typical code and how close the classes are")
    p.add_argument("--codes", required=True, help=".npz from dsh encode")
    p.add_argument("--close-bits", type=int, default=1, help="flag classes at most this many bits apart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.codefiles import class_table_of
    from ..eval.report import format_markdown

    if args.close_bits < 0:
        raise InputError(f"--close-bits must be >= 0, got {args.close_bits}")
    table, unlabelled = class_table_of(args.codes, close_bits=args.close_bits)
    print(json.dumps({**table.to_dict(), "excluded_unlabelled": unlabelled}, indent=2) if args.json
          else format_markdown(table) + (f"\n\n({unlabelled} unlabelled codes left out)" if unlabelled else ""))
    return 0
