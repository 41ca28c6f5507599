"""``dsh index``: a Hamming index (a dsh or faiss file, or a Milvus collection) from codes, or from a run and an
image folder."""

from __future__ import annotations

import argparse

from ..errors import DataError
from .common import add_encoder_flags, add_model_source, encoder_of


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build a Hamming index (a dsh or faiss file, or a Milvus collection) from "
                       "codes, or from a run and an image folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--codes", help=".npz of codes (from dsh encode)")
    src.add_argument("--images", help="image folder to encode with --run or --model (paths are stored)")
    add_model_source(p, False, "(with --images; also remembered for search by image)")
    p.add_argument("--out", help="index file to write (its catalog goes beside it, OUT.<uid>.catalog); with --format "
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
    add_encoder_flags(p)
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from ..index.store import IndexSpec, check_target, write_index
    from ..index.target import check_index_target
    from ..runtime.searcher import index_codes, index_folder

    # where the index goes, checked before anything is encoded
    check_index_target(store=args.store, out=args.out, format=args.format, faiss_index=args.faiss_index,
                       nlist=args.nlist, hash_bits=args.hash_bits, uri=args.uri, collection=args.collection,
                       overwrite=args.overwrite, append=args.append)
    target = IndexSpec(args.uri, args.collection, args.timeout) if args.store == "milvus" else IndexSpec(args.out)
    check_target(target, format=args.format, overwrite=args.overwrite, append=args.append)

    if args.codes is not None:
        from ..codes.codefile import load_codes

        encoder = encoder_of(args) if args.run or args.model else None
        index = index_codes(load_codes(args.codes), args.codes, encoder)
    else:
        if not (args.run or args.model):
            raise DataError("index --images needs --run RUN (or --model FILE) to encode them")
        index = index_folder(encoder_of(args), args.images, progress=not args.quiet)

    settings = {k: v for k, v in (("nlist", args.nlist), ("hash_bits", args.hash_bits)) if v is not None}
    written = write_index(index, target, format=args.format, overwrite=args.overwrite, append=args.append,
                          faiss_kind=args.faiss_index, **settings)
    print(written.summary)
    return 0
