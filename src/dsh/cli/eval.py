"""``dsh eval``: retrieval quality (mAP, mAP@K, precision within a radius) of query codes against database codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import config as config_mod
from ..errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="retrieval quality of query codes against database codes")
    p.add_argument("--query", required=True, help="query .npz (from dsh encode)")
    p.add_argument("--database", required=True, help="database .npz")
    p.add_argument("--topk", type=int, help="also report mAP@K")
    p.add_argument("--protocol", choices=config_mod.choices_of("protocol"),
                   help="report the mAP cut-off of this protocol (e.g. cifar10: mAP@54000)")
    p.add_argument("--radius", type=int, default=2, help="Hamming radius for precision within radius (default 2)")
    p.add_argument("--ties", choices=("expected", "position"), default="expected",
                   help="items at equal Hamming distance: 'expected' (default) reports mAP, mAP@K and precision@k "
                        "as their exact expected value over random orders of the ties, independent of the "
                        "database order; 'position' breaks ties by database position (a stable sort)")
    p.add_argument("--curves", help="folder for PR / precision@k curves (PNG and JSON)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.codefiles import evaluate_files

    if args.radius < 0:
        raise InputError(f"--radius must be >= 0, got {args.radius}")
    if args.topk is not None and args.topk < 1:
        raise InputError(f"--topk must be >= 1, got {args.topk}")
    topk = args.topk
    if args.protocol is not None and topk is None:
        from ..data.protocols import get_protocol  # no torch: the protocol table, not its images

        topk = get_protocol(args.protocol).topk
    result, excluded = evaluate_files(args.query, args.database, topk=topk, radius=args.radius, ties=args.ties)
    if args.curves:
        _write_curves(result, Path(args.curves))
    if args.json:
        print(json.dumps({**result.to_dict(), "excluded_unlabelled": excluded}))
        return 0
    if any(excluded.values()):
        print(f"excluded {excluded['queries']} unlabelled queries and {excluded['database']} unlabelled database "
              f"items (label -1)")
    print(f"queries {result.n_queries}, database {result.n_database}, {result.nbits} bits")
    rule = ("the exact mean over random orders of items at equal distance" if args.ties == "expected"
            else "broken by database position")
    print(f"ties               {args.ties}: {rule} (precision within a radius is the same either way)")
    print(f"mAP@all            {result.map:.4f}")
    if topk is not None:
        print(f"mAP@{topk:<14d}{result.map_at_k:.4f}")
    print(f"precision@r<={args.radius}     {result.precision_at_radius:.4f}")
    if args.curves:
        print(f"curves written to {args.curves}/ (curves.json, pr_curve.png, precision_at_k.png)")
    return 0


def _write_curves(result, out: Path) -> None:
    from ..eval.plots import plot_pr_curve, plot_precision_at_k, save_curves_json

    save_curves_json(result.to_dict(), out / "curves.json")
    label = f"{result.nbits} bits"
    plot_pr_curve({label: result}, out / "pr_curve.png", title="precision-recall over Hamming radius")
    plot_precision_at_k({label: result}, out / "precision_at_k.png", title="precision@k")
