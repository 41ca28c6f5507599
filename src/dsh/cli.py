"""The ``dsh`` command line: each command a thin layer over one library call. Imported by nothing.

``main(argv)`` returns the exit status, so tests call it directly. Problems with the user's input (a missing file,
a corrupt checkpoint, a bad flag value) print one line, ``dsh: error: ...``, and exit 2 without a traceback;
set ``DSH_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import config as config_mod
from .fileio import DataError, one_line

# ----------------------------------------------------------------------------------------------------------------
# train


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _train_flag_type(f: dataclasses.Field):
    """The argparse type of a TrainConfig field, from its annotation (``int | None`` -> int)."""
    kinds, _ = config_mod.field_types(f.name)
    return _int_or_float if set(kinds) == {int, float} else kinds[0]


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training settings (defaults from dsh.config.TrainConfig; a --config file overrides "
                             "defaults, flags override the file)")
    for f in dataclasses.fields(config_mod.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag, "--bits"] if f.name == "nbits" else [flag]
        typ = _train_flag_type(f)
        text = config_mod.FIELD_HELP.get(f.name, "")
        default_text = text if "default" in text else f"{text} (default: {f.default})".lstrip()
        if typ is bool:
            g.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=default_text)
        else:
            g.add_argument(*names, dest=f.name, type=typ, default=None, metavar=f.name.upper(), help=default_text)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_mod.TrainConfig)}


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = _train_overrides(args)
    if args.resume:
        given = [k for k, v in overrides.items() if v is not None] + (["config"] if args.config else []) + (
            ["preset"] if args.preset else [])
        if given:
            raise DataError(f"--resume continues {args.out} with its saved settings; drop --"
                            f"{given[0].replace('_', '-')}")
    cfg = config_mod.resolve_config(overrides, config_file=args.config, preset=args.preset)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet, log=_log(args))
    print(
        f"best epoch {result.best_epoch}: validation mAP {result.best_val_map:.4f}; "
        f"{result.train_seconds:.1f}s of training ({result.images_per_second:.0f} images/s); run in {result.run_dir}"
    )
    return 0


# ----------------------------------------------------------------------------------------------------------------
# encode


def _encode_source(args: argparse.Namespace, loaded):
    """(images uint8[N,C,H,W], labels, class_names, paths) from a dataset split or an image folder."""
    from .data import load_image_folder
    from .splits import load_part

    if args.images is not None:
        s = load_image_folder(args.images, loaded.input_shape, class_names=loaded.class_names)
        return s.images, s.labels.numpy(), list(s.class_names), s.paths
    cfg = loaded.config
    dataset = args.dataset or cfg.get("dataset")
    same_dataset = dataset == cfg.get("dataset")
    data_root = args.data_root or (cfg.get("data_root") if same_dataset else None)
    # the run's protocol by default, so `--split query` / `--split database` follow what the run trained on
    protocol = args.protocol if args.protocol is not None else (cfg.get("protocol") if same_dataset else None)
    if protocol == "none":
        protocol = None
    s = load_part(dataset, args.split, protocol=protocol, protocol_seed=int(cfg.get("protocol_seed", 0)),
                  data_root=data_root, val_size=cfg.get("val_size"), seed=int(cfg.get("seed", 0)),
                  download=not args.no_download, image_size=cfg.get("image_size"))
    return s.images, s.labels.numpy(), list(s.class_names), s.paths


def _check_input_shape(images, loaded, source: str) -> None:
    got = tuple(int(v) for v in images.shape[1:])
    if got != tuple(loaded.input_shape):
        c, h, w = loaded.input_shape
        raise DataError(f"{source}: images are {got[0]}x{got[1]}x{got[2]} (CxHxW) but the model in {loaded.path} "
                        f"takes {c}x{h}x{w}")


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import load_model
    from .codefile import CodeFile, save_codes
    from .encode import encode_images

    loaded = load_model(args.run)
    images, labels, class_names, paths = _encode_source(args, loaded)
    _check_input_shape(images, loaded, args.images or f"{args.dataset or loaded.config.get('dataset')}:{args.split}")
    u, codes = encode_images(loaded.model, images, loaded.normalizer, batch_size=args.batch_size,
                             progress=not args.quiet)
    cf = CodeFile(codes=codes, nbits=loaded.nbits, labels=np.asarray(labels), u=u if args.keep_u else None,
                  paths=None if paths is None else np.asarray(paths), class_names=np.asarray(class_names))
    save_codes(args.out, cf)
    print(f"wrote {len(cf)} codes of {cf.nbits} bits to {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# eval / report


def cmd_eval(args: argparse.Namespace) -> int:
    from .codefile import load_codes
    from .metrics import evaluate

    q, db = load_codes(args.query), load_codes(args.database)
    if q.nbits != db.nbits:
        raise DataError(f"{args.query} has {q.nbits}-bit codes but {args.database} has {db.nbits}-bit codes")
    for name, cf in ((args.query, q), (args.database, db)):
        if cf.labels is None:
            raise DataError(f"{name}: no 'labels' array, so relevance is unknown")
    if q.multi_label != db.multi_label:
        raise DataError(f"{args.query} and {args.database}: one has class ids, the other multi-hot labels")
    if args.topk is not None and args.topk < 1:
        raise DataError(f"--topk must be >= 1, got {args.topk}")
    if args.protocol is not None and args.topk is None:
        from .splits import protocol_topk

        args.topk = protocol_topk(args.protocol)
    result = evaluate(q.codes, db.codes, q.labels, db.labels, q.nbits, topk=args.topk, radius=args.radius)
    if args.curves:
        from .plots import plot_pr_curve, plot_precision_at_k, save_curves_json

        out = Path(args.curves)
        save_curves_json(result, out / "curves.json")
        label = f"{q.nbits} bits"
        plot_pr_curve({label: result}, out / "pr_curve.png", title="precision-recall over Hamming radius")
        plot_precision_at_k({label: result}, out / "precision_at_k.png", title="precision@k")
    if args.json:
        print(json.dumps(result))
        return 0
    r = args.radius
    print(f"queries {len(q)}, database {len(db)}, {q.nbits} bits")
    print(f"mAP@all            {result['map']:.4f}")
    if args.topk is not None:
        print(f"mAP@{args.topk:<14d}{result['map_at_k']:.4f}")
    print(f"precision@r<={r}     {result[f'precision_at_radius_{r}']:.4f}")
    if args.curves:
        print(f"curves written to {args.curves}/ (curves.json, pr_curve.png, precision_at_k.png)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .codefile import load_codes
    from .report import class_code_table, format_markdown

    cf = load_codes(args.codes)
    if cf.labels is None or cf.multi_label:
        raise DataError(f"{args.codes}: the class table needs single-label class ids in 'labels'")
    names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    table = class_code_table(cf.codes, cf.labels, cf.nbits, names, close_bits=args.close_bits)
    print(json.dumps(table.to_dict(), indent=2) if args.json else format_markdown(table))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# viz


def cmd_viz(args: argparse.Namespace) -> int:
    from .viz import plot_u_maps

    if args.codes is not None:
        from .codefile import load_codes

        cf = load_codes(args.codes)
        if cf.u is None:
            raise DataError(f"{args.codes}: no 'u' array (encode with --keep-u)")
        u, labels = cf.u, cf.labels
        names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    else:
        if args.run is None:
            raise DataError("viz needs --run RUN (with a dataset split) or --codes FILE.npz written with --keep-u")
        from .checkpoint import load_model
        from .encode import compute_u

        loaded = load_model(args.run)
        images, labels, names, _ = _encode_source(args, loaded)
        _check_input_shape(images, loaded, args.images or f"{args.dataset}:{args.split}")
        u = compute_u(loaded.model, images, loaded.normalizer)
    out = Path(args.out) if args.out else (Path(args.run) / "plots" if args.run else Path("plots"))
    paths = plot_u_maps(u, labels, out, methods=tuple(args.method), class_names=names,
                        max_points=args.max_points, seed=args.seed)
    for p in paths:
        print(f"wrote {p}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(dataset=args.dataset, data_root=args.data_root, out=args.out, nbits=args.bits, epochs=args.epochs,
             plots=not args.no_plots, progress=not args.quiet)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# index / search


def cmd_index(args: argparse.Namespace) -> int:
    import numpy as np

    from .index import HammingIndex

    metadata: dict[str, Any] = {}
    if args.codes is not None:
        from .codefile import load_codes

        cf = load_codes(args.codes)
        codes, nbits, labels, paths, names = cf.codes, cf.nbits, cf.labels, cf.paths, cf.class_names
        metadata["source"] = str(Path(args.codes).resolve())
        if args.run:
            metadata["run"] = str(Path(args.run).resolve())
    else:
        if args.run is None:
            raise DataError("index --images needs --run RUN to encode them")
        from .checkpoint import load_model
        from .data import load_image_folder
        from .encode import encode_images

        loaded = load_model(args.run)
        s = load_image_folder(args.images, loaded.input_shape, class_names=loaded.class_names)
        _, codes = encode_images(loaded.model, s.images, loaded.normalizer, progress=not args.quiet)
        nbits, labels, names = loaded.nbits, s.labels.numpy(), s.class_names
        root = Path(args.images).resolve()
        paths = [str(root / p) for p in s.paths]
        metadata.update(source=str(root), run=str(Path(args.run).resolve()))
    index = HammingIndex(nbits)
    index.add(codes)
    # per-item labels and paths ride along in the index file's JSON metadata, in id order
    if labels is not None:
        metadata["labels"] = np.asarray(labels).tolist()
    if paths is not None:
        metadata["paths"] = [str(p) for p in paths]
    if names is not None:
        metadata["class_names"] = [str(n) for n in names]
    index.save(args.out, metadata=metadata)
    print(f"indexed {index.ntotal} codes of {nbits} bits into {args.out}")
    return 0


def _query_codes(args: argparse.Namespace, index) -> tuple[Any, list[str]]:
    """(uint8[nq, w] query codes, a display name per query)."""
    import numpy as np

    from .codes import check_codes, from_hex

    if args.hex is not None:
        return np.concatenate([from_hex(h, index.nbits) for h in args.hex]), [f"0x{h}" for h in args.hex]
    if args.codes is not None:
        from .codefile import load_codes

        cf = load_codes(args.codes)
        if cf.nbits != index.nbits:
            raise DataError(f"{args.codes} has {cf.nbits}-bit codes but {args.index} holds {index.nbits}-bit codes")
        names = [str(p) for p in cf.paths] if cf.paths is not None else [f"{args.codes}[{i}]" for i in range(len(cf))]
        return cf.codes, names
    run = args.run or index.metadata.get("run")
    if run is None:
        raise DataError(f"{args.index} does not name the run that made it: pass --run RUN to encode the images")
    from .checkpoint import load_model
    from .data import load_image_files
    from .encode import encode_images

    loaded = load_model(run)
    if loaded.nbits != index.nbits:
        raise DataError(f"{loaded.path} makes {loaded.nbits}-bit codes but {args.index} holds {index.nbits}-bit codes")
    c, h, w = loaded.input_shape
    images = load_image_files(args.image, image_size=(h, w) if args.resize else None, channels=c)
    if tuple(images.shape[2:]) != (h, w):
        raise DataError(f"{args.image[0]}: image is {images.shape[3]}x{images.shape[2]} pixels but the model "
                        f"takes {w}x{h} (pass --resize to resize)")
    _, codes = encode_images(loaded.model, images, loaded.normalizer)
    return check_codes(codes, index.nbits), list(args.image)


def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from .codes import to_hex
    from .index import HammingIndex

    index = HammingIndex.load(args.index, mmap=True)
    if args.radius is None and args.k < 1:
        raise DataError(f"-k must be >= 1, got {args.k}")
    if args.radius is not None and args.radius < 0:
        raise DataError(f"--radius must be >= 0, got {args.radius}")
    q, names = _query_codes(args, index)
    meta = index.metadata
    labels, paths, class_names = meta.get("labels"), meta.get("paths"), meta.get("class_names")
    ids = index.ids  # strictly ascending: a result's row is found by binary search, no per-id table

    def describe(i: int, d: int) -> dict[str, Any]:
        row: dict[str, Any] = {"id": i, "distance": d}
        p = int(np.searchsorted(ids, i))
        p = p if p < len(ids) and ids[p] == i else None
        if p is not None and labels is not None:
            lab = labels[p]
            row["label"] = lab
            if class_names is not None and isinstance(lab, int) and 0 <= lab < len(class_names):
                row["class"] = class_names[lab]
        if p is not None and paths is not None:
            row["path"] = paths[p]
        return row

    results = []
    if args.radius is not None:
        lims, D, I = index.range_search(q, args.radius)
        for j in range(q.shape[0]):
            s = slice(int(lims[j]), int(lims[j + 1]))
            results.append([describe(int(i), int(d)) for d, i in zip(D[s], I[s])])
    else:
        D, I = index.search(q, args.k)
        for j in range(q.shape[0]):
            results.append([describe(int(i), int(d)) for d, i in zip(D[j], I[j]) if i >= 0])
    hexes = to_hex(q, index.nbits)
    if args.json:
        print(json.dumps({"queries": [{"query": n, "code": f"0x{h}", "results": r}
                                      for n, h, r in zip(names, hexes, results)]}))
        return 0
    for name, h, rows in zip(names, hexes, results):
        print(f"query {name} (code 0x{h}): {len(rows)} result{'s' if len(rows) != 1 else ''}")
        for rank, row in enumerate(rows, 1):
            label = row.get("class", row.get("label", ""))
            print(f"  {rank:>4}  d={row['distance']:<3} id={row['id']:<8} {label!s:<12} {row.get('path', '')}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# parser


def _log(args: argparse.Namespace):
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, file=sys.stderr))


def _add_data_source(p: argparse.ArgumentParser, images_help: str) -> None:
    p.add_argument("--dataset", help="dataset name (default: the one the run was trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the run's, else $DSH_DATA)")
    p.add_argument("--split", default="test", choices=("train", "val", "fit", "test", "query", "database"),
                   help="which split to encode (default: test); query/database are a protocol's parts")
    p.add_argument("--protocol", help="a named protocol (dsh-paper, cifar10, cifar10-1, cifar10-2; default: the "
                   "run's, 'none' for the dataset's own splits)")
    p.add_argument("--images", help=images_help)
    p.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dsh",
        description="Deep Supervised Hashing: learn binary codes for images and search them by Hamming distance.",
    )
    parser.add_argument("--version", action="version", version=f"dsh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a DSH model into a run folder")
    p.add_argument("--out", required=True, help="run folder to create (checkpoints, config.json, tb/)")
    p.add_argument("--config", help="JSON or YAML file of settings")
    p.add_argument("--preset", help="named set of tuned settings (see README)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="turn a dataset split or an image folder into a .npz of codes")
    p.add_argument("--run", required=True, help="run folder or checkpoint file")
    _add_data_source(p, "encode the images under this folder instead (class subfolders give labels)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--keep-u", action="store_true", help="also store the real outputs u (float32)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("eval", help="retrieval quality of query codes against database codes")
    p.add_argument("--query", required=True, help="query .npz (from dsh encode)")
    p.add_argument("--database", required=True, help="database .npz")
    p.add_argument("--topk", type=int, help="also report mAP@K")
    p.add_argument("--protocol", help="report the mAP cut-off of this protocol (e.g. cifar10: mAP@54000)")
    p.add_argument("--radius", type=int, default=2, help="Hamming radius for precision within radius (default 2)")
    p.add_argument("--curves", help="folder for PR / precision@k curves (PNG and JSON)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="each class's typical code and how close the classes are")
    p.add_argument("--codes", required=True, help=".npz from dsh encode")
    p.add_argument("--close-bits", type=int, default=1, help="flag classes at most this many bits apart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("viz", help="UMAP and t-SNE maps of the real outputs u, coloured by class")
    p.add_argument("--run", help="run folder or checkpoint file")
    p.add_argument("--codes", help="a .npz written with --keep-u, instead of --run")
    _add_data_source(p, "map the images under this folder instead")
    p.add_argument("--out", help="folder for the PNG files (default: RUN/plots)")
    p.add_argument("--method", nargs="+", default=["umap", "tsne"], choices=["umap", "tsne"])
    p.add_argument("--max-points", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_viz)

    p = sub.add_parser("demo", help="the seed experiment: 8-bit codes for digits, table, mAP and plots")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    p.add_argument("--data-root", help="where MNIST lives (or $DSH_DATA)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--epochs", type=int, help="default: the dataset's demo setting")
    p.add_argument("--no-plots", action="store_true", help="skip UMAP / t-SNE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("index", help="build a Hamming index file from codes, or from a run and an image folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--codes", help=".npz of codes (from dsh encode)")
    src.add_argument("--images", help="image folder to encode with --run (paths are stored)")
    p.add_argument("--run", help="run folder or checkpoint (with --images; also remembered for search by image)")
    p.add_argument("--out", required=True, help="index file to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="nearest codes in an index, by image, by codes file or by hex code")
    p.add_argument("--index", required=True, help="index file (from dsh index)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query image file(s), encoded with the index's run (or --run)")
    q.add_argument("--codes", help="query .npz of codes")
    q.add_argument("--hex", nargs="+", help="query code(s) in hex, as printed by dsh report")
    p.add_argument("--run", help="model for --image (default: the run the index was built with)")
    p.add_argument("--resize", action="store_true", help="resize query images to the model's input size")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--radius", type=int, help="return everything within this Hamming radius instead of k")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_search)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, OSError) as e:
        if os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: {one_line(e, limit=1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
