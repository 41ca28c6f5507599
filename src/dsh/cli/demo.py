"""``dsh demo``: the seed experiment end to end (8-bit codes for digits, the class table, mAP and plots)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the seed experiment: 8-bit codes for digits, table, mAP and plots")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--data-root", help="where MNIST lives (or $DSH_DATA)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--epochs", type=int, help="default: the dataset's demo setting")
    p.add_argument("--no-plots", action="store_true", help="skip UMAP / t-SNE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..train.demo import run_demo

    run_demo(dataset=args.dataset, data_root=args.data_root, out=args.out, nbits=args.bits, epochs=args.epochs,
             plots=not args.no_plots, progress=not args.quiet)
    return 0
