"""``dsh viz``: UMAP and t-SNE maps of the real outputs ``u``, coloured by class."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError, InputError
from .common import add_data_source, add_encoder_flags, encoder_of, split_images


def add_parser(sub) -> None:
    p = sub.add_parser("viz", help="UMAP and t-SNE maps of the real outputs u, coloured by class")
    p.add_argument("--run", help="run folder, checkpoint or model file")
    p.add_argument("--codes", help="a .npz written with --keep-u, instead of --run")
    add_encoder_flags(p)
    add_data_source(p, "map the images under this folder instead")
    p.add_argument("--out", help="folder for the PNG files (default: RUN/plots)")
    p.add_argument("--method", nargs="+", default=["umap", "tsne"], choices=["umap", "tsne"])
    p.add_argument("--max-points", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_viz)


def cmd_viz(args: argparse.Namespace) -> int:
    import numpy as np

    from ..eval.viz import plot_u_maps

    if args.max_points < 2:
        raise InputError(f"--max-points must be >= 2 (a map needs points), got {args.max_points}")
    if args.codes is not None:
        from ..codes.codefile import load_codes

        cf = load_codes(args.codes)
        if cf.u is None:
            raise DataError(f"{args.codes}: no 'u' array (encode with --keep-u)")
        u, labels = cf.u, cf.labels
        names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    else:
        if args.run is None:
            raise InputError("viz needs --run RUN (with a dataset split) or --codes FILE.npz written with --keep-u")
        encoder = encoder_of(args)
        if args.images is not None:
            from ..utils.imageio import ImageList

            listing = ImageList(args.images, encoder.class_names or None)
            u = np.concatenate([e.u for _, e in encoder.iter_encode_files(listing.full_paths())])
            labels, names = listing.labels, listing.class_names
        else:
            images, labels, names, _ = split_images(args, encoder)
            u = encoder.encode(images, layout="NCHW").u
    out = Path(args.out) if args.out else (Path(args.run) / "plots" if args.run else Path("plots"))
    paths = plot_u_maps(u, labels, out, methods=tuple(args.method), class_names=names,
                        max_points=args.max_points, seed=args.seed)
    for p in paths:
        print(f"wrote {p}")
    return 0
