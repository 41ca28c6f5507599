"""A run folder: what a new run or a resumed one trains with (``RUN/last.pt`` holds a resumable run), and the
folder held by one training call, cleaned up after a call that failed before there was anything to resume."""

from __future__ import annotations

import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import DataError, ModelFileError
from ..models import checkpoint as ckpt_io
from ..utils.runlock import RunLock
from .progress import resume_keys


def resolve_run(cfg: TrainConfig, run_dir: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The settings a run trains with and the checkpoint content it resumes from (``None`` for a new run); reads,
    writes nothing. A resume takes the run's own settings from ``last.pt``."""
    if resume:
        last = run_dir / ckpt_io.LAST
        if not last.is_file():
            raise DataError(f"{run_dir}: nothing to resume (no {ckpt_io.LAST})")
        _, saved = ckpt_io.read_checkpoint(last)
        missing = [k for k in resume_keys() if k not in saved]
        if missing or not isinstance(saved["config"], dict):
            what = f"lacks '{missing[0]}'" if missing else "has no settings ('config' is not a mapping)"
            raise ModelFileError(f"{last}: cannot resume from it: the checkpoint {what}")
        return TrainConfig.from_dict(saved["config"], source=str(last)).validate(), saved
    if (run_dir / ckpt_io.LAST).exists():
        raise DataError(f"{run_dir}: already holds a run; use --resume to continue it or choose another --out")
    return cfg, None


class RunFolder:
    """``RUN/`` held by one training call (:class:`dsh.utils.runlock.RunLock`): a second training into it
    meanwhile is refused with a one-line :class:`DataError`.

    A call that fails before the first ``last.pt`` has nothing to resume: :meth:`discard_failed` removes what it
    wrote (``config.json``, ``tb/``) and, at :meth:`release`, the folder itself if the call made it. Once there is
    a ``last.pt`` the folder is kept for ``--resume``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock = RunLock(run_dir)
        self.before: set[str] = set()  # what the folder held before this call (a failed call removes only the rest)
        self.remove_dir = False

    def claim(self) -> None:
        self.lock.acquire()
        self.before = {p.name for p in self.run_dir.iterdir()}

    def discard_failed(self, writer=None) -> None:
        """After a failed call: with no ``last.pt``, remove what this call added (and ``config.json``, of no use
        without a checkpoint), ``writer`` (TensorBoard's, if open) closed first. Nothing if the folder was not
        claimed."""
        if not self.lock.held or (self.run_dir / ckpt_io.LAST).exists():
            return
        if writer is not None:
            with suppress(Exception):
                writer.close()
        for p in list(self.run_dir.iterdir()):
            if p.name == self.lock.path.name or (p.name in self.before and p.name != "config.json"):
                continue
            with suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        self.remove_dir = self.lock.created_dir

    def release(self) -> None:
        self.lock.release()
        if self.remove_dir:
            with suppress(OSError):
                self.run_dir.rmdir()  # only if empty
