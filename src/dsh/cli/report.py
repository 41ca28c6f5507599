"""``dsh report``: each class's typical code and how close the classes' codes are."""

from __future__ import annotations

import argparse
import json

from ..errors import DataError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="each class's typical code and how close the classes are")
    p.add_argument("--codes", required=True, help=".npz from dsh encode")
    p.add_argument("--close-bits", type=int, default=1, help="flag classes at most this many bits apart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..codes.codefile import load_codes
    from ..eval.report import class_code_table, format_markdown

    if args.close_bits < 0:
        raise DataError(f"--close-bits must be >= 0, got {args.close_bits}")
    cf = load_codes(args.codes)
    if cf.labels is None or cf.multi_label:
        raise DataError(f"{args.codes}: the class table needs single-label class ids in 'labels'")
    unlabelled = int((~cf.labelled()).sum())
    if unlabelled == len(cf):
        raise DataError(f"{args.codes}: no row has a class (-1 marks an unlabelled image)")
    cf = cf.subset(cf.labelled())  # -1 is "no class", not a class of its own
    names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    table = class_code_table(cf.codes, cf.labels, cf.nbits, names, close_bits=args.close_bits)
    print(json.dumps({**table.to_dict(), "excluded_unlabelled": unlabelled}, indent=2) if args.json
          else format_markdown(table) + (f"\n\n({unlabelled} unlabelled codes left out)" if unlabelled else ""))
    return 0
