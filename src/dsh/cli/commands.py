"""The ``dsh`` command line: each command a thin layer over one library call. Imported by nothing.

``main(argv)`` returns the exit status, so tests call it directly. Problems with the user's input (a missing file,
a corrupt checkpoint, a bad flag value: a :class:`dsh.errors.UserError`) print one line, ``dsh: error: ...``, and
exit 2 without a traceback; set ``DSH_DEBUG=1`` to see the traceback. Any other exception is a bug in dsh and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .. import config as config_mod
from ..errors import DataError, InputError, UserError, one_line

# ----------------------------------------------------------------------------------------------------------------
# train


def _setting_parser(name: str):
    """The argparse ``type`` of setting ``name``: :func:`dsh.config.parse_value`, its error as argparse's."""

    def parse(text: str):
        try:
            return config_mod.parse_value(name, text)
        except config_mod.ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training settings (defaults from dsh.config.TrainConfig; a --config file overrides "
                             "defaults, flags override the file)")
    aliases: dict[str, list[str]] = {}
    for alias, name in config_mod.ALIASES.items():
        aliases.setdefault(name, []).append("--" + alias.replace("_", "-"))
    for f in dataclasses.fields(config_mod.TrainConfig):
        names = ["--" + f.name.replace("_", "-"), *aliases.get(f.name, [])]
        text = config_mod.help_of(f.name)
        try:
            choices = config_mod.choices_of(f.name)
        except ModuleNotFoundError:  # the model and dataset registries import torch: without dsh[train] no list
            choices = None
        if choices is not None:
            text = f"{text}: {', '.join(choices)}"
        text = text if "default" in text else f"{text} (default: {f.default})"
        kinds, _ = config_mod.field_types(f.name)
        if kinds == [bool]:
            g.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(*names, dest=f.name, type=_setting_parser(f.name), default=None,
                           metavar=f.name.upper(), help=text)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_mod.TrainConfig)}


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.loop import train

    overrides = _train_overrides(args)
    if args.resume:
        given = [k for k, v in overrides.items() if v is not None] + (["config"] if args.config else []) + (
            ["preset"] if args.preset else [])
        if given:
            raise DataError(f"--resume continues {args.out} with its saved settings; drop --"
                            f"{given[0].replace('_', '-')}")
    cfg = config_mod.resolve_config(overrides, config_file=args.config, preset=args.preset)
    if args.nproc is not None:  # one machine, N processes: torchrun's launcher runs this command in each
        if "LOCAL_RANK" in os.environ:
            raise DataError("--nproc launches torchrun itself; under torchrun leave it out")
        from ..train.launch import launch_train

        return launch_train(cfg, args.out, nproc=args.nproc, resume=args.resume, quiet=args.quiet)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet, log=_log(args))
    if result.rank == 0:
        # a model that collapsed (or a one-class training set) must not end with an ordinary success line
        warned = "".join(f"; WARNING: {w}" for w in result.warnings)
        print(
            f"best epoch {result.best_epoch}: validation mAP {result.best_val_map:.4f}; {result.train_seconds:.1f}s "
            f"of training ({result.images_per_second:.0f} images/s); run in {result.run_dir}{warned}"
        )
    return 0


# ----------------------------------------------------------------------------------------------------------------
# encode


def _encoder(args: argparse.Namespace):
    """The :class:`dsh.runtime.Encoder` that the flags describe (``--run``/``--model``, backend, threads, ...)."""
    from ..runtime.encoder import Encoder

    source = getattr(args, "model", None) or args.run
    return Encoder.from_file(source, backend=args.backend, threads=args.threads, batch_size=args.batch_size,
                             workers=args.workers, resize=args.resize, tta_flip=args.tta_flip)


