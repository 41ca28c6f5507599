"""Fuzzing of dsh's file loaders: random bytes, truncations and bit flips of valid files, many examples each.

    python benchmarks/reliability/fuzz_loaders.py --examples 20000 --out benchmarks/results

Loaders: code files (``dsh.codes.codefile.load_codes``, ``.npz``), index files (``HammingIndex.load``), catalog files
(``dsh.index.catalog.Catalog.load``) and checkpoints (``dsh.models.checkpoint.load_model``). Each example is a
valid file of the loader's kind (small, made here) damaged one way (random bytes; cut at a random length; 1-4
random bits flipped; a random run of bytes overwritten) and loaded. Every example must end one of two ways:

- **refused**: a :class:`dsh.errors.UserError` (a one-line message naming the file);
- **loaded intact**: the load succeeded and gave exactly the original content (every array, id, record, weight
  and setting equal). A bit flip can land on bytes that carry no content (a zip header's timestamp, a padding
  byte) and change nothing that is loaded. (Damage that leaves the bytes as they were, two flips of one bit, is
  counted apart as unchanged and not loaded.)

Anything else fails the run: another exception (a traceback for the user), or a **silently wrong load** (it loaded,
and something differs from the original). Index and catalog files carry a CRC-32 of all their bytes, code files
are zip archives with a CRC-32 per array (and the loader checks every array's kind and shape), and checkpoints carry
a sha256 of their content (``dsh.models.checkpoint.content_digest``), so no damage of these kinds can load wrong. A hang
would show as the run not finishing; each example is timed and the slowest is reported.

Prints a table of examples tried / refused / loaded intact per loader and writes ``fuzz_loaders.json`` to
``--out``. ``tests/contracts/test_fuzz_loaders.py`` runs the same oracles under hypothesis, a few thousand examples per
loader.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

MUTATIONS = ("random bytes", "truncation", "bit flips", "overwritten run")


# ---------------------------------------------------------------------------------------------------------------
# what each loader reads, and the check that a load gave back the original


@dataclass
class Target:
    """A loader under test: the bytes of a valid file, the name it is written under, how it is loaded, and whether
    a loaded result is the original."""

    name: str
    base: bytes
    filename: str
    load: Callable[[Path], Any]
    same: Callable[[Any], bool]


def _arrays_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def _deep_equal(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # nan
    return type(a) is type(b) and a == b


def code_file_target(folder: Path) -> Target:
    from dsh.codes.codefile import CodeFile, load_codes, save_codes

    rng = np.random.default_rng(1)
    n, nbits = 24, 12
    u = rng.normal(size=(n, nbits)).astype(np.float32)
    cf = CodeFile(codes=np.packbits(u >= 0, axis=1, bitorder="little"), nbits=nbits,
                  labels=rng.integers(-1, 3, n), u=u, paths=np.array([f"img/{i:03d}.png" for i in range(n)]),
                  class_names=np.array(["ant", "bee", "cat"]))
    path = folder / "base.npz"
    save_codes(path, cf)
    want = load_codes(path)

    def same(got) -> bool:
        return got.nbits == want.nbits and all(
            _arrays_equal(getattr(got, k), getattr(want, k)) for k in ("codes", "labels", "u", "paths", "class_names"))

    return Target("code file (.npz)", path.read_bytes(), "fuzz.npz", load_codes, same)


def _index_pair(folder: Path):
    from dsh.index.flat import HammingIndex

    rng = np.random.default_rng(2)
    index = HammingIndex(12)
    n = 40
    index.add(rng.integers(0, 256, (n, 2), dtype=np.uint8) & np.array([255, 15], np.uint8),
              ids=np.sort(rng.choice(1000, n, replace=False)), labels=rng.integers(-1, 4, n),
              paths=[f"photos/{i}.jpg" for i in range(n)], keys=[f"k{i}" for i in range(n)],
              class_names=["a", "b", "c", "d"])
    path = folder / "base.dshidx"
    index.save(path, metadata={"source": "fuzz", "model": {"path": "m.onnx", "fingerprint": "ab" * 32}})
    return HammingIndex.load(path), path


def _same_index(got, want) -> bool:
    if not (got.nbits == want.nbits and _arrays_equal(got.codes, want.codes) and _arrays_equal(got.ids, want.ids)
            and got.metadata == want.metadata):
        return False
    if (got.catalog is None) != (want.catalog is None):
        return False
    return want.catalog is None or [got.catalog.record(i) for i in range(got.ntotal)] == \
        [want.catalog.record(i) for i in range(want.ntotal)]


def index_file_target(folder: Path) -> Target:
    from dsh.index.flat import HammingIndex

    want, path = _index_pair(folder)
    # the damaged index is written beside the base one, so the catalog its metadata names is the good one
    return Target("index file (.dshidx)", path.read_bytes(), "fuzz.dshidx", lambda p: HammingIndex.load(p),
                  lambda got: _same_index(got, want))


def catalog_file_target(folder: Path) -> Target:
    from dsh.index.catalog import Catalog

    index, path = _index_pair(folder)
    cpath = path.with_name(index.metadata["catalog"]["file"])
    want, want_ids, want_uid = Catalog.load(cpath)

    def same(got) -> bool:
        catalog, ids, uid = got
        return (uid == want_uid and _arrays_equal(ids, want_ids) and len(catalog) == len(want)
                and catalog.class_names == want.class_names
                and [catalog.record(i) for i in range(len(catalog))] == [want.record(i) for i in range(len(want))])

    return Target("catalog file", cpath.read_bytes(), "fuzz.catalog", Catalog.load, same)


def checkpoint_target(folder: Path) -> Target:
    import torch

    from dsh.models import Normalizer
    from dsh.models.checkpoint import load_model, read_checkpoint, save_checkpoint
    from dsh.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("paper", 8, in_channels=1, image_size=8)
    path = folder / "base.pt"
    save_checkpoint(path, {
        "model_config": dict(model.config), "nbits": 8, "input_shape": [1, 8, 8],
        "normalizer": Normalizer([0.3], [0.2]).to_dict(), "class_names": [str(i) for i in range(10)],
        "config": {"dataset": "digits", "nbits": 8}, "epoch": 2,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "history": [{"epoch": 1, "loss_total": 0.5, "val_map": 0.25}],
    })
    _, want = read_checkpoint(path)

    def load(p: Path):
        _, raw = read_checkpoint(p)
        loaded = load_model(p)  # the model must rebuild from whatever read_checkpoint let through
        return raw, loaded

    def same(got) -> bool:
        raw, loaded = got
        return _deep_equal(raw, want) and loaded.nbits == 8

    return Target("checkpoint (.pt)", path.read_bytes(), "fuzz.pt", load, same)


TARGETS = {"codes": code_file_target, "index": index_file_target, "catalog": catalog_file_target,
           "checkpoint": checkpoint_target}


# ---------------------------------------------------------------------------------------------------------------
# damage, and the oracle


def mutate(base: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if kind == "random bytes":
        return rng.integers(0, 256, int(rng.integers(0, 2 * len(base) + 1)), dtype=np.uint8).tobytes()
    if kind == "truncation":
        return base[: int(rng.integers(0, len(base)))]
    data = bytearray(base)
    if kind == "bit flips":
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)
    if kind == "overwritten run":
        at, length = int(rng.integers(0, len(data))), int(rng.integers(1, 64))
        data[at : at + length] = rng.integers(0, 256, len(data[at : at + length]), dtype=np.uint8).tobytes()
        return bytes(data)
    raise ValueError(kind)


class WrongLoad(AssertionError):
    """A damaged file loaded and gave something other than the original."""


def attempt(target: Target, data: bytes, folder: Path) -> str:
    """Write ``data`` as the target's file and load it: ``"refused"`` (a UserError with a one-line message
    naming the file) or ``"intact"`` (loaded, equal to the original). Raises :class:`WrongLoad` for a silently
    wrong load; any other exception propagates (it is a bug)."""
    from dsh.errors import UserError

    path = folder / target.filename
    path.write_bytes(data)
    try:
        got = target.load(path)
    except UserError as e:
        message = str(e)
        if "\n" in message or target.filename not in message:
            raise AssertionError(f"{target.name}: the refusal is not one line naming the file: {message!r}") from None
        return "refused"
    if not target.same(got):
        raise WrongLoad(f"{target.name}: a damaged file loaded with other content ({len(data)} bytes)")
    return "intact"


# ---------------------------------------------------------------------------------------------------------------
# the long run


def run(examples: int, folder: Path, seed: int, only: list[str] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for key, make in TARGETS.items():
        if only and key not in only:
            continue
        where = folder / key  # each loader's files in a folder of their own
        where.mkdir(parents=True, exist_ok=True)
        target = make(where)
        counts = {k: {"tried": 0, "refused": 0, "intact": 0, "unchanged": 0} for k in MUTATIONS}
        failures: list[str] = []
        slowest = 0.0
        t0 = time.perf_counter()
        for i in range(examples):
            kind = MUTATIONS[i % len(MUTATIONS)]
            data = mutate(target.base, kind, rng)
            t = time.perf_counter()
            try:
                outcome = "unchanged" if data == target.base else attempt(target, data, where)
            except Exception as e:  # a wrong load or an unexpected exception: keep going, report them
                outcome = "failed"
                if len(failures) < 20:
                    failures.append(f"{kind}: {type(e).__name__}: {e}"[:300])
            slowest = max(slowest, time.perf_counter() - t)
            counts[kind]["tried"] += 1
            if outcome in ("refused", "intact", "unchanged"):
                counts[kind][outcome] += 1
        seconds = time.perf_counter() - t0
        rows.append({
            "loader": target.name, "file_bytes": len(target.base), "tried": sum(c["tried"] for c in counts.values()),
            "refused": sum(c["refused"] for c in counts.values()),
            "intact": sum(c["intact"] for c in counts.values()),
            "unchanged": sum(c["unchanged"] for c in counts.values()),
            "failed": sum(c["tried"] - c["refused"] - c["intact"] - c["unchanged"] for c in counts.values()),
            "by_mutation": counts, "seconds": round(seconds, 2), "slowest_example_s": round(slowest, 4),
            "failures": failures,
        })
    return {"examples_per_loader": examples, "seed": seed, "rows": rows}


def table(result: dict) -> str:
    lines = ["| loader | file bytes | tried | refused | loaded intact | unchanged | failed | seconds "
             "| slowest example |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['loader']} | {r['file_bytes']:,} | {r['tried']:,} | {r['refused']:,} | {r['intact']:,} | "
                     f"{r['unchanged']:,} | "
                     f"{r['failed']:,} | {r['seconds']:.1f} | {r['slowest_example_s'] * 1000:.1f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=20000, help="examples per loader (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=sorted(TARGETS), help="fuzz these loaders only")
    p.add_argument("--out", help="folder for fuzz_loaders.json (default: none written)")
    args = p.parse_args(argv)
    if args.examples < 1:
        p.error("--examples must be >= 1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import machine_info, utc_now, write_json

    started = utc_now()
    with tempfile.TemporaryDirectory(prefix="dsh-fuzz-") as tmp:
        result = run(args.examples, Path(tmp), args.seed, args.only)
    result.update(started=started, machine=machine_info(), command="python benchmarks/reliability/fuzz_loaders.py " +
                  " ".join(argv if argv is not None else sys.argv[1:]))
    print(table(result))
    for r in result["rows"]:
        for f in r["failures"]:
            print(f"FAILED {r['loader']}: {f}")
    if args.out:
        write_json(Path(args.out) / "fuzz_loaders.json", result)
        print(f"wrote {Path(args.out) / 'fuzz_loaders.json'}")
    return 1 if any(r["failed"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
