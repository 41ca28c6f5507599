"""``dsh encode``: a dataset split or an image folder -> a ``.npz`` of codes."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .common import add_data_source, add_encoder_flags, add_model_source, encoder_of, split_images


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="turn a dataset split or an image folder into a .npz of codes")
    add_model_source(p, True, "to encode with")
    add_data_source(p, "encode the images under this folder instead, streaming (class subfolders give labels)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--keep-u", action="store_true", help="also store the real outputs u (float32)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted encode of --images into --out")
    p.add_argument("--shard", metavar="I/N", help="encode only part I of N of --images, into OUT-0000I-of-0000N.npz "
                   "(under torchrun: the process's rank and the world size); dsh eval and dsh index read the "
                   "complete set of shards as OUT")
    p.add_argument("--quiet", action="store_true")
    add_encoder_flags(p)
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from ..codes.codefile import CodeFile, save_codes

    encoder = encoder_of(args)
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
        raise InputError("--shard splits an image folder (--images); a split is encoded in one go")
    if args.resume:
        raise InputError("--resume continues an interrupted encode of an image folder (--images); a split is "
                        "encoded in one go")
    images, labels, class_names, paths = split_images(args, encoder)
    u, codes = encoder.encode(images, layout="NCHW", progress=not args.quiet)
    cf = CodeFile(codes=codes, nbits=encoder.nbits, labels=np.asarray(labels), u=u if args.keep_u else None,
                  paths=None if paths is None else np.asarray(paths), class_names=np.asarray(class_names))
    save_codes(args.out, cf)
    print(f"wrote {len(cf)} codes of {cf.nbits} bits to {args.out}")
    return 0
