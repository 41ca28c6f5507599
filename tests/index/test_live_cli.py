"""``dsh index add`` / ``dsh index remove`` on an index file: the changes are logged beside it (not folded until
asked), ``dsh search`` sees them, the result equals an index built from the same images at once, and the
command line refuses what does not fit in one line."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import write_digit_folder

from dsh.cli import main
from dsh.index.flat import HammingIndex
from dsh.index.live import has_changes_logged, lock_path
from dsh.index.store import open_index


@pytest.fixture
def built(tmp_path, digits_run):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    first, more = tmp_path / "first", tmp_path / "more"
    for f in write_digit_folder(tmp_path / "all", 50):  # digits 0..29 in first/, 30..49 in more/, by class
        dest = (first if int(f.stem) < 30 else more) / f.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / f.name)
    index = tmp_path / "db.dshidx"
    assert main(["index", "--images", str(first), "--run", str(run), "--out", str(index), "--quiet"]) == 0
    return {"run": run, "first": first, "more": more, "index": index, "tmp": tmp_path}


def test_add_then_remove_equals_an_index_built_at_once(built, capsys):
    index, tmp = built["index"], built["tmp"]
    size = index.stat().st_size
    capsys.readouterr()
    assert main(["index", "add", "--index", str(index), "--images", str(built["more"]), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().startswith("added 20 items (ids 30..49)")
    assert index.stat().st_size == size and has_changes_logged(index)  # logged, the file not rewritten
    gone = {name_of(r) for r in open_index(index).lookup([3, 31])}  # what ids 3 and 31 are
    assert main(["index", "remove", "--index", str(index), "--ids", "3", "31", "999"]) == 0
    assert "removed 2 of 3 ids" in capsys.readouterr().out

    # the reference: every image indexed at once (other ids: items are compared by code, label and file name)
    both = tmp / "both"
    shutil.copytree(built["first"], both)
    shutil.copytree(built["more"], both, dirs_exist_ok=True)
    ref_path = tmp / "ref.dshidx"
    assert main(["index", "--images", str(both), "--run", str(built["run"]), "--out", str(ref_path),
                 "--quiet"]) == 0
    ref = HammingIndex.load(ref_path)
    drop_named(ref, gone)
    code = format(int(ref.codes[0, 0]), "02X")
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--hex", code, "--radius", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    want = [r for r in ref.lookup(ref.ids)
            if bin(int(ref.codes[ref.ids == r["id"]][0, 0]) ^ int(code, 16)).count("1") <= 1]
    assert sorted(map(name_of, got)) == sorted(map(name_of, want)) and got

    assert main(["index", "add", "--index", str(index), "--codes", str(tmp / "none.npz")]) == 2  # missing file
    gone = {name_of(open_index(index).lookup([0])[0])}
    assert main(["index", "remove", "--index", str(index), "--ids", "0", "--fold"]) == 0
    drop_named(ref, gone)
    assert not has_changes_logged(index)
    assert items(HammingIndex.load(index)) == items(ref)


def name_of(record: dict) -> str:
    return record["path"].rsplit("/", 1)[-1]


def drop_named(index: HammingIndex, names: set[str]) -> None:
    index.remove([r["id"] for r in index.lookup(index.ids) if name_of(r) in names])


def items(index) -> list:
    """Every item as (code, label, file name), sorted: ids aside."""
    recs = index.lookup(index.ids)
    return sorted((c.tobytes(), r["label"], name_of(r)) for c, r in zip(index.codes, recs))

def test_command_line_refusals(built, capsys):
    index = str(built["index"])
    cases = [
        (["index", "add", "--images", str(built["more"])], "needs --index FILE"),
        (["index", "add", "--index", index], "needs --codes FILE or --images FOLDER"),
        (["index", "remove", "--index", index], "takes --ids"),
        (["index", "add", "--index", index, "--images", str(built["more"]), "--out", "x.dshidx"],
         "--out is for building an index"),
        (["index", "--codes", "x.npz", "--out", "y", "--ids", "3"], "--ids is for dsh index add"),
        (["index", "--out", "y"], "needs --codes FILE or --images FOLDER"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_one_writer_per_file(built, capsys):
    from dsh.index.live import LiveIndex

    index = built["index"]
    with LiveIndex.open(index):
        capsys.readouterr()
        assert main(["index", "remove", "--index", str(index), "--ids", "1"]) == 2
        assert "another dsh process" in capsys.readouterr().err
        assert main(["index", "--images", str(built["first"]), "--run", str(built["run"]), "--out", str(index),
                     "--quiet"]) == 2
        assert "is writing this index" in capsys.readouterr().err
    assert lock_path(index).is_file()
    assert main(["index", "remove", "--index", str(index), "--ids", "1"]) == 0
