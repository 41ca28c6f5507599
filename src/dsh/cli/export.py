"""``dsh export``: a run's model as ONNX (uint8 images in, ``u`` out) or safetensors."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's model as ONNX (uint8 images in, u out) or safetensors")
    p.add_argument("--run", required=True, help="run folder, checkpoint or .safetensors file")
    p.add_argument("--out", required=True, help="MODEL.onnx or MODEL.safetensors")
    p.add_argument("--format", choices=("onnx", "safetensors"), help="default: from the suffix of --out")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="fold flip test-time augmentation into the ONNX graph (default: as the run was trained, "
                        "its tta_flip setting; safetensors never holds it: its encoder applies the run's setting)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..runtime.export import export_model

    info = export_model(args.run, args.out, fmt=args.format, opset=args.opset, tta_flip=args.tta_flip)
    c, h, w = info.input_shape
    print(f"wrote {args.out}: uint8 images [N, {c}, {h}, {w}] -> u float32[N, {info.nbits}], "
          f"fingerprint {info.fingerprint[:12]}")
    return 0
