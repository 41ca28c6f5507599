"""Encoding speed and memory of dsh's `Encoder` (torch eager against onnxruntime), and ONNX-vs-torch agreement.

    python benchmarks/speed/encode_throughput.py --threads 2 --out benchmarks/results

Three parts, every figure from dsh's own calls:

1. **Throughput**: images/s of ``Encoder.encode_array`` (uint8 arrays already in memory) and of
   ``Encoder.iter_encode_files`` (JPEG files on disk, decoding included) for ``backend="torch"`` and
   ``backend="onnxruntime"``, batch 256, for the ``paper`` net at 1x28x28 (MNIST test) and 3x32x32 (CIFAR-10 (JPEG
   copy) test) and ``resnet18`` at 3x224x224 (CIFAR test images resized once beforehand). Models are built with
   ``create_model`` (untrained weights: the speed does not depend on them), saved with ``save_checkpoint`` and, for
   onnxruntime, exported with ``dsh.runtime.export.export_model``; the torch rows load the checkpoint
   (``Encoder.from_file(ckpt, backend="torch")``), the onnxruntime rows the ``.onnx`` file (``Encoder.from_file``,
   no torch in that process). Each measurement runs in its own process, which reports its peak RSS.
2. **Streaming**: ``dsh.runtime.folder_encode.encode_folder`` (onnxruntime) over the CIFAR-10 (JPEG copy) test folder
   (10,000 files) and train folder (50,000 files), each in its own process: images/s and peak RSS.
3. **Agreement**: trained runs (``--run-mnist`` / ``--run-cifar``, else short runs trained here with
   ``dsh.train.loop.train``) encode the full MNIST and CIFAR-10 (JPEG copy) test splits with both backends
   (``Encoder.from_run``): share of identical codes, largest ``|u|`` difference, bits that differ.

Prints Markdown tables and writes ``encode_throughput.json`` and ``.md`` into ``--out``. ``--smoke`` (or
``--limit-train`` / ``--limit-test`` / ``--large-images``) runs everything on a few hundred images, for tests only,
into ``runs/smoke/encode_throughput`` by default; such results are marked as NOT a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
import numpy as np  # noqa: E402

from dsh.errors import DataError  # noqa: E402
from dsh.utils.threads import set_threads  # noqa: E402

STEM = "encode_throughput"
DEFAULT_OUT = "benchmarks/results"
SMOKE_OUT = "runs/smoke/encode_throughput"
BACKENDS = ("torch", "onnxruntime")
SOURCES = ("array", "files")
PARTS = ("throughput", "stream", "agreement")
# name -> (model, input shape, images)
CONFIGS = {
    "paper-1x28x28": ("paper", (1, 28, 28), "mnist"),
    "paper-3x32x32": ("paper", (3, 32, 32), "cifar"),
    "resnet18-3x224x224": ("resnet18", (3, 224, 224), "cifar224"),
    # ImageNet-pretrained backbones at their own input size (the speed does not depend on the weights)
    "efficientnet-lite0-3x224x224": ("efficientnet-lite0", (3, 224, 224), "cifar224"),
    "efficientnet-lite1-3x240x240": ("efficientnet-lite1", (3, 240, 240), "cifar240"),
    "efficientnet-lite2-3x260x260": ("efficientnet-lite2", (3, 260, 260), "cifar260"),
}
DATA_NAMES = {"mnist": "MNIST test", "cifar": "CIFAR-10 (JPEG copy) test",
              **{f"cifar{n}": f"CIFAR-10 (JPEG copy) test, resized to {n}" for n in (224, 240, 260)}}
SMOKE = {"limit_train": 300, "limit_test": 200, "large_images": 16, "repeats": 1, "large_repeats": 1}
# resnet18 at 224x224: two batches (so iter_encode_files decodes in worker processes while the network runs) and one
# timed pass per row keep it near a minute per backend on 2 cores; the paper net: median of 3 passes over 10,000
LARGE_IMAGES = 512
REPEATS = 3
LARGE_REPEATS = 1
LARGE_WARM_IMAGES = 16
JPEG_QUALITY = 90
TARGET_SAME = 0.999
TARGET_DU = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# the measuring process


def _pss_kb(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        pass
    return kids


class TreeSampler:
    """Samples, every ``interval`` s while a measurement runs, the child processes of this one (the decode workers of
    ``iter_encode_files``): the largest peak RSS (VmHWM) of any of them, and the largest total PSS of this process
    and its children (shared pages counted once). Only children started after :meth:`start` count: importing torch
    runs a short-lived helper process of its own."""

    def __init__(self, interval: float = 0.1):
        import threading

        self.interval = interval
        self.worker_peak_kb = 0
        self.tree_pss_kb = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        kids = _children(me)
        self.workers_seen.update(kids)
        for k in kids:
            self.worker_peak_kb = max(self.worker_peak_kb, common.proc_status_kb(k, ("VmHWM",)).get("VmHWM", 0))
        self.tree_pss_kb = max(self.tree_pss_kb, _pss_kb(me) + sum(_pss_kb(k) for k in kids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "TreeSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, Any]:
        return {"decode_processes": len(self.workers_seen),
                "largest_worker_peak_rss_mb": self.worker_peak_kb / 1024 if self.workers_seen else None,
                "tree_peak_pss_mb_sampled": self.tree_pss_kb / 1024}


def memory_mb() -> dict[str, float]:
    """This process's peak and current resident set (VmHWM, VmRSS) in MB."""
    got = common.proc_status_kb("self", ("VmHWM", "VmRSS"))
    peak = got.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {"peak_rss_mb": peak / 1024, "rss_mb": got.get("VmRSS", 0) / 1024}


