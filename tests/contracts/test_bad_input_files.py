"""Bad files handed to dsh's loaders directly (code files, index and catalog files, checkpoints, model files,
configs, images): each refused with a :class:`UserError` whose one line names the file, and nothing a user might
share runs code when it is loaded. The files are ``bad_input.make_files``'s."""

from __future__ import annotations

import pytest
from bad_input import assert_user_error, make_files

from dsh.codes.codefile import load_codes
from dsh.index.flat import HammingIndex


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_run):
    return make_files(tmp_path_factory, digits_run)


# ---------------------------------------------------------------------------------------------------------------
# the file loaders, called directly: (the loader, the file's key in `files`, what the message must name)


def _codes(key):
    return lambda f: load_codes(f[key])


def _index(key):
    return lambda f: HammingIndex.load(f[key])


def _catalog(key):
    from dsh.index.catalog import Catalog

    return lambda f: Catalog.load(f[key])


def _checkpoint(key):
    from dsh.models.checkpoint import load_model

    return lambda f: load_model(f[key])


def _model(key):
    from dsh.runtime.encoder import Encoder

    return lambda f: Encoder.from_file(f[key], backend="torch" if not str(f[key]).endswith(".onnx") else "auto")


def _config(key):
    from dsh.config import resolve_config

    return lambda f: resolve_config(config_file=f[key])


def _image(key):
    from dsh.utils.imageio import decode_image

    return lambda f: decode_image(f[key], (8, 8), "L")


LOADER_CASES = {
    "code files": [(_codes(k), k) for k in (
        "garbage_npz", "truncated_npz", "text", "object_npz", "nbits_array", "nbits_float", "nbits_text",
        "nbits_zero", "nbits_huge", "no_codes", "codes_float", "codes_wide", "codes_padding", "labels_text",
        "labels_rows", "labels_3d", "labels_below", "u_shape", "paths_2d")],
    "index files": [(_index(k), k) for k in (
        "garbage_dshidx", "idx_truncated", "idx_flipped", "idx_version", "text")]
    + [(_index("idx_nocat"), "idx_nocat"), (_index("idx_othercat"), "idx_othercat")],
    "catalog files": [(_catalog(k), k) for k in ("garbage", "idx", "text")],
    "checkpoints": [(_checkpoint(k), k) for k in (
        "garbage_pt", "truncated_pt", "evil_pt", "notdsh_pt", "future_pt", "lacking_pt", "badconfig_pt",
        "mismatch_pt", "badnorm_pt", "altered_pt", "empty_dir")],
    "model files": [(_model(k), k) for k in (
        "garbage_onnx", "onnx_nometa", "onnx_badjson", "onnx_shape", "onnx_unsealed", "onnx_two_outputs",
        "onnx_flipped", "garbage_safetensors", "st_tampered", "st_resealed", "st_nometa")],
    "configs": [(_config(k), k) for k in (
        "bad.json", "list.yaml", "unknown.json", "typed.yaml", "python.yaml", "bomb.yaml", "keys.yaml",
        "latin1.json", "garbage_json")],
    "images": [(_image(k), k) for k in ("text_png", "bomb_png", "broken_png", "empty_dir", "garbage")]
    + [(lambda f: decode_image_bytes(b""), "empty bytes"), (lambda f: decode_image_bytes(b"\x89PNG\r\n"), "bytes")],
}


def decode_image_bytes(data: bytes):
    from dsh.utils.imageio import decode_image

    return decode_image(data, (8, 8), "L")


LOADER_PARAMS = [pytest.param(call, key, id=f"{area}-{key}") for area, cases in LOADER_CASES.items()
                 for call, key in cases]


@pytest.mark.parametrize("call, key", LOADER_PARAMS)
def test_loader_refuses(call, key, files):
    needle = files[key].name if key in files else ""
    if key in ("idx_nocat", "idx_othercat"):
        needle = files[key].name  # the index, and for the catalog also the catalog file
    assert_user_error(lambda: call(files), needle)
    assert not files["marker"].exists(), "a crafted file ran code"


def test_code_file_nbits_array_is_one_line(files):
    """nbits stored as an array used to end in a TypeError traceback ("only length-1 arrays ...")."""
    msg = assert_user_error(lambda: load_codes(files["nbits_array"]), "nbits_array.npz")
    assert "'nbits' must be one integer" in msg
    msg = assert_user_error(lambda: load_codes(files["nbits_float"]), "nbits_float.npz")
    assert "'nbits'" in msg  # 8.5 used to load silently as 8


def test_loading_shared_files_runs_no_code(files):
    """Everything a user might share loads without executing code: checkpoints (weights_only), YAML configs
    (safe_load), code files (allow_pickle=False), index metadata (JSON; the model it names is loaded as a
    checkpoint, so through weights_only too)."""
    from dsh.config import read_config_file
    from dsh.errors import DataError, ModelFileError
    from dsh.models.checkpoint import read_checkpoint
    from dsh.runtime.searcher import Searcher

    assert_user_error(lambda: read_checkpoint(files["evil_pt"]), "refused", ModelFileError)
    assert_user_error(lambda: read_config_file(files["python.yaml"]), "python.yaml", DataError)
    assert_user_error(lambda: load_codes(files["object_npz"]), "object.npz", DataError)
    searcher = Searcher.open(files["idx_evil"])
    assert_user_error(lambda: searcher.search([str(files["img"])], k=1), "evil.pt", ModelFileError)
    assert not files["marker"].exists()
