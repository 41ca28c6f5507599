"""``dsh search``: the nearest codes in an index (a file or a Milvus collection), by image, codes file or hex."""

from __future__ import annotations

import argparse
import json

from ..errors import DataError
from .common import add_encoder_flags, add_index_source, add_model_source


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="nearest codes in an index, by image, by codes file or by hex code")
    add_index_source(p, "search")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query image file(s), encoded with the index's model (or --run)")
    q.add_argument("--codes", help="query .npz of codes")
    q.add_argument("--hex", nargs="+", help="query code(s) in hex, as printed by dsh report")
    add_model_source(p, False, "for --image (default: the one the index was built with)")
    p.add_argument("--force", action="store_true",
                   help="search by image with a model other than the one that made the index's codes")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--radius", type=int, help="return everything within this Hamming radius instead of k")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_encoder_flags(p)
    p.set_defaults(func=cmd_search)


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