def child_main(spec_path: str) -> int:
    """Run one measurement described by the JSON file ``spec_path``; write its figures to ``spec["result"]``."""
    spec = json.loads(Path(spec_path).read_text())
    from dsh.runtime.encoder import Encoder

    t = time.perf_counter()
    enc = Encoder.from_file(spec["model"], backend=spec["backend"], threads=spec["threads"],
                            batch_size=spec["batch_size"], workers=spec.get("workers"))
    load_s = time.perf_counter() - t
    if spec["kind"] == "throughput":
        out = measure_throughput(enc, spec)
    else:
        out = measure_stream(enc, spec)
    out.update(memory_mb())
    out.update({"backend": enc.backend, "load_seconds": load_s, "torch_imported": "torch" in sys.modules,
                "workers": enc.workers or _default_workers()})
    if enc.backend == "torch":
        import torch

        out["torch_threads"] = torch.get_num_threads()
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def _default_workers() -> int:
    from dsh.utils.imageio import default_workers

    return default_workers()


def _warm(enc, x: np.ndarray | None = None, n: int | None = None, most: int | None = None) -> None:
    """One batch (of ``x``, else of zeros; at most ``n`` and ``most`` images) through the network: first-call
    allocations, thread start-up and kernel choices are not timed."""
    k = min(enc.batch_size, n or enc.batch_size, most or enc.batch_size)
    enc.encode_array(x[:k] if x is not None else np.zeros((k, *enc.input_shape), np.uint8))


def measure_throughput(enc, spec: dict) -> dict[str, Any]:
    """Median seconds of ``spec["repeats"]`` timed passes over all the images, after a warm-up batch."""
    if spec["source"] == "array":
        x = np.load(spec["images"])
        n = len(x)
        _warm(enc, x, most=spec.get("warm_images"))

        def one_pass() -> int:
            return len(enc.encode_array(x).codes)
    else:
        paths = Path(spec["files"]).read_text().splitlines()
        n = len(paths)
        _warm(enc, n=n, most=spec.get("warm_images"))

        def one_pass() -> int:
            return sum(len(e.codes) for _, e in enc.iter_encode_files(paths))
    rss_ready = memory_mb()["rss_mb"]
    seconds = []
    with TreeSampler() as tree:
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            done = one_pass()
            seconds.append(time.perf_counter() - t)
            if done != n:
                raise AssertionError(f"encoded {done} images of {n}")
    median = statistics.median(seconds)
    return {"images": n, "seconds": seconds, "median_seconds": median, "images_per_s": n / median,
            "rss_ready_mb": rss_ready, **tree.figures()}


