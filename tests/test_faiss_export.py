"""dsh's codes as faiss binary index files (dsh.index.faiss_file, ``dsh index --format faiss``): what
``faiss.read_index_binary`` loads searches with HammingIndex's distances; ids other than 0..n-1 come back as
dsh's ids; bad settings are one-line errors. A few seconds."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed: pip install 'dsh[faiss]'")

from dsh.cli import main  # noqa: E402
from dsh.codes.codefile import CodeFile, save_codes  # noqa: E402
from dsh.errors import InputError  # noqa: E402
from dsh.index.faiss_file import to_faiss, write_faiss  # noqa: E402
from dsh.index.flat import HammingIndex  # noqa: E402


def make_index(nbits: int, n: int = 3000, seed: int = 0) -> tuple[HammingIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    bits = rng.random((n, nbits)) < 0.5
    bits[n // 2 :] = bits[: n - n // 2]  # duplicates: ties
    codes = np.packbits(bits, axis=1, bitorder="little")
    index = HammingIndex(nbits)
    index.add(codes)
    return index, np.concatenate([codes[:5], np.packbits(rng.random((5, nbits)) < 0.5, axis=1, bitorder="little")])


def check_like_dsh(fidx, index: HammingIndex, q: np.ndarray, k: int = 10, radius: int = 2) -> None:
    """faiss's distances are HammingIndex's; its ids are codes at those distances (faiss orders ties its own
    way); its range search, sorted by (distance, id), is HammingIndex's."""
    D, I = fidx.search(q, k)
    Dh, _ = index.search(q, k)
    assert np.array_equal(D, Dh)
    assert set(I.ravel().tolist()) <= set(index.ids.tolist())
    true = np.unpackbits(index.reconstruct(I.ravel()).reshape(I.shape + (-1,)) ^ q[:, None, :], axis=2).sum(2)
    assert np.array_equal(true, D)
    lims, Df, If = fidx.range_search(q, radius + 1)  # faiss keeps distances < its radius
    lh, Dh, Ih = index.range_search(q, radius)
    assert np.array_equal(lims, lh)
    for j in range(len(q)):
        a, b = lims[j], lims[j + 1]
        order = np.lexsort((If[a:b], Df[a:b]))
        assert np.array_equal(Df[a:b][order], Dh[a:b]) and np.array_equal(If[a:b][order], Ih[a:b])


@pytest.mark.parametrize("nbits", [16, 12, 64])
def test_flat_file_searches_as_hamming_index(tmp_path, nbits):
    index, q = make_index(nbits)
    path = tmp_path / "db.faissbin"
    write_faiss(path, index)
    fidx = faiss.read_index_binary(str(path))
    assert isinstance(fidx, faiss.IndexBinaryFlat) and fidx.ntotal == index.ntotal
    assert fidx.d == 8 * ((nbits + 7) // 8)  # a 12-bit code: 16 dimensions, padding bits 0
    check_like_dsh(fidx, index, q, k=10)
    check_like_dsh(fidx, index, q, k=100, radius=0)


def test_ivf_and_hash_files(tmp_path):
    index, q = make_index(16)
    write_faiss(tmp_path / "ivf.faissbin", index, kind="ivf", nlist=20, nprobe=20)  # nprobe = nlist: exhaustive
    ivf = faiss.read_index_binary(str(tmp_path / "ivf.faissbin"))
    assert isinstance(ivf, faiss.IndexBinaryIVF) and (ivf.nlist, ivf.nprobe) == (20, 20)
    check_like_dsh(ivf, index, q)
    write_faiss(tmp_path / "hash.faissbin", index, kind="hash", hash_bits=8, nflip=8)  # every bucket visited
    hsh = faiss.read_index_binary(str(tmp_path / "hash.faissbin"))
    assert isinstance(hsh, faiss.IndexBinaryHash) and (hsh.b, hsh.nflip) == (8, 8)
    check_like_dsh(hsh, index, q)
    default = to_faiss(index, kind="ivf")
    assert default.nlist == round(np.sqrt(index.ntotal)) and default.nprobe == 16


def test_own_ids_come_back(tmp_path):
    index, q = make_index(32)
    index.remove(index.ids[::3])  # ids no longer 0..n-1
    for kind in ("flat", "ivf", "hash"):
        settings = {"nprobe": 10, "nlist": 10} if kind == "ivf" else {"nflip": 16, "hash_bits": 16} \
            if kind == "hash" else {}
        write_faiss(tmp_path / f"{kind}.faissbin", index, kind=kind, **settings)
        fidx = faiss.read_index_binary(str(tmp_path / f"{kind}.faissbin"))
        check_like_dsh(fidx, index, q)
    codes = np.asarray(index.codes)
    fidx = to_faiss(codes, 32, ids=np.arange(len(codes)) * 10 + 7)
    _, I = fidx.search(codes[:1], 1)
    assert I[0, 0] == 7


def test_bad_settings_are_input_errors():
    index, _ = make_index(16, n=50)
    for kwargs in ({"kind": "lsh"}, {"kind": "flat", "nlist": 4}, {"kind": "ivf", "nlist": 100},
                   {"kind": "ivf", "nlist": 4, "nprobe": 5}, {"kind": "hash", "hash_bits": 17},
                   {"kind": "hash", "nflip": -1}, {"kind": "ivf", "nlist": 0}):
        with pytest.raises(InputError):
            to_faiss(index, **kwargs)
    with pytest.raises(InputError):
        to_faiss(np.zeros((3, 2), np.uint8))  # codes without nbits
    with pytest.raises(InputError):
        to_faiss(np.zeros((3, 2), np.uint8), 16, ids=[1, 1, 2])


def test_cli_format_faiss(tmp_path, capsys):
    index, q = make_index(24)
    npz = tmp_path / "db.npz"
    save_codes(npz, CodeFile(np.asarray(index.codes), 24))
    out = tmp_path / "db.faissbin"
    assert main(["index", "--codes", str(npz), "--format", "faiss", "--out", str(out)]) == 0
    assert "IndexBinaryFlat" in capsys.readouterr().out
    check_like_dsh(faiss.read_index_binary(str(out)), index, q)
    assert main(["index", "--codes", str(npz), "--format", "faiss", "--faiss-index", "ivf", "--nlist", "30",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert faiss.read_index_binary(str(out)).nlist == 30
    assert main(["index", "--codes", str(npz), "--format", "faiss", "--faiss-index", "hash", "--hash-bits", "99",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsh: error: ") and "hash_bits" in err and len(err.splitlines()) == 1
    assert main(["index", "--codes", str(npz), "--out", str(out), "--nlist", "3"]) == 2
    assert "--nlist is for --format faiss" in capsys.readouterr().err
