"""The README's Python example runs as written (in a fresh folder, so its run folder is a temporary one)."""

from __future__ import annotations

import re

from conftest import REPO

README = REPO / "README.md"


def readme_example() -> str:
    """The first ```python block of the README's "From Python" section."""
    section = README.read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert "Encoder.from_run" in code and "HammingIndex" in code and "searcher.search" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    # what it printed: the encoder, then one line per query with its neighbours
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Encoder(") and len(lines) == 4
    D, I, index, codes = namespace["D"], namespace["I"], namespace["index"], namespace["codes"]
    assert D.shape == I.shape == (3, 5) and (D[:, 0] == 0).all()  # each query code is in the index
    assert index.ntotal == len(codes) and (tmp_path / "runs" / "api-example" / "best.pt").is_file()
