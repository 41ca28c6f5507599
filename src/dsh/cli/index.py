"""``dsh index``: a Hamming index (a dsh or faiss file, or a Milvus collection) from codes, or from a run and an
image folder; ``dsh index add`` / ``dsh index remove``: items added to or removed from a dsh index file through its
change log (:class:`dsh.index.live.LiveIndex`), without rewriting the file."""

from __future__ import annotations

import argparse

from ..errors import DataError, InputError
from .common import add_encoder_flags, add_model_source, encoder_of


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="build a Hamming index (a dsh or faiss file, or a Milvus collection) from "
                       "codes, or from a run and an image folder")
    p.add_argument("action", nargs="?", choices=("add", "remove"),
                   help="add: items from --codes or --images into the index file --index; remove: the items --ids "
                        "from it (each change logged beside the file, F.log, and folded into F from time to time; "
                        "without an action, a new index is built)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--codes", help=".npz of codes (from dsh encode)")
    src.add_argument("--images", help="image folder to encode with --run or --model (paths are stored)")
    add_model_source(p, False, "(with --images; also remembered for search by image)")
    p.add_argument("--out", help="index file to write (its catalog goes beside it, OUT.<uid>.catalog); with --format "
                   "faiss a faiss binary index file")
    p.add_argument("--quiet", action="store_true")
    live = p.add_argument_group("dsh index add / remove")
    live.add_argument("--index", help="the dsh index file to change (one writer at a time: F.lock beside it)")
    live.add_argument("--ids", type=int, nargs="+", metavar="ID", help="remove: the ids of the items to remove")
    live.add_argument("--fold", action="store_true",
                      help="fold the change log into the index file now (rewrites the file; otherwise it is folded "
                           "when the log grows past its limits, or by a writable dsh serve on shutdown)")
    live.add_argument("--force", action="store_true", help="add: encode with a model other than the index's")
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
    if args.action is not None:
        return cmd_change(args)
    stray = [f for f, v in (("--index", args.index), ("--ids", args.ids), ("--fold", args.fold),
                            ("--force", args.force)) if v]
    if stray:
        raise InputError(f"{stray[0]} is for dsh index add / dsh index remove")
    if args.codes is None and args.images is None:
        raise InputError("index needs --codes FILE or --images FOLDER")
    from ..index.store import IndexSpec, check_target, write_index
    from ..index.target import check_index_target
    from ..runtime.searcher import index_codes, index_folder

    # where the index goes, checked before anything is encoded
    check_index_target(store=args.store, out=args.out, format=args.format, faiss_index=args.faiss_index,
                       nlist=args.nlist, hash_bits=args.hash_bits, uri=args.uri, collection=args.collection,
                       overwrite=args.overwrite, append=args.append)
    target = IndexSpec(args.uri, args.collection, args.timeout) if args.store == "milvus" else IndexSpec(args.out)
    if args.store == "file":
        from ..index.live import check_unlocked

        check_unlocked(args.out)  # a writer's log would no longer name the file it extends
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


def cmd_change(args: argparse.Namespace) -> int:
    """``dsh index add`` / ``dsh index remove`` on the index file ``--index``."""
    from ..index.live import LiveIndex

    if args.index is None:
        raise InputError(f"index {args.action} needs --index FILE (the dsh index file to change)")
    build_only = [("--out", args.out), ("--store", args.store != "file"), ("--format", args.format != "dsh"),
                  ("--uri", args.uri), ("--collection", args.collection), ("--overwrite", args.overwrite),
                  ("--append", args.append)]
    stray = [f for f, v in build_only if v]
    if stray:
        raise InputError(f"{stray[0]} is for building an index; dsh index {args.action} changes --index in place")
    if args.action == "remove":
        if args.ids is None or args.codes or args.images:
            raise InputError("index remove takes --ids ID [ID ...] (and no --codes or --images)")
        with LiveIndex.open(args.index) as live:
            removed = live.remove(args.ids)
            live.close(fold=args.fold)
            print(f"removed {removed} of {len(set(args.ids))} ids from {args.index} (now {live.ntotal})")
        return 0
    if args.ids is not None:
        raise InputError("--ids is for index remove (index add gives the new items the next free ids)")
    if args.codes is None and args.images is None:
        raise InputError("index add needs --codes FILE or --images FOLDER")
    with LiveIndex.open(args.index) as live:
        new = _new_items(args, live)
        cat = new.catalog
        fields = {} if cat is None else {"labels": cat.labels, "paths": cat.paths, "keys": cat.keys,
                                         "class_names": cat.class_names or None}
        ids = live.add(new.codes, **fields)
        live.close(fold=args.fold)
        span = f"ids {ids[0]}..{ids[-1]}" if len(ids) else "no items"
        print(f"added {len(ids)} items ({span}) to {args.index} (now {live.ntotal})")
    return 0


def _new_items(args: argparse.Namespace, live):
    """The items ``dsh index add`` adds, as a small :class:`HammingIndex`, encoded with the index's model (or
    ``--run`` / ``--model``, which must be that model unless ``--force``)."""
    from ..runtime.searcher import Searcher, index_codes, index_folder, recorded_model

    if args.codes is not None:
        from ..codes.codefile import load_codes

        return index_codes(load_codes(args.codes), args.codes)
    if not (args.run or args.model):
        args.model = recorded_model(live)
        if args.model is None:
            raise DataError(f"{args.index} does not name the model that made it: give --run or --model")
    encoder = Searcher(live, encoder_of(args), force=args.force, name=args.index).encoder  # the model checked
    return index_folder(encoder, args.images, progress=not args.quiet)
