"""The command line, ``dsh COMMAND``: one module per command, each with its flags (``add_parser``) and its handler
(``cmd_NAME``) side by side; the flag groups several share are in :mod:`.common`. Imported by nothing.

``main(argv)`` returns the exit status, so tests call it directly. Problems with the user's input (a missing file,
a corrupt checkpoint, a bad flag value: a :class:`dsh.errors.UserError`) print one line, ``dsh: error: ...``, and
exit 2 without a traceback; set ``DSH_DEBUG=1`` to see the traceback. Any other exception is a bug in dsh and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import UserError, one_line
from ..utils.optional_torch import torch_failure
from .demo import add_parser as add_demo
from .encode import add_parser as add_encode
from .eval import add_parser as add_eval
from .export import add_parser as add_export
from .index import add_parser as add_index
from .report import add_parser as add_report
from .search import add_parser as add_search
from .serve import add_parser as add_serve
from .train import add_parser as add_train
from .viz import add_parser as add_viz

# in the order `dsh --help` lists them
COMMANDS = (add_train, add_encode, add_export, add_eval, add_report, add_viz, add_demo, add_index, add_search,
            add_serve)

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong flag is one line like every other user error (no usage block above it)."""

    def error(self, message: str):
        self.exit(2, f"dsh: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="dsh",
        description="Deep Supervised Hashing: learn binary codes for images and search them by Hamming distance.",
    )
    parser.add_argument("--version", action="version", version=f"dsh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(sub)
    return parser


# optional packages and the extra that installs each (pyproject.toml): a missing one is the installation's fault
_EXTRA_OF = {"torch": "train", "torchvision": "train", "tensorboard": "train", "matplotlib": "train",
             "sklearn": "train", "umap": "train", "safetensors": "train", "onnx": "train", "onnxruntime": "onnx",
             "faiss": "faiss", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve",
             "fastapi_offline": "serve"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a wrong flag (one line, status 2), --help or --version: returned, not raised
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except UserError as e:  # only the user's mistakes: a bug inside dsh keeps its traceback
        if os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: {one_line(e, limit=1000)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None or os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: this needs the {e.name} package: pip install 'dsh[{extra}]'", file=sys.stderr)
        return 2
    except ImportError as e:  # an installed torch that cannot be imported (a mismatched build) is not a bug of dsh
        reason = torch_failure(e)
        if reason is None or os.environ.get("DSH_DEBUG"):
            raise
        print(f"dsh: error: this needs torch, which is installed but cannot be imported ({reason}); reinstall it "
              f"(pip install 'dsh[train]'), or use an .onnx model, which runs without it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsh: interrupted", file=sys.stderr)
        return 130
