"""Where an index goes, checked in the library before anything is encoded: each contradiction refused in one line
naming the flag, as an InputError (a flag's value, not a damaged file)."""

from __future__ import annotations

import pytest

from dsh.errors import InputError
from dsh.index.target import check_index_target


@pytest.mark.parametrize("settings, message", [
    (dict(), "index needs --out FILE"),
    (dict(out="x.dshidx", uri="m.db"), "--uri is for --store milvus"),
    (dict(out="x.dshidx", append=True), "--append is for --store milvus"),
    (dict(out="x.dshidx", nlist=4), "--nlist is for --format faiss"),
    (dict(out="x.dshidx", faiss_index="ivf"), "--faiss-index is for --format faiss"),
    (dict(store="milvus", uri="m.db"), "needs --uri URI and --collection NAME"),
    (dict(store="milvus", uri="m.db", collection="c", out="x"), "--out and --format are for index files"),
    (dict(store="milvus", uri="m.db", collection="c", overwrite=True, append=True), "give one of them"),
    (dict(store="s3", out="x"), "--store must be file or milvus"),
])
def test_contradicting_settings_are_refused_naming_the_flag(settings, message):
    with pytest.raises(InputError, match=message) as e:
        check_index_target(**settings)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("settings", [
    dict(out="x.dshidx"),
    dict(out="x.index", format="faiss", faiss_index="ivf", nlist=4),
    dict(out="x.index", format="faiss", faiss_index="hash", hash_bits=8),
    dict(store="milvus", uri="m.db", collection="c", append=True),
])
def test_settings_that_fit_pass(settings):
    assert check_index_target(**settings) is None
