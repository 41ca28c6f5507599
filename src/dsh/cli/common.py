"""What several commands share: the flag groups that say where a model and images come from and how to encode,
and the encoder those flags describe."""

from __future__ import annotations

import argparse
import sys

from .. import config as config_mod


def log_of(args: argparse.Namespace):
    """Where a command's progress lines go: stderr, or nowhere with ``--quiet``."""
    return (lambda msg: None) if getattr(args, "quiet", False) else (lambda msg: print(msg, file=sys.stderr))


def add_data_source(p: argparse.ArgumentParser, images_help: str) -> None:
    p.add_argument("--dataset", help="dataset name (default: the one the run was trained on)")
    p.add_argument("--data-root", help="dataset folder (default: the run's, else $DSH_DATA)")
    p.add_argument("--split", default="test", choices=("train", "val", "fit", "test", "query", "database"),
                   help="which split to encode (default: test); query/database are a protocol's parts")
    p.add_argument("--protocol", choices=[*config_mod.choices_of("protocol"), "none"],
                   help="a named protocol (default: the run's; 'none' for the dataset's own splits)")
    p.add_argument("--images", help=images_help)
    p.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")


def add_model_source(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--run", help=f"run folder (its best checkpoint) or checkpoint file {what}")
    g.add_argument("--model", help=f"model file {what}: .onnx (runs without torch), .safetensors or .pt")


def add_encoder_flags(p: argparse.ArgumentParser) -> None:
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


def encoder_of(args: argparse.Namespace):
    """The :class:`dsh.runtime.Encoder` that the flags describe (``--run``/``--model``, backend, threads, ...)."""
    from ..runtime.encoder import Encoder

    source = getattr(args, "model", None) or args.run
    return Encoder.from_file(source, backend=args.backend, threads=args.threads, batch_size=args.batch_size,
                             workers=args.workers, resize=args.resize, tta_flip=args.tta_flip)


def split_images(args: argparse.Namespace, encoder):
    """The dataset split or protocol part the flags name, for ``encoder``'s model (:func:`dsh.train.model_part`):
    (images uint8[N,C,H,W], labels, class_names, paths)."""
    from ..train.experiment import model_part

    s = model_part(encoder, args.split, dataset=args.dataset, data_root=args.data_root or None,
                   protocol=args.protocol, download=not args.no_download)
    return s.images.numpy(), s.labels.numpy(), list(s.class_names), s.paths


def add_index_source(p: argparse.ArgumentParser, verb: str) -> None:
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
