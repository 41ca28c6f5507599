"""Training throughput (images/s) of the registered CPU-sized models, the way `dsh train` runs a step.

One step = a batch from `BatchLoader` (uint8 gather, crop/flip augmentation, normalisation) + forward + DSH loss +
backward + AdamW step. Inputs: MNIST-sized (1x28x28) and CIFAR-sized (3x32x32). Real MNIST / CIFAR-10 (JPEG copy)
images are used when the shared data folder is found, random pixels otherwise (the speed is the same).

    python benchmarks/train_throughput.py --threads 2 --out benchmarks/results

prints a Markdown table and writes `train_throughput.json` and `.md` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import common
from dsh.data import BatchLoader, ImageSet, Normalizer, default_augment, load_split
from dsh.fileio import atomic_write
from dsh.loss import DSHLoss
from dsh.models import create_model

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def images_for(kind: str, n: int, shared: Path | None) -> ImageSet:
    if shared is not None:
        try:
            if kind == "mnist":
                s = load_split("mnist", "test", data_root=shared, download=False)
            else:
                s = load_split("folder", "test", data_root=shared / "cifar10-jpeg")
            return ImageSet(s.images[:n], s.labels[:n], s.class_names, None, f"{kind} (real)")
        except Exception as e:  # fall back to random pixels: the speed does not depend on the content
            print(f"note: {kind} from {shared} not usable ({e}); using random pixels")
    c, h, w = SHAPES[kind]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(images, labels, [str(i) for i in range(10)], None, f"{kind} (random)")


def measure(model_name: str, data: ImageSet, kind: str, batch_size: int, steps: int, channels_last: bool,
            bf16: bool, nbits: int) -> dict:
    c, h, _ = SHAPES[kind]
    torch.manual_seed(0)
    model = create_model(model_name, nbits, in_channels=c, image_size=h)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = DSHLoss(nbits)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = BatchLoader(data, batch_size=batch_size, drop_last=True, augment=default_augment(kind),
                         normalizer=Normalizer.fit(data.images), channels_last=channels_last)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    step_times = []
    done = 0
    while done < steps + 3:
        for x, y in loader:
            t = time.perf_counter()
            with ctx():
                u = model(x)
            terms = loss_fn(u.float(), y)
            opt.zero_grad(set_to_none=True)
            terms.total.backward()
            opt.step()
            if done >= 3:  # the first steps warm up allocators and kernels
                step_times.append(time.perf_counter() - t)
            done += 1
            if done >= steps + 3:
                break
    # the loader's own cost is measured separately and added: it runs in the same thread as the step
    t = time.perf_counter()
    n_batches = 0
    for _ in loader:
        n_batches += 1
    loader_per_batch = (time.perf_counter() - t) / max(1, n_batches)
    median = statistics.median(step_times) + loader_per_batch
    best = min(step_times) + loader_per_batch
    return {"model": model_name, "input": "x".join(map(str, SHAPES[kind])), "data": data.name,
            "channels_last": channels_last, "bf16": bf16, "batch_size": batch_size,
            "images_per_s_median": batch_size / median, "images_per_s_best": batch_size / best,
            "loader_ms_per_batch": loader_per_batch * 1000, "steps": len(step_times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=["paper", "resnet-small"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--nbits", type=int, default=12)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shared = common.shared_data_dir()
    rows = []
    for kind in ("mnist", "cifar10"):
        data = images_for(kind, 4096, shared)
        for model_name in args.models:
            for channels_last, bf16 in ((False, False), (True, False), (True, True)):
                r = measure(model_name, data, kind, args.batch_size, args.steps, channels_last, bf16, args.nbits)
                rows.append(r)
                print(f"{r['model']:<13} {r['input']:<8} channels_last={channels_last!s:<5} bf16={bf16!s:<5} "
                      f"{r['images_per_s_median']:8.0f} img/s (best {r['images_per_s_best']:.0f})", flush=True)
    cpu = common.cpu_model()
    lines = [f"# Training throughput ({cpu}, {args.threads} threads, batch {args.batch_size}, "
             f"torch {torch.__version__})", "",
             "| model | input | data | channels_last | bf16 autocast | images/s (median) | images/s (best) |",
             "| --- | --- | --- | --- | --- | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['data']} | {'yes' if r['channels_last'] else 'no'} | "
                     f"{'yes' if r['bf16'] else 'no'} | {r['images_per_s_median']:.0f} | {r['images_per_s_best']:.0f} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    out = Path(args.out)
    with atomic_write(out / "train_throughput.json", "w") as f:
        json.dump({"threads": args.threads, "cpu": cpu, "torch": torch.__version__, "rows": rows}, f, indent=2)
    with atomic_write(out / "train_throughput.md", "w") as f:
        f.write(table)
    print(f"wrote {out / 'train_throughput.json'} and {out / 'train_throughput.md'}")


if __name__ == "__main__":
    main()
