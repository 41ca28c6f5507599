"""The bad-input cases counted by area, as docs/reliability.md's table gives them (cases from the command line,
the loaders and HTTP, in ``test_bad_input_cli.py``, ``test_bad_input_files.py`` and ``test_bad_input_http.py``; every
writer on a full disk, in ``test_disk_full.py``; image formats dsh does not read, in
``tests/utils/test_image_formats.py``)."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO
from test_bad_input_cli import CLI_CASES
from test_bad_input_files import LOADER_CASES
from test_bad_input_http import MORE_HTTP_CASES, SERVE_CASES
from test_disk_full import DISK_FULL_CASES


def image_format_refusals() -> list[str]:
    """``tests/utils/test_image_formats.py``'s refusals (that folder is not on the import path)."""
    path = REPO / "tests" / "utils" / "test_image_formats.py"
    spec = importlib.util.spec_from_file_location("image_formats_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IMAGE_FORMAT_REFUSALS


def test_case_counts():
    """The counts docs/reliability.md's table of bad input by area gives."""
    counts = {area: len(cases) for area, cases in CLI_CASES.items()}
    counts.update({area: len(cases) for area, cases in LOADER_CASES.items()})
    counts["HTTP"] = SERVE_CASES + MORE_HTTP_CASES
    counts["disk full"] = len(DISK_FULL_CASES)
    counts["image formats"] = len(image_format_refusals())
    assert sum(counts.values()) >= 60
    print(json.dumps(counts))