def measure_stream(enc, spec: dict) -> dict[str, Any]:
    """One ``encode_folder`` of the whole folder into a code file (then removed), after a warm-up batch."""
    from dsh.runtime.folder_encode import encode_folder

    _warm(enc)
    rss_ready = memory_mb()["rss_mb"]
    out = Path(spec["out"])
    with TreeSampler() as tree:
        t = time.perf_counter()
        done = encode_folder(enc, spec["folder"], out)
        seconds = time.perf_counter() - t
    size = out.stat().st_size
    out.unlink()
    return {"images": done.count, "seconds": seconds, "images_per_s": done.count / seconds,
            "code_file_mb": size / 2**20, "rss_ready_mb": rss_ready, **tree.figures()}


def run_child(spec: dict, work: Path) -> dict[str, Any]:
    """``spec`` measured in a fresh Python process (``--child``), so its peak RSS is its own."""
    work.mkdir(parents=True, exist_ok=True)
    k = len(list(work.glob("spec-*.json")))
    spec_path, result = work / f"spec-{k}.json", work / f"result-{k}.json"
    spec = {**spec, "result": str(result)}
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"measurement {spec.get('kind')} {spec.get('backend')} failed (exit {proc.returncode}):\n"
                           f"{tail}")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------------------------------------------
# preparing models and inputs (not timed)


def read_once(paths: list[str]) -> None:
    """Read every file once, so the timed passes find them in the page cache (the same for every row)."""
    for p in paths:
        with open(p, "rb") as f:
            f.read()


def write_jpegs(images: np.ndarray, labels: np.ndarray, class_names: list[str], folder: Path) -> list[str]:
    """``uint8[N, C, H, W]`` -> ``folder/<class>/<i>.jpg`` (grey for C = 1), quality :data:`JPEG_QUALITY`."""
    from PIL import Image

    paths = []
    for i, (a, y) in enumerate(zip(images, labels)):
        path = folder / class_names[int(y)] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path, quality=JPEG_QUALITY)
        paths.append(str(path))
    return paths


def model_files(name: str, arch: str, shape: tuple[int, int, int], class_names: list[str], nbits: int,
                work: Path) -> tuple[Path, Path]:
    """An untrained ``arch`` for ``shape`` as a dsh checkpoint (``save_checkpoint``) and its ONNX export."""
    import torch

    from dsh.models import Normalizer
    from dsh.models.checkpoint import save_checkpoint
    from dsh.models.registry import create_model
    from dsh.runtime.export import export_model

    folder = work / "models" / name
    ckpt, onnx = folder / "best.pt", folder / "model.onnx"
    if ckpt.is_file() and onnx.is_file():
        return ckpt, onnx
    c, h, w = shape
    torch.manual_seed(0)
    model = create_model(arch, nbits, in_channels=c, image_size=(h, w)).eval()
    normalizer = Normalizer([0.45] * c, [0.25] * c)
    save_checkpoint(ckpt, {
        "model_config": dict(model.config), "nbits": nbits, "input_shape": list(shape),
        "normalizer": normalizer.to_dict(), "class_names": list(class_names),
        "config": {"model": arch, "note": "untrained weights, for speed only"}, "epoch": 0,
        "state_dict": model.state_dict(),
    })
    export_model(ckpt, onnx)
    return ckpt, onnx


def large_side(kind: str) -> int | None:
    """The side of the resized CIFAR images of an input kind (``cifar224`` -> 224), ``None`` for the others."""
    return int(kind[len("cifar"):]) if kind.startswith("cifar") and kind != "cifar" else None


