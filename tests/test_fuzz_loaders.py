"""The file loaders under hypothesis: random bytes, truncations, bit flips and overwritten runs of valid code files,
index files, catalog files and checkpoints are refused with a one-line UserError naming the file, or load exactly
the original content; never another exception, never a silently wrong load (see
benchmarks/reliability/fuzz_loaders.py, which holds the files, the damage and the oracle, and runs many more examples).

"Silently wrong" for a code file (.npz): it loads, and some array (codes, nbits, labels, u, paths, class_names)
differs from the one written. The zip container's CRC-32 of each array refuses flipped bits in array data and
headers, and the loader's checks refuse readable files that are not code files, so a flip can only be refused or
land on bytes that carry no content (a timestamp, an unused header field): both are accepted, a change is not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reliability import fuzz_loaders  # noqa: E402

# examples per loader and kind of damage; the whole file stays well under a minute on 2 cores
EXAMPLES = {"codes": 700, "index": 700, "catalog": 700, "checkpoint": 700}
FAST = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    out = {}
    for key, make in fuzz_loaders.TARGETS.items():
        folder = tmp_path_factory.mktemp(f"fuzz-{key}")
        out[key] = (make(folder), folder)
    return out


def damaged(base: bytes):
    n = len(base)
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=4)

    def flip(pairs):
        data = bytearray(base)
        for at, bit in pairs:
            data[at] ^= 1 << bit
        return bytes(data)

    def overwrite(args):
        at, junk = args
        data = bytearray(base)
        data[at : at + len(junk)] = junk[: n - at]
        return bytes(data)

    return st.one_of(
        st.binary(max_size=2 * n),  # random bytes
        st.integers(0, n - 1).map(lambda k: base[:k]),  # truncated
        flips.map(flip),  # bit flips anywhere
        st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=64)).map(overwrite),
    )


def fuzz(key: str, targets) -> dict:
    target, folder = targets[key]
    outcomes = {"refused": 0, "intact": 0}

    @settings(max_examples=EXAMPLES[key] * 4, **FAST)
    @given(data=damaged(target.base))
    def check(data):
        assume(data != target.base)  # two flips of one bit: no damage
        outcomes[fuzz_loaders.attempt(target, data, folder)] += 1

    check()
    assert outcomes["refused"] > 0
    print(f"{target.name}: {outcomes}")  # shown with pytest -s
    return outcomes


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_damaged_files_are_refused_or_load_intact(key, targets):
    outcomes = fuzz(key, targets)
    if key in ("index", "catalog"):
        # a CRC-32 over every byte: no damage of these kinds can load at all
        assert outcomes["intact"] == 0, outcomes


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_the_undamaged_file_loads(key, targets):
    target, folder = targets[key]
    assert fuzz_loaders.attempt(target, target.base, folder) == "intact"


def test_a_wrong_load_would_be_caught(targets):
    """The oracle is not vacuous: a code file rewritten with other labels (a valid file) counts as wrong."""
    import numpy as np

    from dsh.codes.codefile import load_codes, save_codes

    target, folder = targets["codes"]
    other = folder / "other.npz"
    cf = load_codes(folder / "base.npz")
    cf.labels = np.where(cf.labels >= 0, (cf.labels + 1) % 3, -1)
    save_codes(other, cf)
    with pytest.raises(fuzz_loaders.WrongLoad):
        fuzz_loaders.attempt(target, other.read_bytes(), folder)
