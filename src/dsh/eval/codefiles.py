"""Judging code files as ``dsh eval`` and ``dsh report`` do, for any program: the checks two files must pass to be
compared (one code length, labels of one kind) and the unlabelled rows left out, and counted."""

from __future__ import annotations

import os

from ..codes.codefile import CodeFile, load_codes
from ..errors import DataError
from .metrics import Evaluation, evaluate
from .report import ClassTable, class_code_table

__all__ = ["class_table_of", "evaluate_files"]

Source = str | os.PathLike | CodeFile


def _open(source: Source, unnamed: str) -> tuple[CodeFile, str]:
    """The code file and the name its errors give it: its path, or ``unnamed`` for one passed in memory."""
    if isinstance(source, CodeFile):
        return source, unnamed
    return load_codes(source), str(source)


def evaluate_files(query: Source, database: Source, *, topk: int | None = None, radius: int = 2,
                   ties: str = "expected") -> tuple[Evaluation, dict[str, int]]:
    """:func:`dsh.eval.evaluate` of the labelled rows of two code files (paths or :class:`CodeFile`), and how many
    unlabelled rows each had (``{"queries": n, "database": m}``), which are left out: a row without a label would
    otherwise count as relevant to every other unlabelled row. A one-line :class:`DataError` naming the file where
    the two cannot be compared."""
    (q, q_name), (db, db_name) = _open(query, "the query codes"), _open(database, "the database codes")
    if q.nbits != db.nbits:
        raise DataError(f"{q_name} has {q.nbits}-bit codes but {db_name} has {db.nbits}-bit codes")
    for name, cf in ((q_name, q), (db_name, db)):
        if cf.labels is None:
            raise DataError(f"{name}: no 'labels' array, so relevance is unknown")
    if q.multi_label != db.multi_label:
        raise DataError(f"{q_name} and {db_name}: one has class ids, the other multi-hot labels")
    (q, q_out), (db, db_out) = q.drop_unlabelled(q_name), db.drop_unlabelled(db_name)
    result = evaluate(q.codes, db.codes, q.labels, db.labels, q.nbits, topk=topk, radius=radius, ties=ties)
    return result, {"queries": q_out, "database": db_out}


def class_table_of(codes: Source, *, close_bits: int = 1) -> tuple[ClassTable, int]:
    """:func:`dsh.eval.class_code_table` of a code file's labelled rows (a path or :class:`CodeFile`), and how many
    unlabelled rows it had, which are left out (-1 is "no class", not a class of its own)."""
    cf, name = _open(codes, "the codes")
    if cf.labels is None or cf.multi_label:
        raise DataError(f"{name}: the class table needs single-label class ids in 'labels'")
    cf, unlabelled = cf.drop_unlabelled(name)
    names = None if cf.class_names is None else [str(s) for s in cf.class_names]
    return class_code_table(cf.codes, cf.labels, cf.nbits, names, close_bits=close_bits), unlabelled
