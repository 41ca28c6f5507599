"""Fuzzing of dsh's model files: damaged ONNX and safetensors files, each load in a worker process with a timeout.

    python benchmarks/reliability/fuzz_models.py --examples 5000 --out benchmarks/results

Targets (each a valid file made here from a small untrained ``paper`` network, 8 bits, 1x8x8 images, damaged as
:mod:`fuzz_loaders` damages its files: random bytes, truncation, 1-4 flipped bits, an overwritten run):

- ``onnx``, ``safetensors``: the files ``dsh export`` writes, loaded as ``Encoder.from_file`` loads them and run on
  16 probe images. Each must be **refused** (a one-line ``UserError`` naming the file) or load **intact**: the same
  :class:`ModelInfo` and the same codes of the probe images as the original. Both formats carry their own sha256
  (:mod:`dsh.models.sealing`), checked on the raw bytes before any parser reads them.
- ``onnx-resealed``, ``safetensors-resealed``: the same damage, then the file sealed again, as someone crafting a
  file would: the parsers (onnxruntime, safetensors) and dsh's checks of what a file says now face the damaged
  bytes. Each must be refused in one line or load as a working model (its codes of the probe images have the
  right shape; they may differ: it is another model).
- ``pretrained``: a third party's ``.safetensors`` weights, read and mapped onto the network's tensors as a
  pretrained backbone's are (``dsh.models.pretrained.read_state_dict``, ``map_state_dict``); such a file has no
  seal: refused in one line, or mapped onto tensors of the names and shapes of the network (the values cannot be
  checked: a flipped bit in a weight loads).

Anything else fails: another exception, a crash of the worker process, an example that takes more than
``--timeout`` seconds (a hang), or a wrong load. Prints a table and writes ``fuzz_models.json`` / ``.md`` to
``--out``. ``tests/contracts/test_fuzz_models.py`` runs the same oracles in-process under hypothesis.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
from reliability.fuzz_loaders import MUTATIONS, Target, attempt, mutate  # noqa: E402

NBITS, SHAPE = 8, (1, 8, 8)


def _probe() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (16, *SHAPE), dtype=np.uint8)


def _checkpoint(folder: Path) -> Path:
    import torch

    from dsh.models import Normalizer
    from dsh.models.checkpoint import save_checkpoint
    from dsh.models.registry import create_model

    path = folder / "base.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = create_model("paper", NBITS, in_channels=SHAPE[0], image_size=SHAPE[1])
        save_checkpoint(path, {
            "model_config": dict(model.config), "nbits": NBITS, "input_shape": list(SHAPE),
            "normalizer": Normalizer([0.3], [0.2]).to_dict(), "class_names": [str(i) for i in range(10)],
            "config": {"dataset": "digits", "nbits": NBITS}, "epoch": 2,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "history": []})
    return path


def _encode(path: Path):
    from dsh.runtime.encoder import Encoder

    enc = Encoder.from_file(path)
    return enc.info, enc.encode(_probe()).codes


def model_file_target(folder: Path, suffix: str) -> Target:
    from dsh.runtime.export import export_model

    path = folder / f"base.{suffix}"
    export_model(_checkpoint(folder), path)
    want_info, want_codes = _encode(path)

    def same(got) -> bool:
        info, codes = got
        return info == want_info and codes.shape == want_codes.shape and bool(np.array_equal(codes, want_codes))

    return Target(f"{'ONNX' if suffix == 'onnx' else 'safetensors'} model (.{suffix})", path.read_bytes(),
                  f"fuzz.{suffix}", _encode, same)


def reseal(data: bytes, prefix: bytes) -> bytes:
    """Damaged bytes sealed again where their seal entry survived (as a crafted file would be)."""
    from dsh.models.sealing import PLACEHOLDER, seal

    at = data.find(prefix)
    if at < 0 or data.find(prefix, at + 1) >= 0 or len(data) < at + len(prefix) + 64:
        return data
    start = at + len(prefix)
    return seal(data[:start] + PLACEHOLDER.encode() + data[start + 64 :], prefix)


def resealed_target(folder: Path, suffix: str) -> Target:
    from dsh.models.sealing import ONNX_PREFIX, SAFETENSORS_PREFIX

    base = model_file_target(folder, suffix)
    prefix = ONNX_PREFIX if suffix == "onnx" else SAFETENSORS_PREFIX

    def load(path: Path):
        path.write_bytes(reseal(path.read_bytes(), prefix))
        return _encode(path)

    def runs(got) -> bool:  # another model is allowed; it must work
        info, codes = got
        return codes.dtype == np.uint8 and codes.shape == (len(_probe()), (info.nbits + 7) // 8)

    return Target(f"{base.name}, damaged then sealed again", base.base, f"crafted.{suffix}", load, runs)


def pretrained_target(folder: Path) -> Target:
    import torch
    from safetensors.torch import save_file

    from dsh.models.pretrained import map_state_dict, read_state_dict

    torch.manual_seed(1)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "conv.bias": torch.randn(8), "bn.running_var": torch.rand(8),
             "fc.weight": torch.randn(4, 8)}
    path = folder / "base-weights.safetensors"
    save_file(state, str(path))
    want = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}

    def same(got) -> bool:
        return {k: (tuple(v.shape), v.dtype) for k, v in got.items()} == want

    def load(p: Path):  # as a backbone's weights are read: the file, then its tensors onto the network's
        return map_state_dict(read_state_dict(p), state, str(p))

    return Target("pretrained weights (.safetensors, no seal)", path.read_bytes(), "fuzz-weights.safetensors",
                  load, same)


TARGETS = {
    "onnx": lambda f: model_file_target(f, "onnx"),
    "safetensors": lambda f: model_file_target(f, "safetensors"),
    "onnx-resealed": lambda f: resealed_target(f, "onnx"),
    "safetensors-resealed": lambda f: resealed_target(f, "safetensors"),
    "pretrained": pretrained_target,
}


# ---------------------------------------------------------------------------------------------------------------
# the long run: each load in a worker process, so that a crash or a hang is seen and counted


def _worker(key: str, folder: str, conn) -> None:
    import warnings

    warnings.simplefilter("ignore")
    target = TARGETS[key](Path(folder))
    conn.send(("ready", target.base))
    while True:
        data = conn.recv()
        if data is None:
            return
        try:
            conn.send(("ok", attempt(target, data, Path(folder))))
        except Exception as e:  # a wrong load or an unexpected exception: reported by the parent
            conn.send(("failed", f"{type(e).__name__}: {e}"[:300]))


class Worker:
    """A process holding one target, loading the examples it is sent; restarted after a crash or a hang."""

    def __init__(self, key: str, folder: Path, timeout: float):
        self.key, self.folder, self.timeout = key, folder, timeout
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # not fork: the parent has onnxruntime and torch threads
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(self.key, str(self.folder), child), daemon=True)
        self.proc.start()
        if not self.conn.poll(300):
            raise SystemExit(f"{self.key}: the worker did not start")
        _, self.base = self.conn.recv()

    def attempt(self, data: bytes) -> tuple[str, str | None]:
        self.conn.send(data)
        if self.conn.poll(self.timeout):
            try:
                status, what = self.conn.recv()
                return (what, None) if status == "ok" else ("failed", what)
            except EOFError:
                pass
        code = self.proc.exitcode
        self.proc.kill()
        self.proc.join()
        self.start()
        return "failed", (f"hang: no answer in {self.timeout:g} s" if code is None else f"crash: exit code {code}")

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def run(examples: int, folder: Path, seed: int, timeout: float, only: list[str] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for key in TARGETS:
        if only and key not in only:
            continue
        where = folder / key
        where.mkdir(parents=True, exist_ok=True)
        worker = Worker(key, where, timeout)
        counts = {k: {"tried": 0, "refused": 0, "intact": 0, "unchanged": 0} for k in MUTATIONS}
        failures: list[str] = []
        slowest, t0 = 0.0, time.perf_counter()
        for i in range(examples):
            kind = MUTATIONS[i % len(MUTATIONS)]
            data = mutate(worker.base, kind, rng)
            t = time.perf_counter()
            outcome, why = ("unchanged", None) if data == worker.base else worker.attempt(data)
            slowest = max(slowest, time.perf_counter() - t)
            counts[kind]["tried"] += 1
            if outcome in ("refused", "intact", "unchanged"):
                counts[kind][outcome] += 1
            elif len(failures) < 20:
                failures.append(f"{kind}: {why}")
        worker.close()
        rows.append({
            "key": key, "file": LABELS[key], "file_bytes": len(worker.base),
            "tried": sum(c["tried"] for c in counts.values()),
            "refused": sum(c["refused"] for c in counts.values()),
            "intact": sum(c["intact"] for c in counts.values()),
            "unchanged": sum(c["unchanged"] for c in counts.values()),
            "failed": sum(c["tried"] - c["refused"] - c["intact"] - c["unchanged"] for c in counts.values()),
            "by_mutation": counts, "seconds": round(time.perf_counter() - t0, 2),
            "slowest_example_s": round(slowest, 4), "failures": failures})
    return {"examples_per_target": examples, "seed": seed, "timeout_s": timeout, "rows": rows}


LABELS = {"onnx": "ONNX model (`dsh export`)", "safetensors": "safetensors model (`dsh export`)",
          "onnx-resealed": "ONNX, damaged then sealed again (crafted)",
          "safetensors-resealed": "safetensors, damaged then sealed again (crafted)",
          "pretrained": "pretrained weights (.safetensors, a third party's: no seal)"}
ORACLE = {"onnx": "same info and codes", "safetensors": "same info and codes", "onnx-resealed": "a working model",
          "safetensors-resealed": "a working model", "pretrained": "the network's names and shapes (values unchecked)"}


def markdown(result: dict) -> str:
    lines = ["Damaged model files (random bytes, truncations, 1-4 flipped bits, overwritten runs), each loaded in a "
             f"worker process with a {result['timeout_s']:g} s timeout; a load that succeeds must give what the "
             "last column says. Failed: another exception, a crash, a hang or a wrong load.", "",
             "| file | bytes | tried | refused | loaded | unchanged | failed | a load must give | slowest example |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {LABELS[r['key']]} | {r['file_bytes']:,} | {r['tried']:,} | {r['refused']:,} | "
                     f"{r['intact']:,} | {r['unchanged']:,} | {r['failed']:,} | {ORACLE[r['key']]} | "
                     f"{r['slowest_example_s'] * 1000:.0f} ms |")
    m = result["machine"]
    lines += ["", f"{sum(r['seconds'] for r in result['rows']) / 60:.1f} min in all on {m.get('cpu', '?')} "
              f"({m.get('cpus_usable', '?')} usable CPUs), load average {m.get('load_average_start')} at the start "
              "(the machine is shared: times are upper bounds)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import common

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=5000, help="examples per target (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds an example may take (default 30)")
    p.add_argument("--only", nargs="+", choices=sorted(TARGETS), help="fuzz these targets only")
    p.add_argument("--out", help="folder for fuzz_models.json / .md (default: none written)")
    args = p.parse_args(argv)
    if args.examples < 1 or args.timeout <= 0:
        p.error("--examples must be >= 1 and --timeout > 0")
    started, load_start = common.utc_now(), common.load_average()
    with tempfile.TemporaryDirectory(prefix="dsh-fuzz-models-") as tmp:
        result = run(args.examples, Path(tmp), args.seed, args.timeout, args.only)
    result.update(started=started, command=common.command_line(),
                  machine={**common.machine_info(), "load_average_start": load_start,
                           "load_average_end": common.load_average()})
    text = markdown(result)
    if not args.out:
        print(text)
    for r in result["rows"]:
        for f in r["failures"]:
            print(f"FAILED {LABELS[r['key']]}: {f}")
    if args.out:
        common.write_results(args.out, "fuzz_models", result, text)
    return 1 if any(r["failed"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
