"""Scaling out training: the same run with 1 and with 2 processes on this machine (``dsh train --nproc``).

    python benchmarks/speed/scale_train.py --dataset mnist --epochs 2 --threads 2 --out benchmarks/results

Each world size trains the same settings into its own run folder through the command line (``dsh train``; with
``--nproc 2``, torchrun's launcher, gloo on 127.0.0.1), ``--threads`` cores shared among the processes. Reported:
training images/s over the run (the checkpoint's ``images_seen / train_seconds``), wall time, the best validation
mAP, and the loss curve of every run from TensorBoard's scalars, drawn on one plot
(``scale_train_loss.png``). The global batch is the same for both, so the two curves should lie on top of each
other up to batch-norm statistics (per process) and float rounding; on two cores no speed-up is to be expected:
the second process takes the core the first process's second thread had.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402

STEM = "scale_train"


def loss_curve(run: Path) -> tuple[list[int], list[float]]:
    """(step, total loss) from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("loss/total")
    return [e.step for e in events], [float(e.value) for e in events]


def train_once(nproc: int, args, out: Path) -> dict:
    import torch

    run = out / f"nproc{nproc}"
    cmd = [sys.executable, "-m", "dsh", "train", "--dataset", args.dataset, "--bits", str(args.bits),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--log-every", "10",
           "--projector-samples", "0", "--out", str(run), "--quiet", "--seed", "0"]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    cmd += ["--threads", str(max(1, args.threads // nproc))]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    steps, losses = loss_curve(run)
    return {"nproc": nproc, "threads_per_process": max(1, args.threads // nproc), "wall_s": wall,
            "train_seconds": float(ckpt["train_seconds"]), "images_seen": int(ckpt["images_seen"]),
            "images_per_second": ckpt["images_seen"] / ckpt["train_seconds"],
            "best_val_map": float(ckpt["best_val_map"]), "steps": steps, "loss": losses,
            "command": " ".join(["dsh", *cmd[3:]])}


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    for r, style in zip(rows, ("-", "--", ":")):
        ax.plot(r["steps"], r["loss"], style, label=f"{r['nproc']} process{'es' if r['nproc'] > 1 else ''}")
    ax.set_xlabel("step (global batch)")
    ax.set_ylabel("DSH loss (total)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("the same training, 1 and 2 processes")
    fig.tight_layout()
    from dsh.utils.fileio import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"`dsh train --dataset {result['dataset']}` ({result['bits']} bits, {result['epochs']} epochs, global "
             f"batch {result['batch_size']}) with 1 and 2 processes on this machine, {result['threads']} cores "
             f"shared among them.", "",
             "| processes | threads each | training images/s | wall s | best val mAP |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['nproc']} | {r['threads_per_process']} | {r['images_per_second']:.0f} | "
                     f"{r['wall_s']:.1f} | {r['best_val_map']:.4f} |")
    a, b = rows[0], rows[-1]
    n = min(len(a["loss"]), len(b["loss"]))
    gap = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["loss"][:n], b["loss"][:n])) if n else float("nan")
    lines += ["", f"Speed of 2 processes against 1: {b['images_per_second'] / a['images_per_second']:.2f}x. Largest "
              f"relative gap between the two loss curves over {n} logged steps: {gap:.2%}.", "",
              f"The loss curves: `{result['plot']}`.", "",
              f"Load average at start {result['machine'].get('load_average_start')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", help="default: ../shared/data for mnist")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="cores to share among the processes")
    p.add_argument("--work", default="runs/scale_train")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.data_root is None and args.dataset == "mnist":
        args.data_root = str(common.shared_data_dir())
    work, out = Path(args.work), Path(args.out)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    started, load_start = common.utc_now(), common.load_average()
    rows = [train_once(n, args, work) for n in (1, 2)]
    result = {"benchmark": STEM, "command": common.command_line(), "started": started, "finished": common.utc_now(),
              "machine": {**common.machine_info(args.threads), "load_average_start": load_start,
                          "load_average_end": common.load_average()},
              "dataset": args.dataset, "bits": args.bits, "epochs": args.epochs, "batch_size": args.batch_size,
              "threads": args.threads, "rows": rows, "plot": "scale_train_loss.png"}
    plot(rows, out / "scale_train_loss.png")
    common.write_results(args.out, STEM, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
