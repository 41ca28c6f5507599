"""Test-time views of a trained run: how much averaging ``u`` over more views of each image moves test mAP.

A trained run's query and database images (those ``dsh.train.experiment`` judges it on) are encoded
under each view with the run's best checkpoint, and each combination's codes (the sign of the mean ``u``) are
scored with the tie-aware mAP@all, precision within radius 2 and precision@1000:

- ``none``: the image alone; ``flip``: the image and its mirror (dsh's ``--tta-flip``);
- ``flip + 2 shifts``: half the flip mean, half the mean over the two diagonal 1-pixel reflected shifts (up-left,
  down-right) and their mirrors, as airbench weights its translation TTA;
- ``flip + 4 shifts``: the same with all four diagonal shifts.

Only ``flip`` is built into dsh (encode, export and serve); this script measures whether more would pay.

    python benchmarks/reproduce/tta_views.py --run RUN --threads 2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py and the other folders
import common  # noqa: E402
import numpy as np  # noqa: E402

# the four diagonal 1-pixel shifts, as (row, column) offsets into the image padded by one pixel on every side
SHIFTS = {"up-left": (0, 0), "down-right": (2, 2), "up-right": (0, 2), "down-left": (2, 0)}
COMBINATIONS = ("none", "flip", "flip + 2 shifts", "flip + 4 shifts")


def view_u(model, normalizer, images, batch_size: int = 500) -> dict[str, np.ndarray]:
    """``uint8[N, C, H, W]`` images -> ``{view: float32[N, nbits]}``: the identity, the mirror, and each shift of
    :data:`SHIFTS` with and without the mirror."""
    import torch
    import torch.nn.functional as F

    out: dict[str, list[np.ndarray]] = {}
    h, w = images.shape[2:]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = normalizer(images[start:start + batch_size])
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            views = {"identity": x}
            for name, (r, c) in SHIFTS.items():
                views[name] = padded[:, :, r:r + h, c:c + w]
            for name in list(views):
                views[f"{name}, mirrored"] = views[name].flip(3)
            for name, v in views.items():
                u = model(v.contiguous(memory_format=torch.channels_last)).float().numpy()
                out.setdefault(name, []).append(u)
    return {k: np.concatenate(v) for k, v in out.items()}


def combine(u: dict[str, np.ndarray], how: str) -> np.ndarray:
    """The mean ``u`` of combination ``how`` (module docstring)."""
    flip = (u["identity"] + u["identity, mirrored"]) / 2
    if how == "none":
        return u["identity"]
    if how == "flip":
        return flip
    shifts = list(SHIFTS)[:2] if how == "flip + 2 shifts" else list(SHIFTS)
    shifted = sum(u[s] + u[f"{s}, mirrored"] for s in shifts) / (2 * len(shifts))
    return 0.5 * flip + 0.5 * shifted


def measure(run: Path, data_root: str | None) -> dict[str, Any]:
    import torch

    from dsh.codes.bits import codes_from_u
    from dsh.config import TrainConfig
    from dsh.data.splits import protocol_topk
    from dsh.eval.metrics import evaluate
    from dsh.models.checkpoint import load_model
    from dsh.train.experiment import judged_parts

    loaded = load_model(run)
    cfg = TrainConfig.from_record(loaded.config, source=str(loaded.path))
    query, database = judged_parts(cfg, data_root)
    model = loaded.model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    uq = view_u(model, loaded.normalizer, query.images)
    udb = view_u(model, loaded.normalizer, database.images)
    encode_seconds = time.perf_counter() - t0
    rows = []
    for how in COMBINATIONS:
        e = evaluate(codes_from_u(combine(uq, how)), codes_from_u(combine(udb, how)), query.labels.numpy(),
                     database.labels.numpy(), loaded.nbits, topk=protocol_topk(cfg.protocol), ks=[1000])
        rows.append({"views": how, "map": e.map, "precision_at_radius_2": e.precision_at_radius,
                     "precision_at_1000": e.precision_at_k.at(1000)})
        print(rows[-1], flush=True)
    return {"run": str(run), "nbits": loaded.nbits, "protocol": cfg.protocol, "dataset": cfg.dataset,
            "n_queries": len(query), "n_database": len(database), "views_per_image": len(uq),
            "encode_seconds_all_views": encode_seconds, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Test-time views of a trained run ({result['nbits']} bits, protocol {result['protocol']})", "",
             f"{result['n_queries']:,} queries against {result['n_database']:,}, tie-aware mAP@all; the run: "
             f"`{result['run']}`. Encoding every view ({result['views_per_image']} per image) took "
             f"{common.fmt_seconds(result['encode_seconds_all_views'])}.", "",
             "| views | mAP | precision r≤2 | precision@1000 |", "| --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['views']} | {r['map']:.4f} | {r['precision_at_radius_2']:.4f} | "
                     f"{common.fmt_float(r['precision_at_1000'])} |")
    m = result["machine"]
    lines += ["", f"Measured on {m['cpu']} ({m['cpus_usable']} usable CPUs), {result['threads']} threads."]
    if result.get("run_note"):
        lines += ["", f"Note: {result['run_note']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained run folder (its best.pt)")
    p.add_argument("--data-root", help="where the run's images are (default: as the run recorded)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    from dsh.errors import UserError
    from dsh.utils.threads import set_threads

    try:
        set_threads(args.threads)
        result = measure(args.run, args.data_root)
    except UserError as e:
        print(f"tta_views.py: error: {e}", file=sys.stderr)
        return 2
    result.update(threads=args.threads, machine=common.machine_info(args.threads), command=common.command_line(),
                  finished=common.utc_now())
    common.write_results(args.out, "tta_views", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
