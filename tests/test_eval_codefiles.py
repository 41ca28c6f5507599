"""Code files judged as dsh eval and dsh report judge them, from the library: unlabelled rows left out and counted,
files that cannot be compared refused in one line naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from dsh.codes.codefile import CodeFile, save_codes
from dsh.errors import DataError
from dsh.eval import class_code_table, class_table_of, evaluate, evaluate_files


def labelled_codes(n: int = 40, seed: int = 0) -> CodeFile:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    labels[::4] = -1
    return CodeFile(rng.integers(0, 256, (n, 1), dtype=np.uint8), 8, labels=labels,
                    class_names=np.asarray(["a", "b", "c"]))


def test_evaluate_files_leaves_out_and_counts_the_unlabelled_rows(tmp_path):
    q, db = labelled_codes(20, 1), labelled_codes(30, 2)
    save_codes(tmp_path / "q.npz", q)
    result, excluded = evaluate_files(tmp_path / "q.npz", db, topk=10)
    assert excluded == {"queries": 5, "database": 8}
    kq, kdb = q.labels >= 0, db.labels >= 0
    want = evaluate(q.codes[kq], db.codes[kdb], q.labels[kq], db.labels[kdb], 8, topk=10)
    assert result.n_queries == 15 and result.n_database == 22 and result.map > 0
    assert result.to_dict() == want.to_dict()


def test_class_table_of_leaves_out_the_unlabelled_rows():
    cf = labelled_codes()
    table, unlabelled = class_table_of(cf, close_bits=2)
    keep = cf.labels >= 0
    assert unlabelled == 10
    assert table == class_code_table(cf.codes[keep], cf.labels[keep], 8, ["a", "b", "c"], close_bits=2)


def test_code_files_that_cannot_be_judged_are_refused_naming_the_file(tmp_path):
    cf = labelled_codes()
    none = CodeFile(cf.codes, 8, labels=np.full(len(cf), -1))
    save_codes(tmp_path / "none.npz", none)
    with pytest.raises(DataError, match=r"none\.npz: no row has a label"):
        evaluate_files(tmp_path / "none.npz", cf)
    with pytest.raises(DataError, match="the codes: no row has a label"):
        class_table_of(none)
    with pytest.raises(DataError, match="8-bit codes but the database codes has 16-bit"):
        evaluate_files(cf, CodeFile(np.zeros((3, 2), np.uint8), 16, labels=np.zeros(3, int)))
    with pytest.raises(DataError, match="the database codes: no 'labels' array"):
        evaluate_files(cf, CodeFile(cf.codes, 8))
    with pytest.raises(DataError, match="one has class ids, the other multi-hot"):
        evaluate_files(cf, CodeFile(cf.codes, 8, labels=np.ones((len(cf), 3), np.uint8)))
    with pytest.raises(DataError, match="single-label class ids"):
        class_table_of(CodeFile(cf.codes, 8, labels=np.ones((len(cf), 3), np.uint8)))
