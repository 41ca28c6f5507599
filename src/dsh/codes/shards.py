"""Code files written in shards (one per process of a ``torchrun`` launch) and read back as one.

Process ``I`` of ``N`` writes ``codes-0000I-of-0000N.npz``; wherever a code file is read
(:func:`dsh.codes.codefile.load_codes`), a ``codes.npz`` that does not exist but whose complete shard set does is
read as the shards joined in order, the file one process would have written (docs/FORMATS.md, "Shards"). No torch
here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import DataError, InputError


def shard_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """``dir/codes.npz`` -> ``dir/codes-00001-of-00004.npz`` for rank 1 of 4."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{rank:05d}-of-{world:05d}{out.suffix or '.npz'}")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[a, b)`` of ``n`` items: the first ``n % world`` ranks take one more."""
    per, extra = divmod(n, world)
    a = rank * per + min(rank, extra)
    return a, a + per + (rank < extra)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; an :class:`InputError` naming ``--shard`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise InputError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_from_environment() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when running under torchrun with more than one process, else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def find_shards(path: str | os.PathLike) -> list[Path] | None:
    """The complete, ordered shard set of ``path`` (``codes.npz`` -> ``codes-*-of-N.npz``), or ``None`` when there
    is none; a set with a shard missing, or shards of two different splits, is a :class:`DataError`."""
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"-(\d{5})-of-(\d{5})" + re.escape(path.suffix or ".npz") + "$")
    try:
        found = [(p, pattern.match(p.name)) for p in path.parent.iterdir()]
    except OSError:
        return None
    found = [(p, m) for p, m in found if m]
    if not found:
        return None
    worlds = {int(m.group(2)) for _, m in found}
    if len(worlds) != 1:
        raise DataError(f"{path}: shards of different splits are there ({', '.join(map(str, sorted(worlds)))} "
                        f"parts); remove the stale ones")
    world = worlds.pop()
    have = {int(m.group(1)): p for p, m in found}
    missing = [r for r in range(world) if r not in have]
    if missing:
        raise DataError(f"{path}: shard {missing[0]} of {world} is missing ({shard_path(path, missing[0], world).name})"
                        f"; finish that encode first")
    return [have[r] for r in range(world)]
