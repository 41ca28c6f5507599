"""The bad-input cases counted by area, as docs/reliability.md's table gives them (cases from the command line,
the loaders and HTTP, in ``test_bad_input_cli.py``, ``test_bad_input_files.py`` and ``test_bad_input_http.py``; every
writer on a full disk, in ``test_disk_full.py``)."""

from __future__ import annotations

import json

from test_bad_input_cli import CLI_CASES
from test_bad_input_files import LOADER_CASES
from test_bad_input_http import MORE_HTTP_CASES, SERVE_CASES
from test_disk_full import DISK_FULL_CASES


def test_case_counts():
    """The counts docs/reliability.md's table of bad input by area gives."""
    counts = {area: len(cases) for area, cases in CLI_CASES.items()}
    counts.update({area: len(cases) for area, cases in LOADER_CASES.items()})
    counts["HTTP"] = SERVE_CASES + MORE_HTTP_CASES
    counts["disk full"] = len(DISK_FULL_CASES)
    assert sum(counts.values()) >= 60
    print(json.dumps(counts))