class Inputs:
    """The test images of each kind as arrays (``.npy``, loaded by the measuring process) and as JPEG files."""

    def __init__(self, roots: dict[str, Path], work: Path, large_images: int):
        from dsh.data import load_split

        self.work = work
        self.roots = roots
        self.large_images = large_images
        self.sets = {"mnist": load_split("mnist", "test", data_root=roots["mnist"], download=False),
                     "cifar": load_split("folder", "test", data_root=roots["cifar"])}
        self._arrays: dict[str, Path] = {}
        self._files: dict[str, Path] = {}

    def class_names(self, kind: str) -> list[str]:
        return list(self.sets["mnist" if kind == "mnist" else "cifar"].class_names)

    def _large(self, kind: str):
        """A stratified ``large_images`` of the CIFAR test images, resized to the side of ``kind`` (``cifar224``:
        224x224) with dsh's ``resize_images``."""
        from dsh.data import resize_images, stratified_subset

        side = large_side(kind)
        s = self.sets["cifar"]
        keep = stratified_subset(s.labels.numpy(), min(self.large_images, len(s.labels)), seed=0)
        return resize_images(s.images[keep], (side, side)).numpy(), s.labels.numpy()[keep]

    def array(self, kind: str) -> Path:
        if kind not in self._arrays:
            x = self._large(kind)[0] if large_side(kind) else self.sets[kind].images.numpy()
            path = self.work / "arrays" / f"{kind}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.ascontiguousarray(x))
            self._arrays[kind] = path
        return self._arrays[kind]

    def files(self, kind: str) -> Path:
        """A list of JPEG files: the CIFAR-10 (JPEG copy) test folder itself for ``cifar``; written once for the
        others (MNIST test images; the resized CIFAR images)."""
        if kind not in self._files:
            from dsh.utils.imageio import ImageList

            if kind == "cifar":
                paths = ImageList(self.roots["cifar"] / "test").full_paths()
            elif kind == "mnist":
                s = self.sets["mnist"]
                paths = write_jpegs(s.images.numpy(), s.labels.numpy(), self.class_names("mnist"),
                                    self.work / "jpeg" / "mnist")
            else:
                x, y = self._large(kind)
                paths = write_jpegs(x, y, self.class_names("cifar"), self.work / "jpeg" / kind)
            read_once(paths)
            path = self.work / "files" / f"{kind}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(paths) + "\n")
            self._files[kind] = path
        return self._files[kind]


# ---------------------------------------------------------------------------------------------------------------
# the parts


