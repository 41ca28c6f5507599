"""The command line without torch: its parser imports none (``dsh --help`` in a fraction of a second instead of
seconds and most of a gigabyte), and an installed torch that cannot be imported stops only the commands that need
it: an ONNX model still encodes, and the reason is said in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_digit_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_python(code: str, *, pythonpath: list[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), SRC])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["encode", "--help"], ["search", "--help"], ["train", "--help"]])
def test_the_parser_imports_no_torch(argv):
    r = run_python(f"""
import contextlib, io, sys
from dsh.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = main({argv!r})
print(rc, "torch" in sys.modules, "torchvision" in sys.modules, "numba" in sys.modules)
print(out.getvalue())
""")
    assert r.returncode == 0, r.stderr
    status, help_text = r.stdout.split("\n", 1)
    assert status == "0 False False False"  # nor numba (0.3 s of start-up here)
    assert "usage: dsh" in help_text
    if argv[0] == "train":  # the model names are listed all the same
        from dsh.models.names import MODEL_NAMES

        # argparse wraps lines at hyphens too (efficientnet- / lite0): compare with the white space taken out
        assert ",".join(MODEL_NAMES) in "".join(help_text.split()) and "paper-bn" in MODEL_NAMES


@pytest.fixture(scope="module")
def onnx_model(digits_run, tmp_path_factory) -> Path:
    from dsh.runtime.export import export_model

    path = tmp_path_factory.mktemp("torch-free") / "m.onnx"
    export_model(digits_run, path)
    return path


@pytest.fixture()
def broken_torch(tmp_path) -> Path:
    """A folder to put first on the path, holding a ``torch`` whose import fails as a mismatched build's does."""
    pkg = tmp_path / "broken" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise ImportError("libtorch_cpu.so: undefined symbol: a test\'s broken torch")\n')
    return pkg.parent


def test_a_broken_torch_does_not_stop_onnx_encoding(tmp_path, onnx_model, broken_torch, digits_run):
    folder, out = tmp_path / "imgs", tmp_path / "codes.npz"
    write_digit_folder(folder, 12)
    r = run_python(f"""
import sys
from dsh.cli import main
rc = main(["encode", "--model", {str(onnx_model)!r}, "--images", {str(folder)!r}, "--out", {str(out)!r},
           "--quiet", "--threads", "1"])
assert rc == 0, rc
# what imports torch only where it can: said once, with why
from dsh.utils.threads import set_threads, thread_counts
assert set_threads(1) == 1 and set_threads(1) == 1
assert thread_counts()["torch"] is None
print("ok")
""", pythonpath=[broken_torch])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok" and "wrote 12 codes of 8 bits" in r.stdout
    warnings = [line for line in r.stderr.splitlines() if "torch is installed but cannot be imported" in line]
    assert len(warnings) == 1 and "undefined symbol: a test's broken torch" in warnings[0], r.stderr

    from dsh.codes.codefile import load_codes
    from dsh.runtime.encoder import Encoder

    cf = load_codes(out)
    assert len(cf) == 12
    assert (cf.codes == Encoder.from_file(onnx_model).encode([folder / p for p in cf.paths]).codes).all()

    # a command that needs torch says why it cannot run, in one line, without a traceback
    r = run_python(f"""
import sys
from dsh.cli import main
sys.exit(main(["encode", "--run", {str(digits_run)!r}, "--images", {str(folder)!r}, "--out", "x.npz"]))
""", pythonpath=[broken_torch])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsh: error: this needs torch, which is installed but cannot"), \
        r.stderr
    assert "undefined symbol: a test's broken torch" in lines[0]
