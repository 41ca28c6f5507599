"""Training configuration: one typed dataclass whose defaults are the single source of truth.

A run's resolved configuration is written as ``config.json`` next to its checkpoints. Precedence when resolving:
dataclass defaults < a named preset < a config file (JSON or YAML) < explicit command-line flags.
The device is resolved at run time and never stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, one_line
from .fileio import atomic_write


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = "digits"
    data_root: str | None = None
    val_size: int | float | None = None  # count or fraction; None: min(5000, 10% of train); never from test
    image_size: int | None = None  # resize folder datasets; None keeps the native size
    download: bool = True
    protocol: str | None = None  # train on a named protocol's train part (dsh.protocols), e.g. "cifar10"
    protocol_seed: int = 0  # the seed of the protocol's sampling
    # --- model and code ---
    model: str = "paper"
    nbits: int = 12
    # --- loss (DSH paper: m = 2 * nbits, alpha = 0.01) ---
    margin: float | None = None
    alpha: float = 0.01
    # --- optimisation ---
    epochs: int = 8
    batch_size: int = 128
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup_fraction: float = 0.15  # share of steps spent rising to lr (onecycle)
    sampler: str = "random"  # random | balanced (P classes x K images per batch)
    crop_padding: int | None = None  # None: the dataset's default (digits 1-2 px shifts, CIFAR 4 px + flips)
    flip: bool | None = None
    # --- speed ---
    channels_last: bool = True
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else off) | bf16 | off
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    # --- bookkeeping ---
    seed: int = 0
    eval_every: int = 1  # epochs between validation mAP checks
    log_every: int = 20  # steps between TensorBoard scalar writes
    projector_samples: int = 500  # images shown in TensorBoard's embedding projector (0: none)
    tensorboard: bool = True

    def validate(self) -> "TrainConfig":
        """Check every setting's type (from its annotation) and range; a one-line :class:`ConfigError` naming the
        setting and its flag otherwise. Returns ``self``."""
        from .models import list_models  # the registry is the one list of model names

        for f in fields(self):
            _check_type(f.name, getattr(self, f.name))

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} ({_flag(name)}) must be {rule}, got {getattr(self, name)!r}")

        if self.model not in list_models():
            raise ConfigError(f"model ({_flag('model')}) must be one of {', '.join(list_models())}, got "
                              f"{self.model!r}")
        need(1 <= self.nbits <= MAX_NBITS, "nbits", f"between 1 and {MAX_NBITS}")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.batch_size >= 2, "batch_size", ">= 2 (the loss needs pairs)")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        need(self.alpha >= 0 and math.isfinite(self.alpha), "alpha", "a finite number >= 0")
        need(self.margin is None or (self.margin > 0 and math.isfinite(self.margin)), "margin",
             "a finite number > 0 (or unset for 2 * nbits)")
        need(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", "a finite number >= 0")
        need(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        need(0 <= self.warmup_fraction < 1, "warmup_fraction", "in [0, 1)")
        need(self.crop_padding is None or self.crop_padding >= 0, "crop_padding", ">= 0")
        need(self.threads is None or self.threads >= 1, "threads", ">= 1 (or unset for torch's default)")
        need(self.image_size is None or self.image_size >= 1, "image_size", ">= 1")
        need(self.val_size is None or self.val_size >= 0, "val_size", "a count >= 0 or a fraction in (0, 1)")
        need(self.protocol_seed >= 0 and self.seed >= 0, "seed" if self.seed < 0 else "protocol_seed", ">= 0")
        need(self.projector_samples >= 0, "projector_samples", ">= 0")
        for name in ("eval_every", "log_every"):
            need(getattr(self, name) >= 1, name, ">= 1")
        for name, choices in (("optimizer", ("adamw", "sgd")), ("schedule", ("onecycle", "cosine", "constant")),
                              ("sampler", ("random", "balanced")), ("amp", ("auto", "bf16", "off"))):
            need(getattr(self, name) in choices, name, f"one of {', '.join(choices)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)  # a YAML key can be of any type
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)


# Longer codes than any hashing method uses; past this a typo (--bits 10000000) would only fail on allocation.
MAX_NBITS = 4096


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_type(name: str, value: Any) -> None:
    """``value`` must be of the field's annotated type: a JSON ``"false"`` is not a bool, ``"1"`` not an int, a
    bool not a number; ints are accepted where floats are."""
    kinds, nullable = field_types(name)
    if value is None:
        if nullable:
            return
    elif isinstance(value, bool):
        if bool in kinds:
            return
    elif isinstance(value, int) and (int in kinds or float in kinds):
        return
    elif isinstance(value, float) and float in kinds:
        return
    elif isinstance(value, str) and str in kinds:
        return
    names = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
    raise ConfigError(f"{name} ({_flag(name)}) must be {names}, got {_short_repr(value)} ({type(value).__name__})")


def _short_repr(value: Any) -> str:
    """``repr`` cut short: a config file's value can be a huge or deeply shared structure (a YAML alias bomb)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 2, 60, 60
    return r.repr(value)


