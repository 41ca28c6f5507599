"""The model files under hypothesis: ONNX and safetensors files from ``dsh export``, damaged (random bytes,
truncations, bit flips, overwritten runs), are refused with a one-line UserError naming the file or load exactly:
the same ModelInfo and the same codes of probe images as the original. Damaged and then sealed again (a crafted
file), they are refused or load as a working model; a third party's pretrained weights are refused or map onto
the network. And ONNX graphs that are valid and sealed but not what their metadata says (another input shape,
another code length, a fixed batch, extra outputs, a declared shape that the graph does not compute, text that
is not UTF-8) are refused in one line. The files, damage and oracles: benchmarks/reliability/fuzz_models.py, which
runs many more examples, each in a worker process with a timeout.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import REPO

hypothesis = pytest.importorskip("hypothesis")
onnx = pytest.importorskip("onnx")
from contracts.test_fuzz_loaders import FAST, damaged  # noqa: E402
from hypothesis import assume, given, settings  # noqa: E402

from dsh.errors import ModelFileError  # noqa: E402
from dsh.runtime.encoder import Encoder  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from reliability import fuzz_models  # noqa: E402

# examples per target; the model files are ~460 KB, a crafted ONNX file that parses costs an onnxruntime session
EXAMPLES = {"onnx": 120, "safetensors": 120, "onnx-resealed": 40, "safetensors-resealed": 40, "pretrained": 120}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-models")


@pytest.fixture(scope="module")
def targets(folder):
    out = {}
    for key, make in fuzz_models.TARGETS.items():
        where = folder / key
        where.mkdir()
        out[key] = (make(where), where)
    return out


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_damaged_model_files_are_refused_or_load_exactly(key, targets):
    target, where = targets[key]
    outcomes = {"refused": 0, "intact": 0}

    @settings(max_examples=EXAMPLES[key], **FAST)
    @given(data=damaged(target.base))
    def check(data):
        assume(data != target.base)
        outcomes[fuzz_models.attempt(target, data, where)] += 1

    check()
    print(f"{target.name}: {outcomes}")  # shown with pytest -s
    assert outcomes["refused"] > 0
    if key in ("onnx", "safetensors"):
        assert outcomes["intact"] == 0, outcomes  # a sha256 over every byte: no damage loads


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_the_undamaged_file_loads(key, targets):
    target, where = targets[key]
    assert fuzz_models.attempt(target, target.base, where) == "intact"


def test_the_exported_files_give_the_codes_of_their_checkpoint(folder, targets):
    """The oracle is not vacuous: the exported files give the checkpoint's codes, which differ between probes."""
    ckpt = fuzz_models._checkpoint(folder / "onnx")
    _, want = fuzz_models._encode(ckpt)
    assert len({bytes(c) for c in want}) > 1
    for key in ("onnx", "safetensors"):
        target, where = targets[key]
        info, codes = target.load(where / f"base.{key}")
        assert np.array_equal(codes, want) and info.nbits == 8


def test_an_unsealed_model_file_is_refused(folder, targets):
    """A file without its seal (another tool's, or written before files carried one) is refused in one line."""
    proto = onnx.load(str(folder / "onnx" / "base.onnx"))
    keep = [e for e in proto.metadata_props if e.key != "dsh_sha256"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    path = folder / "unsealed.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match=r"^\S*unsealed.onnx: not a dsh model file.*dsh export$"):
        Encoder.from_file(path)


# ---------------------------------------------------------------------------------------------------------------
# valid, sealed graphs that are not what their metadata says


def _sealed(proto, path):
    from dsh.runtime.export import sealed_onnx

    path.write_bytes(sealed_onnx(proto))
    return path


def _meta(proto, **changes):
    entry = next(e for e in proto.metadata_props if e.key == "dsh")
    entry.value = json.dumps({**json.loads(entry.value), **changes})
    return proto


def _output_to_16(proto):
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 16  # declared [N, 16]; it computes [N, 8]
    return _meta(proto, nbits=16)


def _extra_output(proto):
    node = proto.graph.node.add()
    node.op_type, node.input[:], node.output[:] = "Identity", [proto.graph.output[0].name], ["u_copy"]
    extra = proto.graph.output.add()
    extra.CopyFrom(proto.graph.output[0])
    extra.name = "u_copy"
    return proto


def _fixed_batch(proto):
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    return proto


def _half_output(proto):
    node = proto.graph.node.add()
    name = proto.graph.output[0].name
    node.op_type, node.input[:], node.output[:] = "Cast", [name], ["u_half"]
    node.attribute.add().CopyFrom(onnx.helper.make_attribute("to", onnx.TensorProto.FLOAT16))
    proto.graph.output[0].name = "u_half"
    proto.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return proto


MISMATCHES = {
    "other-input-shape": (lambda p: _meta(p, input_shape=[1, 9, 8]), r"its input is tensor\(uint8\)"),
    "other-channels": (lambda p: _meta(p, input_shape=[3, 8, 8]), r"its input is tensor\(uint8\)"),
    "other-nbits": (lambda p: _meta(p, nbits=16), r"its output is tensor\(float\)"),
    # onnxruntime infers the output's shape from the graph, or the probe batch finds it: refused either way
    "declared-not-computed": (_output_to_16, r"its output is tensor\(float\) \['N', 8\]|answered \(2, 8\)"),
    "extra-output": (_extra_output, "one input .images. and one output .u., got 1 and 2"),
    "fixed-batch": (_fixed_batch, r"its input is tensor\(uint8\) \[2, 1, 8, 8\]"),
    "half-output": (_half_output, r"its output is tensor\(float16\)"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_sealed_graph_that_is_not_what_its_metadata_says_is_refused(case, folder, targets):
    change, message = MISMATCHES[case]
    path = _sealed(change(onnx.load(str(folder / "onnx" / "base.onnx"))), folder / f"{case}.onnx")
    with pytest.raises(ModelFileError) as e:
        Encoder.from_file(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and len(text) < 400, text
    assert __import__("re").search(message, text), text


def test_a_sealed_safetensors_file_of_another_model_is_refused(folder, targets):
    from safetensors.torch import load

    from dsh.runtime.export import sealed_safetensors

    data = (folder / "safetensors" / "base.safetensors").read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    info = json.loads(meta["dsh"])
    for name, changes in (("nbits", {"nbits": 16, "model_config": {**info["model_config"], "nbits": 16}}),
                          ("nbits-only", {"nbits": 16}), ("channels", {"input_shape": [3, 8, 8]})):
        # (another height or width is not refused: this network takes any image size, so it fits)
        path = folder / f"other-{name}.safetensors"
        path.write_bytes(sealed_safetensors(load(data), {"dsh": json.dumps({**info, **changes})}))
        with pytest.raises(ModelFileError, match=rf"^{path}: .*(do not match|does not fit)"):
            Encoder.from_file(path)


@pytest.mark.parametrize("where", [b"dsh-model", b"images"])
def test_a_sealed_onnx_file_with_text_that_is_not_utf8_is_refused(where, folder, targets):
    """onnxruntime decodes metadata and input names as UTF-8 (the long fuzz run found these)."""
    from dsh.models.sealing import ONNX_PREFIX

    data = (folder / "onnx" / "base.onnx").read_bytes()
    assert where in data
    path = folder / f"not-utf8-{where.decode()}.onnx"
    path.write_bytes(fuzz_models.reseal(data.replace(where, where[:2] + b"\x86" + where[3:]), ONNX_PREFIX))
    with pytest.raises(ModelFileError, match=rf"^{path}: .*not UTF-8"):
        Encoder.from_file(path)
