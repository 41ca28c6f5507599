"""Training throughput (images/s) of the registered CPU-sized models, measured on `dsh train`'s own step.

Each row builds a run exactly as `dsh train` does (:func:`dsh.train.setup.setup`: the data decoded once, the batch
loader with its augmentation, the model with its initialisation, the optimiser and schedule of the settings) and times
:func:`dsh.train.loop.train_step` on the loader's batches: gather + augment + normalise + forward + DSH loss + backward
+ optimiser and schedule step. The settings of a row are a preset's (the one that trains that model on that data)
or the library defaults, with the memory layout and bf16 autocast varied. Real images: MNIST (1x28x28) and the
CIFAR-10 JPEG copy (3x32x32) from the shared data folder.

    python benchmarks/speed/train_throughput.py --threads 2 --out benchmarks/results

prints a Markdown table and writes `train_throughput.json` and `.md` into `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402

from dsh.config import TrainConfig, resolve_config  # noqa: E402
from dsh.errors import UserError  # noqa: E402

# (data, preset or None, settings over it): the networks `dsh train` offers for CPU training, each with the
# settings it is trained with here
ROWS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("mnist", "mnist-cpu", {}),
    ("mnist", "cifar10-cpu", {"crop_padding": 2, "flip": False}),  # the airbench recipe on digits
    ("cifar10", "cifar10-paper-bn-cpu", {"model": "paper"}),
    ("cifar10", "cifar10-paper-bn-cpu", {}),
    ("cifar10", "cifar10-cpu", {}),
    ("cifar10", "cifar10-cpu", {"width": 64}),
    ("cifar10", None, {"model": "resnet-small"}),
)
# (channels_last, amp): NCHW float32, NHWC float32, NHWC with bf16 autocast
LAYOUTS = ((False, "off"), (True, "off"), (True, "bf16"))


def config_for(kind: str, shared: Path, preset: str | None, settings: dict[str, Any], channels_last: bool,
               amp: str, threads: int, batch_size: int | None) -> TrainConfig:
    data = ({"dataset": "mnist", "data_root": str(shared)} if kind == "mnist" else
            {"dataset": "folder", "data_root": str(shared / "cifar10-jpeg")})
    overrides = {**data, **settings, "channels_last": channels_last, "amp": amp, "threads": threads,
                 "batch_size": batch_size, "tensorboard": False, "download": False}
    return resolve_config(overrides, preset=preset)


def measure(cfg: TrainConfig, steps: int, warmup: int = 3) -> dict[str, Any]:
    """Time ``warmup + steps`` calls of :func:`dsh.train.loop.train_step` on a run set up as `dsh train` sets it up
    (in a temporary run folder); the first ``warmup`` steps (allocators, kernel choice) are not counted. Returns
    the median and best images/s, the step's loss values (``losses``, one per step, warm-up included) and the
    steps timed."""
    from dsh.train.loop import train_step
    from dsh.train.setup import resolve_device, setup

    losses: list[float] = []
    times: list[float] = []
    if cfg.threads:  # as dsh train sets them
        from dsh.utils.threads import set_threads

        set_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run, _ = setup(cfg, Path(tmp) / "run", resolve_device())
        run.model.train()
        while len(losses) < warmup + steps:
            batches = iter(run.batches)  # a new epoch when the loader runs out
            while len(losses) < warmup + steps:
                t = time.perf_counter()
                try:
                    x, y = next(batches)  # the batch is gathered, augmented and normalised here
                except StopIteration:
                    break
                losses.append(train_step(run, x, y)["total"])
                if len(losses) > warmup:
                    times.append(time.perf_counter() - t)
    median, best = statistics.median(times), min(times)
    return {"images_per_s_median": cfg.batch_size / median, "images_per_s_best": cfg.batch_size / best,
            "steps": len(times), "losses": losses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, help="images per step (default: each row's settings)")
    p.add_argument("--steps", type=int, default=20, help="steps timed per row, after 3 of warm-up (default 20)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    shared = common.shared_data_dir()
    if shared is None:
        print("train_throughput: error: no shared data folder (MNIST and the CIFAR-10 JPEG copy)", file=sys.stderr)
        return 2
    import torch

    rows = []
    load_start = common.load_average()
    try:
        for kind, preset, settings in ROWS:
            for channels_last, amp in LAYOUTS:
                cfg = config_for(kind, shared, preset, settings, channels_last, amp, args.threads, args.batch_size)
                r = measure(cfg, args.steps)
                r.pop("losses")
                width = f" width {cfg.width}" if cfg.width is not None else ""
                rows.append({"model": cfg.model + width, "data": kind, "preset": preset, "optimizer": cfg.optimizer,
                             "channels_last": channels_last, "amp": amp, "batch_size": cfg.batch_size, **r})
                print(f"{cfg.model + width:<18} {kind:<8} channels_last={channels_last!s:<5} amp={amp:<4} "
                      f"{r['images_per_s_median']:8.0f} img/s (best {r['images_per_s_best']:.0f})", flush=True)
    except UserError as e:
        print(f"train_throughput: error: {e}", file=sys.stderr)
        return 2
    cpu = common.cpu_model()
    lines = [f"# Training throughput of `dsh train`'s step ({cpu}, {args.threads} threads, torch {torch.__version__})",
             "", "| model | data | preset | optimizer | batch | channels_last | bf16 autocast | images/s (median) | "
             "images/s (best) |", "| --- | --- | --- | --- | ---: | --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['data']} | {r['preset'] or '(defaults)'} | {r['optimizer']} | "
                     f"{r['batch_size']} | {'yes' if r['channels_last'] else 'no'} | "
                     f"{'yes' if r['amp'] == 'bf16' else 'no'} | {r['images_per_s_median']:.0f} | "
                     f"{r['images_per_s_best']:.0f} |")
    lines += ["", f"1-minute load average at the start: {load_start}."]
    result = {"command": common.command_line(), "threads": args.threads, "cpu": cpu, "torch": torch.__version__,
              "steps": args.steps,
              "load_average_start": load_start, "rows": rows}
    common.write_results(args.out, "train_throughput", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