def throughput_part(args, inputs: Inputs, work: Path) -> list[dict[str, Any]]:
    rows = []
    for name in args.configs:
        arch, shape, kind = CONFIGS[name]
        ckpt, onnx = model_files(name, arch, shape, inputs.class_names(kind), args.nbits, work)
        for source in SOURCES:
            where = ({"images": str(inputs.array(kind))} if source == "array"
                     else {"files": str(inputs.files(kind))})
            for backend in BACKENDS:
                repeats = args.large_repeats if large_side(kind) else args.repeats
                spec = {"kind": "throughput", "model": str(ckpt if backend == "torch" else onnx),
                        "backend": backend, "threads": args.threads, "batch_size": args.batch_size,
                        "workers": args.workers, "repeats": repeats, "source": source, **where,
                        # a 256-image resnet18 batch takes seconds, so a short warm-up batch does (first full
                        # batch: its kernel set-up costs milliseconds of those seconds)
                        "warm_images": LARGE_WARM_IMAGES if large_side(kind) else None}
                r = run_child(spec, work / "children")
                row = {"config": name, "model": arch, "input": "x".join(map(str, shape)), "nbits": args.nbits,
                       "data": DATA_NAMES[kind], "source": source, "batch_size": args.batch_size,
                       "repeats": repeats, **r}
                rows.append(row)
                print(f"{name:<19} {source:<6} {backend:<12} {r['images']:>6,} images {r['images_per_s']:9.0f} img/s"
                      f"  peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    return rows


def stream_part(args, roots: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    from dsh.utils.imageio import ImageList

    class_names = ImageList(roots["cifar"] / "train").class_names
    _, onnx = model_files("paper-3x32x32", "paper", (3, 32, 32), class_names, args.nbits, work)
    rows = []
    for split in ("test", "train"):
        folder = roots["cifar"] / split
        read_once(ImageList(folder).full_paths())
        spec = {"kind": "stream", "model": str(onnx), "backend": "onnxruntime", "threads": args.threads,
                "batch_size": args.batch_size, "workers": args.workers, "folder": str(folder),
                "out": str(work / "stream" / f"{split}.npz")}
        r = run_child(spec, work / "children")
        rows.append({"folder": f"CIFAR-10 (JPEG copy) {split}/", "model": "paper", "input": "3x32x32",
                     "nbits": args.nbits, **r})
        print(f"encode_folder {split:<5} {r['images']:>7,} images {r['images_per_s']:8.0f} img/s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)
    return rows


def train_short(dataset: str, data_root: Path, run_dir: Path, args, **settings) -> dict[str, Any]:
    """A 2-epoch run trained here with dsh's ``train``."""
    from dsh.config import TrainConfig
    from dsh.train.loop import train

    cfg = TrainConfig(dataset=dataset, data_root=str(data_root), epochs=2, threads=args.threads,
                      download=False, tensorboard=False, seed=0, **settings).validate()
    print(f"training {cfg.model}, {cfg.nbits} bits, {cfg.epochs} epochs on {dataset} ({data_root}) into {run_dir}",
          flush=True)
    result = train(cfg, run_dir, progress=False, log=lambda s: print("  " + s, flush=True))
    return {"run": "trained by this script", "train_config": {k: cfg.to_dict()[k] for k in
                                                            ("dataset", "model", "nbits", "epochs", "batch_size")},
            "train_seconds": result.train_seconds, "best_val_map": result.best_val_map}


def agreement(run: Path, images: np.ndarray, threads: int, batch_size: int) -> dict[str, Any]:
    """Encode ``images`` with ``Encoder.from_run(run)`` on both backends and compare."""
    from dsh.errors import ModelFileError
    from dsh.runtime.encoder import Encoder

    encoded = {}
    for backend in BACKENDS:
        try:
            enc = Encoder.from_run(run, backend=backend, threads=threads, batch_size=batch_size)
        except ModelFileError as e:  # e.g. the in-memory ONNX export differs from torch by more than 1e-4
            return {"images": len(images), "nbits": None, "error": f"{backend}: {e}", "met": False}
        x = images if tuple(images.shape[1:]) == enc.input_shape else enc.prepare(images, layout="NCHW")
        t = time.perf_counter()
        encoded[backend] = enc.encode_array(x)
        encoded[backend + "_seconds"] = time.perf_counter() - t
    t, o = encoded["torch"], encoded["onnxruntime"]
    same = np.all(t.codes == o.codes, axis=1)
    du = float(np.max(np.abs(t.u - o.u))) if t.u.size else 0.0
    n, nbits = t.u.shape
    return {"images": n, "nbits": nbits, "codes_identical": int(same.sum()), "share_identical": float(same.mean()),
            "max_abs_u_difference": du, "bits_differing": int(np.unpackbits(t.codes ^ o.codes).sum()),
            "bits_total": n * nbits, "min_abs_u": float(np.min(np.abs(t.u))),
            "torch_seconds": encoded["torch_seconds"], "onnxruntime_seconds": encoded["onnxruntime_seconds"],
            "met": bool(same.mean() >= TARGET_SAME and du <= TARGET_DU)}


def agreement_part(args, roots: dict[str, Path], inputs: Inputs | None, work: Path) -> list[dict[str, Any]]:
    from dsh.data import load_split

    rows = []
    plans = (("mnist", "MNIST test", args.run_mnist, "mnist", roots["mnist"], {"nbits": 8}),
             ("cifar", "CIFAR-10 (JPEG copy) test", args.run_cifar, "folder", roots["cifar"],
              {"model": "paper-bn", "nbits": 48}))
    for kind, data_name, given, dataset, root, settings in plans:
        if given:
            run, about = Path(given), {"run": str(given)}
        else:
            run = work / "runs" / kind
            about = train_short(dataset, root, run, args, **settings)
        s = inputs.sets[kind] if inputs is not None else (
            load_split("mnist", "test", data_root=root, download=False) if kind == "mnist"
            else load_split("folder", "test", data_root=root))
        r = agreement(run, s.images.numpy(), args.threads, args.batch_size)
        rows.append({"data": data_name, **about, **r})
        if "error" in r:
            print(f"agreement {data_name}: NOT met: {r['error']}", flush=True)
            continue
        print(f"agreement {data_name}: {r['share_identical']:.4%} codes identical, max |du| "
              f"{r['max_abs_u_difference']:.2e}, {r['bits_differing']} of {r['bits_total']:,} bits differ", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# output


def mb(v: float | None) -> str:
    return "—" if v is None or v != v else f"{v:,.0f}"


MEMORY_NOTE = ("Each row ran in its own process. *Peak RSS*: that process's VmHWM (exact). The decode workers of "
               "`iter_encode_files` are processes of their own, forked from it: *workers* is how many ran, *largest "
               "worker* the largest peak RSS of one of them (sampled every 0.1 s; it counts the pages shared with "
               "the encoding process), *tree PSS* the largest total proportional set size of the process and its "
               "workers (shared pages counted once; sampled every 0.1 s while timing). No workers: the files were "
               "decoded in the process itself (`iter_encode_files` does so for one batch of files, or with 1 worker).")


def worker_cells(r: dict) -> str:
    n = r.get("decode_processes") or 0
    return f"{n} | {mb(r.get('largest_worker_peak_rss_mb')) if n else '—'} | {mb(r.get('tree_peak_pss_mb_sampled'))}"


def throughput_lines(rows: list[dict]) -> list[str]:
    speed = {(r["config"], r["source"], r["backend"]): r["images_per_s"] for r in rows}
    lines = ["Images/s = images / the median time of the row's timed passes, each over all its images (*passes* "
             "1: one run), after one warm-up batch through the network (resnet18: of 16 images). *array*: "
             "`Encoder.encode_array` on uint8 "
             "arrays already in memory; *files*: `Encoder.iter_encode_files` over JPEG files, decoding included "
             "(its decode worker processes start on every pass; the files were read once beforehand, so they come "
             "from the page cache). Untrained weights (the speed does not depend on them). torch rows: "
             "`Encoder.from_file(checkpoint, backend=\"torch\")`; onnxruntime rows: `Encoder.from_file(model.onnx)`, "
             "a process without torch.", "", MEMORY_NOTE, "",
             "| model | input | data | source | images | passes | backend | images/s | onnxruntime / torch | "
             "peak RSS MB | workers | largest worker MB | tree PSS MB |",
             "| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        torch_speed = speed.get((r["config"], r["source"], "torch"))
        ratio = (f"{r['images_per_s'] / torch_speed:.1f}x" if r["backend"] == "onnxruntime" and torch_speed
                 else "")
        lines.append(f"| {r['model']} | {r['input']} | {r['data']} | {r['source']} | {r['images']:,} | "
                     f"{r['repeats']} | {r['backend']} | {r['images_per_s']:,.0f} | {ratio} | "
                     f"{mb(r['peak_rss_mb'])} | {worker_cells(r)} |")
    return lines


def stream_lines(rows: list[dict]) -> list[str]:
    lines = ["`encode_folder` (the `paper` net, 3x32x32, onnxruntime from the `.onnx` file, no torch in the process) "
             "of a whole folder into a code file, one process per folder, after one warm-up batch; images/s over the "
             "whole call (listing, decoding, encoding, writing the parts and assembling the file). Memory columns as "
             "in the throughput table.", "",
             "| folder | images | images/s | peak RSS MB | workers | largest worker MB | tree PSS MB | code file MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['folder']} | {r['images']:,} | {r['images_per_s']:,.0f} | {mb(r['peak_rss_mb'])} | "
                     f"{worker_cells(r)} | {r['code_file_mb']:.2f} |")
    small, big = min(rows, key=lambda r: r["images"]), max(rows, key=lambda r: r["images"])
    if big["images"] > small["images"]:
        growth = big["peak_rss_mb"] - small["peak_rss_mb"]
        lines += ["", f"{big['images'] / small['images']:.1f}x the images: peak RSS {mb(small['peak_rss_mb'])} -> "
                      f"{mb(big['peak_rss_mb'])} MB ({growth:+,.0f} MB, "
                      f"{growth * 2**20 / max(1, big['images'] - small['images']):,.0f} bytes per extra image); "
                      f"tree PSS {mb(small.get('tree_peak_pss_mb_sampled'))} -> "
                      f"{mb(big.get('tree_peak_pss_mb_sampled'))} MB."]
    return lines


def agreement_lines(rows: list[dict]) -> list[str]:
    lines = [f"`Encoder.from_run(run, backend=...)` on each backend, `encode_array` of the whole test split. Targets: "
             f"≥ {TARGET_SAME:.1%} codes identical and max |u| difference ≤ {TARGET_DU:g}.", "",
             "| data | run | nbits | images | codes identical | max \\|u\\| difference | bits differing | "
             "smallest \\|u\\| | targets |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r["run"] == "trained by this script":
            tc = r["train_config"]
            run = f"{tc['model']}, {tc['epochs']} epochs, trained by this script (val mAP {r['best_val_map']:.3f})"
        else:
            run = f"`{r['run']}`"
        if "error" in r:
            lines.append(f"| {r['data']} | {run} | — | {r['images']:,} | — | — | — | — | NOT met: {r['error']} |")
            continue
        lines.append(f"| {r['data']} | {run} | {r['nbits']} | {r['images']:,} | {r['codes_identical']:,} "
                     f"({r['share_identical']:.2%}) | {r['max_abs_u_difference']:.1e} | {r['bits_differing']:,} of "
                     f"{r['bits_total']:,} | {r['min_abs_u']:.1e} | {'met' if r['met'] else 'NOT met'} |")
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [f"# Encoding throughput ({m['cpu']}, {s['threads']} threads, batch {s['batch_size']}, torch "
             f"{m.get('torch', '?')}, onnxruntime {m.get('onnxruntime', '?')})", ""]
    if not result["benchmark"]:
        lines += [f"**NOT a benchmark: smoke test on a subset ({common.limits_text(result['limits'])}).**", ""]
    lines += ["Re-make it with:", "", "```bash", result["command"], "```", "",
              f"Measured on {m['cpu']} ({m['cpus_usable']} usable CPUs), {s['threads']} threads (torch intra-op, "
              f"onnxruntime intra-op), {s['workers'] or 'default'} decode workers, torch {m.get('torch', '?')}, "
              f"onnxruntime {m.get('onnxruntime', '?')}, numpy {m.get('numpy', '?')}, Python {m['python']}. "
              f"Load average at start {m['load_average_start']}, at end {m['load_average_end']} (other jobs share "
              f"this machine); total {common.fmt_seconds(result['total_seconds'])}.", ""]
    if result.get("throughput"):
        lines += [f"## Throughput ({s['nbits']}-bit codes)", "", *throughput_lines(result["throughput"]),
                  ""]
    if result.get("stream"):
        lines += ["## Streaming encode of a folder", "", *stream_lines(result["stream"]), ""]
    if result.get("agreement"):
        lines += ["## Agreement: onnxruntime against torch", "", *agreement_lines(result["agreement"]), ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help=f"results folder (default {DEFAULT_OUT}; smoke tests: {SMOKE_OUT})")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="decode processes of iter_encode_files (default: the library's)")
    p.add_argument("--nbits", type=int, default=48, help="code length of the throughput models")
    p.add_argument("--repeats", type=int, help=f"timed passes per row, median reported (default {REPEATS})")
    p.add_argument("--large-images", type=int, help=f"images for resnet18 at 224x224 (default {LARGE_IMAGES})")
    p.add_argument("--large-repeats", type=int,
                   help=f"timed passes per resnet18 row, median reported (default {LARGE_REPEATS})")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--run-mnist", help="trained MNIST run folder for the agreement (default: train 2 epochs here)")
    p.add_argument("--run-cifar", help="trained CIFAR-10 (JPEG copy) run folder (default: train 2 epochs here)")
    p.add_argument("--data-root", type=Path, help="the offline datasets folder (default: $DSH_TEST_DATA or "
                                                  "../shared/data)")
    p.add_argument("--limit-train", type=int, metavar="N", help="smoke test: train on N training images only")
    p.add_argument("--limit-test", type=int, metavar="N", help="smoke test: N test images only")
    p.add_argument("--smoke", action="store_true",
                   help=f"smoke test: --limit-train {SMOKE['limit_train']} --limit-test {SMOKE['limit_test']} "
                        f"--large-images {SMOKE['large_images']} --repeats {SMOKE['repeats']} --large-repeats "
                        f"{SMOKE['large_repeats']}")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    try:
        return run_benchmark(args, argv)
    except DataError as e:
        print(f"encode_throughput: error: {e}", file=sys.stderr)
        return 2


def run_benchmark(args: argparse.Namespace, argv: list[str] | None) -> int:
    t_start = time.perf_counter()
    started, load_start = common.utc_now(), common.load_average()
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    limits = {k: v for k, v in (("train", args.limit_train), ("test", args.limit_test)) if v is not None}
    args.large_images = args.large_images or LARGE_IMAGES
    args.repeats = args.repeats or REPEATS
    args.large_repeats = args.large_repeats or LARGE_REPEATS
    for name in ("threads", "batch_size", "nbits", "repeats", "large_images", "large_repeats"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out or (SMOKE_OUT if limits else DEFAULT_OUT))
    old = common.read_json(out / f"{STEM}.json")
    if limits and old is not None and old.get("benchmark"):
        raise DataError(f"{out}/{STEM}.json holds benchmark results; write the smoke test elsewhere (--out)")
    shared = args.data_root or common.shared_data_dir()
    if shared is None or not Path(shared).is_dir():
        raise DataError("the offline datasets folder (MNIST/, cifar10-jpeg/) was not found: pass --data-root or set "
                        "DSH_TEST_DATA")
    shared = Path(shared)
    set_threads(args.threads)  # the parent trains the short runs and encodes the agreement
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="dsh-encode-bench-") as tmp:
        work = Path(tmp)
        roots = {"mnist": shared, "cifar": shared / "cifar10-jpeg"}
        if args.limit_train is not None or args.limit_test is not None:
            roots = {"mnist": common.limited_data_root("mnist", shared, work / "subset" / "mnist", args.limit_train,
                                                       args.limit_test),
                     "cifar": common.limited_data_root("folder", shared / "cifar10-jpeg", work / "subset" / "cifar",
                                                       args.limit_train, args.limit_test)}
            print(f"smoke test (NOT a benchmark): {common.limits_text(limits)}", flush=True)
        needs_inputs = "throughput" in args.parts or "agreement" in args.parts
        inputs = Inputs(roots, work, args.large_images) if needs_inputs else None
        result: dict[str, Any] = {"benchmark": not limits, "limits": limits}
        if "throughput" in args.parts:
            result["throughput"] = throughput_part(args, inputs, work)
        if "stream" in args.parts:
            result["stream"] = stream_part(args, roots, work)
        if "agreement" in args.parts:
            result["agreement"] = agreement_part(args, roots, inputs, work)
    machine = {**common.machine_info(args.threads), "onnxruntime": onnxruntime.__version__,
               "load_average_start": load_start, "load_average_end": common.load_average()}
    command = (common.command_line() if argv is None  # called as a script
               else shlex.join(["python", "benchmarks/speed/encode_throughput.py", *argv]))
    result = {**result, "command": command, "machine": machine, "threads": args.threads,
              "started": started, "finished": common.utc_now(), "total_seconds": time.perf_counter() - t_start,
              "settings": {k: getattr(args, k) for k in ("threads", "batch_size", "workers", "nbits", "repeats",
                                                          "large_images", "large_repeats", "configs", "parts")}}
    text = markdown(result)
    print("\n" + text)
    common.write_json(out / f"{STEM}.json", result)
    common.write_text(out / f"{STEM}.md", text)
    print(f"wrote {out / (STEM + '.json')} and {out / (STEM + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
