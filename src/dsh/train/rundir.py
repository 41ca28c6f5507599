"""A run folder: what a new run or a resumed one trains with (``RUN/last.pt`` holds a resumable run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import DataError, ModelFileError
from ..models import checkpoint as ckpt_io


def resolve_run(cfg: TrainConfig, run_dir: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The settings a run trains with and the checkpoint state it resumes from (``None`` for a new run); reads,
    writes nothing. A resume takes the run's own settings from ``last.pt``."""
    if resume:
        last = run_dir / ckpt_io.LAST
        if not last.is_file():
            raise DataError(f"{run_dir}: nothing to resume (no {ckpt_io.LAST})")
        _, state = ckpt_io.read_checkpoint(last)
        missing = [k for k in RESUME_KEYS if k not in state]
        if missing or not isinstance(state["config"], dict):
            what = f"lacks '{missing[0]}'" if missing else "has no settings ('config' is not a mapping)"
            raise ModelFileError(f"{last}: cannot resume from it: the checkpoint {what}")
        return TrainConfig.from_dict(state["config"], source=str(last)).validate(), state
    if (run_dir / ckpt_io.LAST).exists():
        raise DataError(f"{run_dir}: already holds a run; use --resume to continue it or choose another --out")
    return cfg, None


# what last.pt must hold for --resume, besides what every checkpoint holds
RESUME_KEYS = ("config", "epoch", "optimizer", "scheduler", "rng", "best_val_map", "best_epoch", "history")