def _split_images(args: argparse.Namespace, encoder):
    """A dataset split or protocol part for ``encoder``: (images uint8[N,C,H,W], labels, class_names, paths).
    The dataset and its settings default to those the model was trained with."""
    from ..data.splits import load_part

    cfg = config_mod.TrainConfig.of_model(encoder.info, encoder.source)
    dataset = args.dataset or (cfg.dataset if cfg else None)
    if dataset is None:
        raise DataError(f"{encoder.source} does not say which dataset it was trained on: pass --dataset")
    # the run's images by default (its data root, protocol, validation carve), so `--split query` / `--split
    # database` follow what the run trained on; another dataset gets only its own defaults
    same_dataset = cfg is not None and dataset == cfg.dataset
    options = cfg.data_options() if same_dataset else {}
    if args.data_root:
        options["data_root"] = args.data_root
    if args.protocol is not None:
        options["protocol"] = None if args.protocol == "none" else args.protocol
    options["download"] = not args.no_download
    s = load_part(dataset, args.split, **options)
    return s.images.numpy(), s.labels.numpy(), list(s.class_names), s.paths


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from ..codes.codefile import CodeFile, save_codes

    encoder = _encoder(args)
    if args.images is not None:
        from ..codes.shards import parse_shard, shard_from_environment
        from ..runtime.folder_encode import encode_folder

        # under torchrun each process encodes its own slice into a shard; the shards read back as one file
        shard = parse_shard(args.shard) if args.shard else shard_from_environment()
        done = encode_folder(encoder, args.images, args.out, keep_u=args.keep_u, resume=args.resume,
                             progress=not args.quiet, shard=shard)
        again = f" ({done.resumed_parts} parts were done before)" if done.resumed_parts else ""
        print(f"wrote {done.count} codes of {done.nbits} bits to {done.out}{again}")
        return 0
    if args.shard:
        raise DataError("--shard splits an image folder (--images); a split is encoded in one go")
    if args.resume:
        raise DataError("--resume continues an interrupted encode of an image folder (--images); a split is "
                        "encoded in one go")
    images, labels, class_names, paths = _split_images(args, encoder)
    u, codes = encoder.encode(images, layout="NCHW", progress=not args.quiet)
    cf = CodeFile(codes=codes, nbits=encoder.nbits, labels=np.asarray(labels), u=u if args.keep_u else None,
                  paths=None if paths is None else np.asarray(paths), class_names=np.asarray(class_names))
    save_codes(args.out, cf)
    print(f"wrote {len(cf)} codes of {cf.nbits} bits to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..runtime.export import export_model

    info = export_model(args.run, args.out, fmt=args.format, opset=args.opset, tta_flip=args.tta_flip)
    c, h, w = info.input_shape
    print(f"wrote {args.out}: uint8 images [N, {c}, {h}, {w}] -> u float32[N, {info.nbits}], "
          f"fingerprint {info.fingerprint[:12]}")
    return 0

# ----------------------------------------------------------------------------------------------------------------
# eval / report


def cmd_eval(args: argparse.Namespace) -> int:
    from ..codes.codefile import load_codes
    from ..eval.metrics import evaluate

    if args.radius < 0:
        raise DataError(f"--radius must be >= 0, got {args.radius}")
    if args.topk is not None and args.topk < 1:
        raise DataError(f"--topk must be >= 1, got {args.topk}")
    q, db = load_codes(args.query), load_codes(args.database)
    if q.nbits != db.nbits:
        raise DataError(f"{args.query} has {q.nbits}-bit codes but {args.database} has {db.nbits}-bit codes")
    for name, cf in ((args.query, q), (args.database, db)):
        if cf.labels is None:
            raise DataError(f"{name}: no 'labels' array, so relevance is unknown")
    if q.multi_label != db.multi_label:
        raise DataError(f"{args.query} and {args.database}: one has class ids, the other multi-hot labels")
    # unlabelled rows (class -1, or a multi-hot row with no label) would count as a class of their own: leave them
    # out, and say how many
    excluded = {}
    for role, name, cf in (("queries", args.query, q), ("database", args.database, db)):
        keep = cf.labelled()
        if not keep.any():
            raise DataError(f"{name}: no row has a label (-1 marks an unlabelled image), so nothing can be judged")
        excluded[role] = int((~keep).sum())
    q, db = q.subset(q.labelled()), db.subset(db.labelled())
    if args.topk is not None and args.topk < 1:
        raise DataError(f"--topk must be >= 1, got {args.topk}")
    if args.protocol is not None and args.topk is None:
        from ..data.splits import protocol_topk

        args.topk = protocol_topk(args.protocol)
    result = evaluate(q.codes, db.codes, q.labels, db.labels, q.nbits, topk=args.topk, radius=args.radius,
                      ties=args.ties)
    if args.curves:
        from ..eval.plots import plot_pr_curve, plot_precision_at_k, save_curves_json

        out = Path(args.curves)
        save_curves_json(result.to_dict(), out / "curves.json")
        label = f"{q.nbits} bits"
        plot_pr_curve({label: result}, out / "pr_curve.png", title="precision-recall over Hamming radius")
        plot_precision_at_k({label: result}, out / "precision_at_k.png", title="precision@k")
    if args.json:
        print(json.dumps({**result.to_dict(), "excluded_unlabelled": excluded}))
        return 0
    if any(excluded.values()):
        print(f"excluded {excluded['queries']} unlabelled queries and {excluded['database']} unlabelled database "
              f"items (label -1)")
    r = args.radius
    print(f"queries {len(q)}, database {len(db)}, {q.nbits} bits")
    rule = ("the exact mean over random orders of items at equal distance" if args.ties == "expected"
            else "broken by database position")
    print(f"ties               {args.ties}: {rule} (precision within a radius is the same either way)")
    print(f"mAP@all            {result.map:.4f}")
    if args.topk is not None:
        print(f"mAP@{args.topk:<14d}{result.map_at_k:.4f}")
    print(f"precision@r<={r}     {result.precision_at_radius:.4f}")
    if args.curves:
        print(f"curves written to {args.curves}/ (curves.json, pr_curve.png, precision_at_k.png)")
    return 0


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


# ----------------------------------------------------------------------------------------------------------------
# viz


def cmd_viz(args: argparse.Namespace) -> int:
    import numpy as np

    from ..eval.viz import plot_u_maps

    if args.max_points < 2:
        raise DataError(f"--max-points must be >= 2 (a map needs points), got {args.max_points}")
    if args.codes is not None:
        from ..codes.codefile import load_codes

        cf = load_codes(args.codes)
        if cf.u is None:
            raise DataError(f"{args.codes}: no 'u' array (encode with --keep-u)")
        u, labels = cf.u, cf.labels
        names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    else:
        if args.run is None:
            raise DataError("viz needs --run RUN (with a dataset split) or --codes FILE.npz written with --keep-u")
        encoder = _encoder(args)
        if args.images is not None:
            from ..utils.imageio import ImageList

            listing = ImageList(args.images, encoder.class_names or None)
            u = np.concatenate([e.u for _, e in encoder.iter_encode_files(listing.full_paths())])
            labels, names = listing.labels, listing.class_names
        else:
            images, labels, names, _ = _split_images(args, encoder)
            u = encoder.encode(images, layout="NCHW").u
    out = Path(args.out) if args.out else (Path(args.run) / "plots" if args.run else Path("plots"))
    paths = plot_u_maps(u, labels, out, methods=tuple(args.method), class_names=names,
                        max_points=args.max_points, seed=args.seed)
    for p in paths:
        print(f"wrote {p}")
    return 0

# ----------------------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from ..train.demo import run_demo

    run_demo(dataset=args.dataset, data_root=args.data_root, out=args.out, nbits=args.bits, epochs=args.epochs,
             plots=not args.no_plots, progress=not args.quiet)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# index / search


def cmd_index(args: argparse.Namespace) -> int:
    from ..index.store import IndexSpec, check_target, write_index
    from ..runtime.searcher import index_codes, index_folder

    # where the index goes, checked before anything is encoded
    milvus = args.store == "milvus"
    if milvus:
        if not (args.uri and args.collection):
            raise DataError("index --store milvus needs --uri URI and --collection NAME")
        if args.out is not None or args.format != "dsh":
            raise DataError("--out and --format are for index files; --store milvus writes to --uri / --collection")
        if args.overwrite and args.append:
            raise DataError("--overwrite replaces the collection and --append adds to it: give one of them")
    else:
        if args.out is None:
            raise DataError("index needs --out FILE (or --store milvus --uri URI --collection NAME)")
        stray = [f for f, v in (("--uri", args.uri), ("--collection", args.collection),
                                ("--overwrite", args.overwrite), ("--append", args.append)) if v]
        if stray:
            raise DataError(f"{stray[0]} is for --store milvus")
    if args.format != "faiss":
        stray = [f for f, v in (("--faiss-index", args.faiss_index != "flat"), ("--nlist", args.nlist is not None),
                                ("--hash-bits", args.hash_bits is not None)) if v]
        if stray:
            raise DataError(f"{stray[0]} is for --format faiss")
    target = IndexSpec(args.uri, args.collection, args.timeout) if milvus else IndexSpec(args.out)
    check_target(target, format=args.format, overwrite=args.overwrite, append=args.append)

    if args.codes is not None:
        from ..codes.codefile import load_codes

        encoder = _encoder(args) if args.run or args.model else None
        index = index_codes(load_codes(args.codes), args.codes, encoder)
    else:
        if not (args.run or args.model):
            raise DataError("index --images needs --run RUN (or --model FILE) to encode them")
        index = index_folder(_encoder(args), args.images, progress=not args.quiet)

    settings = {k: v for k, v in (("nlist", args.nlist), ("hash_bits", args.hash_bits)) if v is not None}
    written = write_index(index, target, format=args.format, overwrite=args.overwrite, append=args.append,
                          faiss_kind=args.faiss_index, **settings)
    print(written.summary)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..index.base import check_k, check_radius
    from ..index.store import IndexSpec
    from ..runtime.searcher import Searcher

    if args.radius is None:
        check_k(args.k, "-k")
    else:
        check_radius(args.radius, "--radius")
    spec = IndexSpec.from_flags("search", index=args.index, store=args.store, uri=args.uri,
                                collection=args.collection, timeout=args.timeout)
    with Searcher.open(spec, model=args.model or args.run, force=args.force, backend=args.backend,
                       threads=args.threads, batch_size=args.batch_size, workers=args.workers, resize=args.resize,
                       tta_flip=args.tta_flip) as searcher:
        k = None if args.radius is not None else args.k
        if args.hex is not None:
            names = [f"0x{h}" for h in args.hex]
            results = searcher.search_hex(args.hex, k=k, radius=args.radius)
        elif args.codes is not None:
            from ..codes.codefile import load_codes

            cf = load_codes(args.codes)
            if cf.nbits != searcher.index.nbits:
                raise DataError(f"{args.codes} has {cf.nbits}-bit codes but {searcher.name} holds "
                                f"{searcher.index.nbits}-bit codes")
            names = [str(p) for p in cf.paths] if cf.paths is not None else \
                [f"{args.codes}[{i}]" for i in range(len(cf))]
            results = searcher.search_codes(cf.codes, k=k, radius=args.radius)
        else:
            names = list(args.image)
            results = searcher.search(args.image, k=k, radius=args.radius)
    if args.json:
        print(json.dumps({"queries": [{"query": n, **r.to_dict()} for n, r in zip(names, results)]}))
        return 0
    for name, r in zip(names, results):
        count = len(r.neighbors)
        print(f"query {name} (code 0x{r.hex}): {count} result{'s' if count != 1 else ''}")
        for rank, hit in enumerate(r.neighbors, 1):
            label = hit.class_name if hit.class_name is not None else ("" if hit.label is None else hit.label)
            print(f"  {rank:>4}  d={hit.distance:<3} id={hit.id:<8} {label!s:<12} {hit.path or ''}")
    return 0

# ----------------------------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve import ServeSettings, create_app
    except ModuleNotFoundError as e:
        raise DataError(f"dsh serve needs the {e.name} package: pip install 'dsh[serve]'") from None
    from ..index.store import IndexSpec
    from ..runtime.searcher import Searcher

    # the flags first, before the model and the index are loaded
    for flag, value, low in (("--max-upload-mb", args.max_upload_mb, 1), ("--max-k", args.max_k, 1),
                             ("--max-pixels", args.max_pixels, 1), ("--port", args.port, 0)):
        if value is not None and value < low:
            raise DataError(f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise DataError(f"--port must be at most 65535, got {args.port}")
    if args.map is not None and not Path(args.map).is_file():
        raise DataError(f"--map {args.map}: no such image file")
    token = args.token or os.environ.get("DSH_TOKEN") or None
    spec = IndexSpec.from_flags("serve", index=args.index, store=args.store, uri=args.uri,
                                collection=args.collection, timeout=args.timeout)
    searcher = Searcher.open(spec, model=args.model or args.run, force=args.force, backend=args.backend,
                             threads=args.threads, batch_size=args.batch_size, workers=1, resize=args.resize,
                             tta_flip=args.tta_flip)
    map_image = args.map
    if map_image is None and args.run and (Path(args.run) / "plots" / "umap.png").is_file():
        map_image = str(Path(args.run) / "plots" / "umap.png")
    for root in args.image_root:
        if not Path(root).is_dir():
            raise InputError(f"--image-root {root}: no such folder")
    settings = ServeSettings(token=token, max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                             max_pixels=args.max_pixels, max_k=args.max_k, map_image=map_image,
                             image_roots=tuple(args.image_root))
    app = create_app(searcher, settings)
    roots = ", ".join(map(str, app.state.image_roots)) or "none (no image root: pass --image-root DIR)"
    print(f"dsh serve: item pictures from image files under: {roots}", file=sys.stderr, flush=True)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    print(f"dsh serve: {searcher.index.ntotal:,} items, model {searcher.encoder.source} "
          f"({searcher.encoder.backend}); open http://{host}:{args.port}/", file=sys.stderr, flush=True)
    with searcher:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                    access_log=not args.quiet)
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
    p.add_argument("--protocol", choices=[*config_mod.choices_of("protocol"), "none"],
                   help="a named protocol (default: the run's; 'none' for the dataset's own splits)")
    p.add_argument("--images", help=images_help)
    p.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")


def _add_model_source(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--run", help=f"run folder (its best checkpoint) or checkpoint file {what}")
    g.add_argument("--model", help=f"model file {what}: .onnx (runs without torch), .safetensors or .pt")


def _add_encoder_flags(p: argparse.ArgumentParser) -> None:
    from ..runtime.encoder import BACKENDS, DEFAULT_BATCH_SIZE

    g = p.add_argument_group("encoding")
    g.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="where the network runs: onnxruntime where installed (1.4-2.2x torch eager on 2 CPU cores "
                        "here), else torch (default: auto)")
    g.add_argument("--threads", type=int, help="threads for the network (default: the runtime's)")
    g.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per forward pass (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--workers", type=int, help="processes decoding image files (default: the CPUs, at most 8)")
    g.add_argument("--resize", action=argparse.BooleanOptionalAction, default=True,
                   help="scale images of another size to the trained size (cover, then centre-crop; default); "
                        "--no-resize refuses them")
    g.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip test-time augmentation: u is the mean over each image and its mirror (default: as the "
                        "run was trained, its tta_flip setting; an ONNX export made with it always has it)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong flag is one line like every other user error (no usage block above it)."""

    def error(self, message: str):
        self.exit(2, f"dsh: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
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
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (torchrun on 127.0.0.1; gloo on CPUs, one process "
                        "per GPU with nccl); --batch-size is the global batch. Several machines: torchrun ... -m dsh "
                        "train")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="turn a dataset split or an image folder into a .npz of codes")
    _add_model_source(p, True, "to encode with")
    _add_data_source(p, "encode the images under this folder instead, streaming (class subfolders give labels)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--keep-u", action="store_true", help="also store the real outputs u (float32)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted encode of --images into --out")
    p.add_argument("--shard", metavar="I/N", help="encode only part I of N of --images, into OUT-0000I-of-0000N.npz "
                   "(under torchrun: the process's rank and the world size); dsh eval and dsh index read the "
                   "complete set of shards as OUT")
    p.add_argument("--quiet", action="store_true")
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("export", help="write a run's model as ONNX (uint8 images in, u out) or safetensors")
    p.add_argument("--run", required=True, help="run folder, checkpoint or .safetensors file")
    p.add_argument("--out", required=True, help="MODEL.onnx or MODEL.safetensors")
    p.add_argument("--format", choices=("onnx", "safetensors"), help="default: from the suffix of --out")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="fold flip test-time augmentation into the ONNX graph (default: as the run was trained, "
                        "its tta_flip setting; safetensors never holds it: its encoder applies the run's setting)")
    p.set_defaults(func=cmd_export)

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

    p = sub.add_parser("report", help="each class's typical code and how close the classes are")
    p.add_argument("--codes", required=True, help=".npz from dsh encode")
    p.add_argument("--close-bits", type=int, default=1, help="flag classes at most this many bits apart")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("viz", help="UMAP and t-SNE maps of the real outputs u, coloured by class")
    p.add_argument("--run", help="run folder, checkpoint or model file")
    p.add_argument("--codes", help="a .npz written with --keep-u, instead of --run")
    _add_encoder_flags(p)
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

    p = sub.add_parser("index", help="build a Hamming index (a dsh or faiss file, or a Milvus collection) from "
                       "codes, or from a run and an image folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--codes", help=".npz of codes (from dsh encode)")
    src.add_argument("--images", help="image folder to encode with --run or --model (paths are stored)")
    _add_model_source(p, False, "(with --images; also remembered for search by image)")
    p.add_argument("--out", help="index file to write (its catalog goes beside it, OUT.catalog); with --format "
                   "faiss a faiss binary index file")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("where the index goes")
    g.add_argument("--store", choices=("file", "milvus"), default="file",
                   help="file: --out (default); milvus: a Milvus collection, --uri and --collection "
                        "(pip install 'dsh[milvus]')")
    g.add_argument("--format", choices=("dsh", "faiss"), default="dsh",
                   help="the file --out: dsh's index with its catalog (default), or a faiss binary index that "
                        "faiss.read_index_binary loads (codes and ids, no catalog)")
    g.add_argument("--faiss-index", choices=("flat", "ivf", "hash"), default="flat",
                   help="with --format faiss: IndexBinaryFlat (exact; default), IndexBinaryIVF or IndexBinaryHash")
    g.add_argument("--nlist", type=int, help="--faiss-index ivf: inverted lists (default sqrt(n))")
    g.add_argument("--hash-bits", type=int, help="--faiss-index hash: bits hashed (default min(nbits, 16))")
    g.add_argument("--uri", help="--store milvus: a Milvus Lite file (NAME.db, created if absent; a file name of at "
                   "most 36 characters) or a server, http://host:19530 (its token from $DSH_MILVUS_TOKEN)")
    g.add_argument("--collection", help="--store milvus: the collection to write")
    g.add_argument("--overwrite", action="store_true", help="--store milvus: replace the collection if it exists")
    g.add_argument("--append", action="store_true",
                   help="--store milvus: add to an existing collection (ids continue after its largest)")
    g.add_argument("--timeout", type=float, default=10.0,
                   help="--store milvus: seconds to wait for the connection (default 10)")
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_index)

    def index_source(p: argparse.ArgumentParser, verb: str) -> None:
        """--index FILE or --store milvus --uri --collection: the flags of dsh search and dsh serve alike."""
        p.add_argument("--index", help="index file (from dsh index: dsh's or a faiss file)")
        g = p.add_argument_group("a Milvus collection instead of --index")
        g.add_argument("--store", choices=("file", "milvus"), default="file",
                       help="file: --index (default); milvus: a collection written by dsh index --store milvus")
        g.add_argument("--uri", help="--store milvus: a Milvus Lite file (NAME.db) or a server, http://host:19530 "
                       "(its token from $DSH_MILVUS_TOKEN)")
        g.add_argument("--collection", help=f"--store milvus: the collection to {verb}")
        g.add_argument("--timeout", type=float, default=10.0,
                       help="--store milvus: seconds to wait for the connection (default 10)")

    p = sub.add_parser("search", help="nearest codes in an index, by image, by codes file or by hex code")
    index_source(p, "search")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query image file(s), encoded with the index's model (or --run)")
    q.add_argument("--codes", help="query .npz of codes")
    q.add_argument("--hex", nargs="+", help="query code(s) in hex, as printed by dsh report")
    _add_model_source(p, False, "for --image (default: the one the index was built with)")
    p.add_argument("--force", action="store_true",
                   help="search by image with a model other than the one that made the index's codes")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--radius", type=int, help="return everything within this Hamming radius instead of k")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="HTTP API and web page: search the index by image")
    index_source(p, "serve")
    _add_model_source(p, False, "(default: the one the index was built with)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on the API (or set $DSH_TOKEN)")
    p.add_argument("--map", help="a PNG (e.g. a UMAP of the index) for the page (default: RUN/plots/umap.png)")
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="a folder whose image files may be shown as items' pictures, besides the one the index was "
                        "built from (repeatable); no other file is ever served")
    p.add_argument("--max-upload-mb", type=int, default=10, help="largest request body in MB (default 10)")
    p.add_argument("--max-pixels", type=int, help="largest image in pixels (default: $DSH_MAX_PIXELS or 50M)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a client may ask for (default 1000)")
    p.add_argument("--force", action="store_true", help="serve with a model other than the index's")
    p.add_argument("--quiet", action="store_true", help="no access log")
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_serve)
    return parser


# optional packages and the extra that installs each (pyproject.toml): a missing one is the installation's fault
_EXTRA_OF = {"torch": "train", "torchvision": "train", "tensorboard": "train", "matplotlib": "train",
             "sklearn": "train", "umap": "train", "safetensors": "train", "onnx": "train", "onnxruntime": "onnx",
             "faiss": "faiss", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve",
             "fastapi_offline": "serve"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a wrong flag (one line, status 2), --help or --version: returned, not raised
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except UserError as e:  # only the user's mistakes: a bug inside dsh keeps its traceback
        if os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: {one_line(e, limit=1000)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None or os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: this needs the {e.name} package: pip install 'dsh[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