# One line of help per setting, for `dsh train --help`.
FIELD_HELP: dict[str, str] = {
    "dataset": "digits | mnist | cifar10 | folder",
    "data_root": "dataset folder (default: $DSH_DATA); for folder, the tree with train/ and test/",
    "val_size": "validation images carved from train: a count or a fraction (default: min(5000, 10%%))",
    "image_size": "resize images to this size (folder datasets of mixed sizes)",
    "download": "download mnist/cifar10 into --data-root when absent",
    "protocol": "train on a named protocol's train part: dsh-paper, cifar10, cifar10-1, cifar10-2",
    "protocol_seed": "seed of the protocol's query/train sampling",
    "model": "paper | paper-bn | resnet-small | resnet18 | resnet50",
    "nbits": "code length in bits",
    "margin": "DSH margin m on squared distances (default: 2 * nbits, as in the paper)",
    "alpha": "weight of the pull of every output towards +-1",
    "epochs": "passes over the training images",
    "batch_size": "images per step; the loss uses all pairs of a batch",
    "optimizer": "adamw | sgd (Nesterov)",
    "lr": "peak learning rate",
    "weight_decay": "decoupled weight decay (not on biases and norms)",
    "momentum": "SGD momentum",
    "schedule": "onecycle | cosine | constant",
    "warmup_fraction": "share of the steps spent warming up",
    "sampler": "random | balanced (P classes x K images per batch)",
    "crop_padding": "random-crop padding in pixels (default: the dataset's)",
    "flip": "random horizontal flips (default: the dataset's; off for digits)",
    "channels_last": "NHWC memory layout (1.3-1.6x faster on CPUs)",
    "amp": "auto | bf16 | off: bf16 autocast for the network",
    "threads": "torch CPU threads (default: torch's choice)",
    "seed": "seed of initialisation, batches and augmentation",
    "eval_every": "epochs between validation mAP checks",
    "log_every": "steps between TensorBoard loss points",
    "projector_samples": "validation images in TensorBoard's embedding projector",
    "tensorboard": "write TensorBoard logs into RUN/tb",
}

# Named presets: settings found to work, kept together with the reason for each (README, "Presets").
PRESETS: dict[str, dict[str, Any]] = {
    # MNIST at 8 bits past 0.99 mAP@all with well-separated class codes: the defaults' 8 epochs stop near 0.983,
    # still rising; twice the epochs (~15 s each on 2 cores) reached 0.9913 with every class >= 2 bits from the
    # next. The paper net with batch norm (lr 1e-3 or 3e-3, 12 epochs) also passed 0.99 but told classes apart by
    # one or two bits of large |u|: 1-3 class pairs 1 bit apart, precision within radius 2 about 0.50 against 0.78.
    "mnist-cpu": {"model": "paper", "lr": 1e-3, "epochs": 16, "batch_size": 128},
    # CIFAR-10 from scratch on a 2-core CPU within 15 minutes of training (issue 4's budget).
    "cifar10-cpu": {
        # The paper's network with batch norm: at 10 epochs it reached 0.546 test mAP (12 bits) against 0.387
        # for the plain network with the same budget, at about the same images/s (2,100-2,600 here).
        "model": "paper-bn",
        # BN tolerates a 3x larger peak rate than the plain net's 1e-3; one-cycle warms up over 15% of the steps.
        "lr": 3e-3,
        # ~21 s per epoch of 45,000 images at 2 threads with bf16 + channels_last: 36 epochs ~ 13 minutes.
        "epochs": 36,
        "batch_size": 128,
    },
}


def field_types(name: str) -> tuple[list[type], bool]:
    """The non-None types of TrainConfig field ``name`` (from its annotation), and whether None is allowed."""
    hints = typing.get_type_hints(TrainConfig)
    if name not in hints:
        raise ConfigError(f"unknown setting {name!r}; known: {', '.join(hints)}")
    args = typing.get_args(hints[name]) or (hints[name],)
    return [a for a in args if a is not type(None)], type(None) in args


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML mapping of TrainConfig fields; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read config ({e.__class__.__name__}: {one_line(e)})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # plain data only: a !!python/object tag is refused, never constructed
        else:
            data = json.loads(text)
    except Exception as e:  # any parser error is the file's fault
        raise DataError(f"{path}: cannot parse config ({e.__class__.__name__}: {one_line(e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: a config file must hold a mapping of settings, got {type(data).__name__}")
    if "nbits" not in data and "bits" in data:
        data["nbits"] = data.pop("bits")
    return data


def resolve_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """defaults < preset < config file < overrides (values that are None in ``overrides`` are ignored)."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(sorted(PRESETS)) or '(none)'}")
        data.update(PRESETS[preset])
    from_file: set[str] = set()
    if config_file is not None:
        file_data = read_config_file(config_file)
        data.update(file_data)
        from_file = {str(k) for k in file_data}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    try:
        return TrainConfig.from_dict(data, source=str(config_file or "settings")).validate()
    except ConfigError as e:
        # a bad value that came from the file: say which file (the message names the setting and its flag)
        culprit = next((k for k in from_file - set(given) if str(e).startswith(f"{k} (")), None)
        if culprit is not None:
            raise ConfigError(f"{config_file}: {e}") from None
        raise


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    with atomic_write(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
        f.write("\n")
