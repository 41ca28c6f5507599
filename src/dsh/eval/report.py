"""The class hash table: what each class's codes look like and how close classes sit (numpy only).

For each class: its most common code (hex and binary), the share of the class that has exactly that code, the mean
Hamming distance of the class's codes to it, and the nearest other class's typical code with its distance. Classes
whose typical codes are at most ``close_bits`` apart are flagged: they are the pairs a query is most likely to
confuse (the seed experiment had 2/3 and 5/6 one bit apart at 8 bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..codes.bits import check_codes, to_binary_string, to_hex
from ..codes.hamming import pairwise_hamming
from ..errors import InputError


@dataclass
class ClassRow:
    label: int
    name: str
    count: int
    code_hex: str
    code_binary: str
    share_exact: float  # fraction of the class whose code equals the typical code
    mean_distance: float  # mean Hamming distance of the class's codes to its typical code
    nearest_class: str | None
    nearest_distance: int | None
    flagged: bool  # nearest other class within `close_bits`


@dataclass
class ClassTable:
    nbits: int
    close_bits: int
    rows: list[ClassRow]
    close_pairs: list[tuple[str, str, int]]  # (class a, class b, distance) with distance <= close_bits
    distinct_codes: bool  # every class has a different typical code

    def to_dict(self) -> dict:
        return {
            "nbits": self.nbits,
            "close_bits": self.close_bits,
            "distinct_codes": self.distinct_codes,
            "close_pairs": [list(p) for p in self.close_pairs],
            "classes": [asdict(r) for r in self.rows],
        }


def class_code_table(
    codes: np.ndarray,
    labels: np.ndarray,
    nbits: int,
    class_names: list[str] | None = None,
    close_bits: int = 1,
) -> ClassTable:
    """Build the table from ``codes`` uint8[n, ceil(nbits/8)] and single-label ``labels`` int[n]."""
    codes = check_codes(codes, nbits)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError("the class table needs single-label class ids (a 1-D labels array)")
    if labels.shape[0] != codes.shape[0]:
        raise InputError(f"{labels.shape[0]} labels for {codes.shape[0]} codes")
    present = np.unique(labels)

    def name_of(c: int) -> str:
        if class_names is not None and 0 <= c < len(class_names):
            return str(class_names[c])
        return str(c)

    typical = []
    stats = []
    for c in present:
        cls_codes = codes[labels == c]
        uniq, counts = np.unique(cls_codes, axis=0, return_counts=True)
        # most common code; np.unique sorts rows, so ties go to the smallest code: deterministic
        mode = uniq[np.argmax(counts)][None, :]
        typical.append(mode[0])
        dist = pairwise_hamming(mode, cls_codes)[0]
        stats.append((int(cls_codes.shape[0]), float(counts.max() / cls_codes.shape[0]), float(dist.mean())))
    typical = np.stack(typical) if typical else np.zeros((0, codes.shape[1]), np.uint8)
    between = pairwise_hamming(typical, typical)
    np.fill_diagonal(between, np.iinfo(np.int32).max)

    hexes = to_hex(typical, nbits)
    binaries = to_binary_string(typical, nbits)
    rows = []
    for i, c in enumerate(present):
        if len(present) > 1:
            j = int(np.argmin(between[i]))
            near_name, near_d = name_of(int(present[j])), int(between[i, j])
        else:
            near_name, near_d = None, None
        count, share, mean_d = stats[i]
        rows.append(
            ClassRow(
                label=int(c),
                name=name_of(int(c)),
                count=count,
                code_hex=hexes[i],
                code_binary=binaries[i],
                share_exact=share,
                mean_distance=mean_d,
                nearest_class=near_name,
                nearest_distance=near_d,
                flagged=near_d is not None and near_d <= close_bits,
            )
        )
    pairs = [
        (name_of(int(present[i])), name_of(int(present[j])), int(between[i, j]))
        for i in range(len(present))
        for j in range(i + 1, len(present))
        if between[i, j] <= close_bits
    ]
    distinct = len({h for h in hexes}) == len(hexes)
    return ClassTable(nbits=int(nbits), close_bits=close_bits, rows=rows, close_pairs=pairs, distinct_codes=distinct)


def format_markdown(table: ClassTable) -> str:
    """The table as Markdown, with a summary line of the close pairs."""
    lines = [
        "| class | n | code (hex) | code (binary) | share with code | mean dist | nearest class | dist |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | ---: |",
    ]
    for r in table.rows:
        flag = " ⚠" if r.flagged else ""
        near = "-" if r.nearest_class is None else r.nearest_class
        nd = "-" if r.nearest_distance is None else f"{r.nearest_distance}{flag}"
        lines.append(
            f"| {r.name} | {r.count} | 0x{r.code_hex} | {r.code_binary} | {r.share_exact:.1%} | "
            f"{r.mean_distance:.2f} | {near} | {nd} |"
        )
    if table.close_pairs:
        pairs = ", ".join(f"{a}/{b} ({d} bit{'s' if d != 1 else ''})" for a, b, d in table.close_pairs)
        lines.append(f"\nClass pairs within {table.close_bits} bit: {len(table.close_pairs)} — {pairs}")
    else:
        lines.append(f"\nClass pairs within {table.close_bits} bit: 0")
    if not table.distinct_codes:
        lines.append("Some classes share the same typical code.")
    return "\n".join(lines)
