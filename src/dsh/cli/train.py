"""``dsh train``: a run folder from the training settings (flags, a ``--config`` file, a ``--preset``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from .. import config as config_mod
from ..errors import InputError
from .common import log_of


def _setting_parser(name: str):
    """The argparse ``type`` of setting ``name``: :func:`dsh.config.parse_value`, its error as argparse's."""

    def parse(text: str):
        try:
            return config_mod.parse_value(name, text)
        except config_mod.ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training settings (defaults from dsh.config.TrainConfig; a --config file overrides "
                             "defaults, flags override the file)")
    aliases: dict[str, list[str]] = {}
    for alias, name in config_mod.ALIASES.items():
        aliases.setdefault(name, []).append("--" + alias.replace("_", "-"))
    for f in dataclasses.fields(config_mod.TrainConfig):
        names = ["--" + f.name.replace("_", "-"), *aliases.get(f.name, [])]
        text = config_mod.help_of(f.name)
        choices = config_mod.choices_of(f.name)
        if choices is not None:
            text = f"{text}: {', '.join(choices)}"
        text = text if "default" in text else f"{text} (default: {f.default})"
        kinds, _ = config_mod.field_types(f.name)
        if kinds == [bool]:
            g.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(*names, dest=f.name, type=_setting_parser(f.name), default=None,
                           metavar=f.name.upper(), help=text)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_mod.TrainConfig)}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DSH model into a run folder")
    p.add_argument("--out", required=True, help="run folder to create (checkpoints, config.json, tb/)")
    p.add_argument("--config", help="JSON or YAML file of settings")
    p.add_argument("--preset", help="named set of tuned settings (see README)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (torchrun on 127.0.0.1; gloo on CPUs, one process "
                        "per GPU with nccl); --batch-size is the global batch. Several machines: torchrun ... -m dsh "
                        "train")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.loop import train

    overrides = _train_overrides(args)
    if args.resume:
        given = [k for k, v in overrides.items() if v is not None] + (["config"] if args.config else []) + (
            ["preset"] if args.preset else [])
        if given:
            raise InputError(f"--resume continues {args.out} with its saved settings; drop --"
                            f"{given[0].replace('_', '-')}")
    cfg = config_mod.resolve_config(overrides, config_file=args.config, preset=args.preset)
    if args.nproc is not None:  # one machine, N processes: torchrun's launcher runs this command in each
        if "LOCAL_RANK" in os.environ:
            raise InputError("--nproc launches torchrun itself; under torchrun leave it out")
        from ..train.launch import launch_train

        return launch_train(cfg, args.out, nproc=args.nproc, resume=args.resume, quiet=args.quiet)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet, log=log_of(args))
    if result.rank == 0:
        # a model that collapsed (or a one-class training set) must not end with an ordinary success line
        warned = "".join(f"; WARNING: {w}" for w in result.warnings)
        print(
            f"best epoch {result.best_epoch}: validation mAP {result.best_val_map:.4f}; {result.train_seconds:.1f}s "
            f"of training ({result.images_per_second:.0f} images/s); run in {result.run_dir}{warned}"
        )
    return 0
