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
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DataError, one_line
from .utils.fileio import write_json


def setting(default: Any, help: str, choices: tuple[str, ...] | Callable[[], list[str]] | None = None):
    """A TrainConfig field with its help text (``dsh train --help`` is made from it) and, for a setting with a
    fixed set of values, its ``choices`` (or a function giving them from a registry)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _models() -> list[str]:
    """The registry's names where it is loaded (a program that registered a model of its own has loaded it), else
    the names dsh registers, read without torch, so that a flag's help or a config check does not import it."""
    registry = sys.modules.get("dsh.models.registry")
    if registry is not None:
        return registry.list_models()
    from .models.names import MODEL_NAMES

    return list(MODEL_NAMES)


def _protocols() -> list[str]:
    from .data.protocols import PROTOCOLS

    return sorted(PROTOCOLS)


def _datasets() -> list[str]:
    from .data.names import DATASETS

    return list(DATASETS)


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = setting("digits", "the training images", choices=_datasets)
    data_root: str | None = setting(None, "dataset folder (default: $DSH_DATA); for folder, the tree with train/ "
                                          "and test/; for list, the folder of train.txt, test.txt, database.txt")
    val_size: int | float | None = setting(None, "validation images carved from train (never from test): a count "
                                                 "or a fraction (default: min(5000, 10%%))")
    image_size: int | None = setting(None, "resize images to this size (folder datasets of mixed sizes; default: "
                                           "the native size)")
    download: bool = setting(True, "download mnist/cifar10 into --data-root when absent")
    protocol: str | None = setting(None, "train on a named protocol's train part (dsh.data.protocols)",
                                   choices=_protocols)
    protocol_seed: int = setting(0, "seed of the protocol's query/train sampling")
    # --- model and code ---
    model: str = setting("paper", "the network", choices=_models)
    width: int | None = setting(None, "the network's base width where it has one (airbench: the first group, the "
                                      "others 4x; default: the network's own)")
    nbits: int = setting(12, "code length in bits")
    # --- pretrained backbones (efficientnet-lite0/1/2, timm) ---
    arch: str | None = setting(None, "the timm architecture of --model timm (any of timm.list_models(); default "
                                     "efficientnet_lite0)")
    weights: str | None = setting(None, "a pretrained backbone's starting weights: imagenet (the weights its package "
                                        "ships), timm (timm's download: needs a network), a .safetensors or .pt file, "
                                        "or none (random); default: imagenet")
    tune: str | None = setting(None, "what trains on a pretrained backbone: head (the backbone frozen, its features "
                                     "computed once and cached: seconds), top (also its last two stages) or all "
                                     "(default: the model's, all)", choices=("head", "top", "all"))
    input_size: int | None = setting(None, "the side a pretrained backbone resizes every image to inside itself "
                                           "(default: the backbone's own, 224-260; smaller is faster)")
    backbone_lr_scale: float | None = setting(None, "a pretrained backbone's learning rate as a share of --lr "
                                                    "(default 0.1)")
    head_epochs: int = setting(30, "epochs of fitting the hash head on cached backbone features before the backbone "
                                   "trains too (tune top or all; 0: none)")
    # --- loss (DSH paper: m = 2 * nbits, alpha = 0.01) ---
    margin: float | None = setting(None, "DSH margin m on squared distances (default: 2 * nbits, as in the paper)")
    alpha: float = setting(0.01, "weight of the pull of every output towards +-1")
    # --- optimisation ---
    # 16: at 8, MNIST's validation mAP was still rising (8 bits stopped near 0.983 test mAP); 16 passed 0.99
    epochs: int = setting(16, "passes over the training images")
    min_steps: int | None = setting(None, "optimiser steps a run makes at least: where the training images are few, "
                                          "the epochs are raised to reach them (a pretrained backbone's recipe: 300)")
    batch_size: int = setting(128, "images per step; the loss uses all pairs of a batch")
    optimizer: str = setting("adamw", "adamw, or sgd (with Nesterov momentum)", choices=("adamw", "sgd"))
    lr: float = setting(1e-3, "peak learning rate")
    weight_decay: float = setting(5e-4, "decoupled weight decay (not on biases and norms)")
    momentum: float = setting(0.9, "SGD momentum")
    schedule: str = setting("onecycle", "learning-rate schedule", choices=("onecycle", "cosine", "constant"))
    warmup_fraction: float = setting(0.15, "share of the steps spent warming up to --lr")
    sampler: str = setting("random", "random batches, or balanced (P classes x K images per batch; class ids only)",
                           choices=("random", "balanced"))
    crop_padding: int | None = setting(None, "random-translation padding in pixels (default: the dataset's, digits "
                                             "1-2 px, CIFAR and folders 4 px)")
    flip: bool | None = setting(None, "random horizontal flips (default: the dataset's; off for digits)")
    tta_flip: bool = setting(False, "flip test-time augmentation: validation and every encoder of the run average u "
                                    "over each image and its mirror")
    # --- speed ---
    channels_last: bool = setting(True, "NHWC memory layout (1.3-1.6x faster on CPUs)")
    amp: str = setting("auto", "bf16 autocast for the network: auto (on CUDA, on CPUs with AMX, on AMD CPUs with "
                               "AVX512-BF16), bf16 or off", choices=("auto", "bf16", "off"))
    threads: int | None = setting(None, "CPU threads of torch and of validation (default: torch's choice)")
    # --- bookkeeping ---
    seed: int = setting(0, "seed of initialisation, batches and augmentation")
    eval_every: int = setting(1, "epochs between validation mAP checks")
    log_every: int = setting(20, "steps between TensorBoard loss points")
    projector_samples: int = setting(500, "validation images in TensorBoard's embedding projector (0: none)")
    tensorboard: bool = setting(True, "write TensorBoard logs into RUN/tb")

    def validate(self) -> "TrainConfig":
        """Check every setting's type (from its annotation) and range; a one-line :class:`ConfigError` naming the
        setting and its flag otherwise. Returns ``self``."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name))

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} ({_flag(name)}) must be {rule}, got {getattr(self, name)!r}")

        need(1 <= self.nbits <= MAX_NBITS, "nbits", f"between 1 and {MAX_NBITS}")
        need(self.epochs >= 1, "epochs", ">= 1")
        need(self.min_steps is None or self.min_steps >= 1, "min_steps", ">= 1")
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
        need(self.width is None or 1 <= self.width <= 4096, "width", "between 1 and 4096 (or unset)")
        need(self.input_size is None or 32 <= self.input_size <= 1024, "input_size", "between 32 and 1024 (or unset)")
        need(self.backbone_lr_scale is None or (0 <= self.backbone_lr_scale and math.isfinite(self.backbone_lr_scale)),
             "backbone_lr_scale", "a finite number >= 0 (or unset)")
        need(self.head_epochs >= 0, "head_epochs", ">= 0")
        need(self.val_size is None or self.val_size >= 0, "val_size", "a count >= 0 or a fraction in (0, 1)")
        need(self.protocol_seed >= 0 and self.seed >= 0, "seed" if self.seed < 0 else "protocol_seed", ">= 0")
        need(self.projector_samples >= 0, "projector_samples", ">= 0")
        for name in ("eval_every", "log_every"):
            need(getattr(self, name) >= 1, name, ">= 1")
        for f in fields(self):
            value, choices = getattr(self, f.name), choices_of(f.name)
            if value is not None and choices is not None:
                need(value in choices, f.name, f"one of {', '.join(choices)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_model(cls, info, source: str = "the model file") -> "TrainConfig | None":
        """The training settings a model file (its :class:`dsh.models.ModelInfo` ``info``) records, checked as
        :meth:`from_record`, or ``None`` where it records none (a model not trained by ``dsh train``). A setting
        this version does not know is left out; one the file lacks (an older dsh) takes today's default."""
        return cls.from_record(info.train_config, source) if info.train_config else None

    @classmethod
    def from_record(cls, data: dict[str, Any], source: str = "checkpoint") -> "TrainConfig":
        """The settings a checkpoint or model file recorded, checked: as :meth:`from_dict`, but a setting this
        version does not know (written by a newer dsh) is left out instead of refused. Types are checked, ranges
        and registry names are not (that would import torch, and an ONNX model is read without it)."""
        known = {f.name for f in fields(cls)}
        try:
            cfg = cls(**{k: v for k, v in data.items() if k in known})
            for f in fields(cfg):
                _check_type(f.name, getattr(cfg, f.name))
        except ConfigError as e:
            raise ConfigError(f"{source}: its recorded settings: {e}") from None
        return cfg

    def data_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`dsh.data.splits.load_parts` that say which images this run uses: the one
        place training, evaluation and ``dsh encode --split`` take them from."""
        return dict(protocol=self.protocol, protocol_seed=self.protocol_seed, data_root=self.data_root,
                    val_size=self.val_size, seed=self.seed, download=self.download, image_size=self.image_size)

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


# The fine-tuning recipe of the EfficientNet-Lite presets below (their comments give what it measured)
_LITE_FINETUNE = {
    "tune": "all",
    "image_size": 32,
    "input_size": 160,
    "head_epochs": 30,
    "epochs": 10,
    "optimizer": "adamw",
    "lr": 2e-4,
    "backbone_lr_scale": 1.0,
    "batch_size": 64,
    "tta_flip": True,
    "amp": "off",
}

# Named presets: settings found to work, kept together with the reason for each (README, "Presets").
PRESETS: dict[str, dict[str, Any]] = {
    # `dsh demo`'s: scikit-learn's digits have ~1,300 training images, so many short epochs (100 x 20 steps of 64
    # images, ~15 s; 40 epochs stopped near 0.84 test mAP, lr 3e-3 was unstable).
    "digits-demo": {"epochs": 100, "batch_size": 64},
    # MNIST at 8 bits past 0.99 mAP@all with well-separated class codes: the defaults' 8 epochs stop near 0.983,
    # still rising; twice the epochs (~15 s each on 2 cores) reached 0.9913 with every class >= 2 bits from the
    # next. The paper net with batch norm (lr 1e-3 or 3e-3, 12 epochs) also passed 0.99 but told classes apart by
    # one or two bits of large |u|: 1-3 class pairs 1 bit apart, precision within radius 2 about 0.50 against 0.78.
    # (The defaults are these settings too; the preset keeps them fixed for the published MNIST figures.)
    "mnist-cpu": {"model": "paper", "lr": 1e-3, "epochs": 16, "batch_size": 128},
    # CIFAR-10 from scratch on a 2-core CPU within 15 minutes of training: the airbench-shaped network.
    "cifar10-cpu": {
        # At 2 epochs (48 bits, validation mAP): SGD-Nesterov to 0.05 gave 0.357, to 0.2 0.283, AdamW 3e-3 0.330.
        "model": "airbench",
        # widths 32/128/128: 834 images/s here (fp32, channels_last), ~54 s an epoch; 48/192/192 runs at ~420,
        # too slow for enough epochs in 15 minutes.
        "width": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "batch_size": 256,
        # 15 epochs reached 0.8315 test mAP at 48 bits (validation 0.7966) in 14 min 56 s of training, too close to
        # the budget on a machine whose speed varies by 10%; 14 keep a minute in hand
        "epochs": 14,
        # the recipe's augmentation: 2 px reflected translation and flips; flip test-time augmentation
        "crop_padding": 2,
        "flip": True,
        "tta_flip": True,
        # bf16 autocast made these convolutions slower on an AVX512-BF16 CPU without AMX (327 against 407
        # images/s at width 48), so float32
        "amp": "off",
    },
    # Multi-label images (benchmarks/make_mnist_mosaic.py's 2x2 MNIST mosaics, 1x56x56, similar = sharing a digit).
    "mosaic-cpu": {
        # With the defaults (paper network, AdamW 1e-3) the codes learnt at 16 and 32 bits (test mAP 0.617 and
        # 0.628) but not at 48: validation mAP stayed at 0.48-0.49 over 9 epochs, near the 43% share of similar
        # pairs; the paper network with batch norm (0.505 after 4 epochs) and AdamW at 3e-4 (0.481) did no
        # better. The airbench network with cifar10-cpu's optimiser rose from the first epoch (0.541, then 0.580
        # at epoch 4 of 4).
        "model": "airbench",
        "width": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "batch_size": 256,
        # ~68 s an epoch of 18,000 mosaics here (4x CIFAR's pixels): 10 epochs, about 11 minutes
        "epochs": 10,
        # digits: 2 px shifts as for MNIST, no flips (a mirrored digit is not a digit)
        "crop_padding": 2,
        "flip": False,
        "amp": "off",
    },
    # ImageNet's EfficientNet-Lite0, frozen: the hash head alone on the backbone's cached features (seconds once the
    # features are computed; the database's are cached too, so every further code length costs seconds). CIFAR's
    # 32 px images are decoded as they are and resized inside the network. On cifar10-1 at 48 bits: test mAP 0.6130
    # at 160 px (mean of three seeds 0.6040); 0.6190 at 224 px with the images decoded at 224, at 3x the feature
    # cost.
    "cifar10-lite0-head": {
        "model": "efficientnet-lite0",
        "tune": "head",
        "image_size": 32,
        "input_size": 160,
        "epochs": 60,
        "lr": 1e-3,
        "batch_size": 128,
        "amp": "off",
    },
    # EfficientNet-Lite0 fine-tuned after its head was fitted on frozen features, batch norm's ImageNet statistics
    # kept (re-estimating them wrecked the features: 0.41 -> 0.14 in a probe), AdamW at 2e-4 over the whole network,
    # one-cycle. On cifar10-1 at 48 bits: 6 epochs at 128 px with the images decoded at 128 (so the 4 px crop
    # moved them by 1 px of the original) gave 0.7574 test mAP; this recipe (32 px decoded as they are and resized
    # to 160 inside the network, so the crop and flip augment at CIFAR's own scale, 10 epochs, flip test-time
    # augmentation) 0.8070, best validation epoch 9 of 10, 30 min of training on 2 shared cores.
    "cifar10-lite0-finetune": {"model": "efficientnet-lite0", **_LITE_FINETUNE},
    # The same recipe on EfficientNet-Lite1 (its own input is 240 px; here 160 as above): on cifar10-1 at 48 bits
    # 0.8311 test mAP, best validation epoch 9 of 10, 20.5 min of training on 2 cores, the best figure there.
    "cifar10-lite1-finetune": {"model": "efficientnet-lite1", **_LITE_FINETUNE},
    # The paper's network with batch norm: the recipe of the paper-network figures (15 minutes of training on 2
    # CPU cores, the budget of every CIFAR-10 figure trained from scratch).
    "cifar10-paper-bn-cpu": {
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


def help_of(name: str) -> str:
    """The help text of TrainConfig field ``name``."""
    return _field(name).metadata["help"]


def choices_of(name: str) -> tuple[str, ...] | None:
    """The values TrainConfig field ``name`` accepts when it has a fixed set (a registry's names for ``model``,
    ``protocol`` and ``dataset``), else ``None``."""
    choices = _field(name).metadata["choices"]
    return tuple(choices()) if callable(choices) else choices


def _field(name: str) -> dataclasses.Field:
    for f in fields(TrainConfig):
        if f.name == name:
            return f
    raise ConfigError(f"unknown setting {name!r}; known: {', '.join(f.name for f in fields(TrainConfig))}")


def field_types(name: str) -> tuple[list[type], bool]:
    """The non-None types of TrainConfig field ``name`` (from its annotation), and whether None is allowed."""
    hints = typing.get_type_hints(TrainConfig)
    if name not in hints:
        raise ConfigError(f"unknown setting {name!r}; known: {', '.join(hints)}")
    args = typing.get_args(hints[name]) or (hints[name],)
    return [a for a in args if a is not type(None)], type(None) in args


# Other names a setting answers to, in a config file, in --set and as a flag: the one alias table.
ALIASES: dict[str, str] = {"bits": "nbits"}


def canonical_name(name: str) -> str:
    """A setting's field name from what a user typed: ``bits`` -> ``nbits``, ``batch-size`` -> ``batch_size``."""
    name = str(name).strip().replace("-", "_")
    return ALIASES.get(name, name)


def parse_value(name: str, text: str) -> Any:
    """``text`` as the type of TrainConfig field ``name`` (``none``/``null`` for None where allowed;
    ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0`` for booleans); a one-line :class:`ConfigError`
    naming the setting otherwise. The one reading of a setting from text: flags and ``--set`` both use it."""
    kinds, nullable = field_types(name)
    low = text.strip().lower()
    if nullable and low in ("none", "null"):
        return None
    for kind in kinds:
        if kind is bool:
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            continue
        try:
            value = kind(text)
        except ValueError:
            continue
        return value
    names = " or ".join(k.__name__ for k in kinds)
    raise ConfigError(f"{name} ({_flag(name)}) must be {names}, got {text!r}")


def parse_assignments(items: list[str] | None, reserved: tuple[str, ...] = (), what: str = "--set"
                      ) -> dict[str, Any]:
    """``["lr=0.01", "bits=16"]`` -> ``{"lr": 0.01, "nbits": 16}``, each value typed by :func:`parse_value`;
    ``reserved`` settings (a caller sets them itself) are refused."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} {item}: expected key=value")
        key, value = item.split("=", 1)
        key = canonical_name(key)
        if key in reserved:
            raise ConfigError(f"{what} {key}=...: this program sets {key} itself (see --help)")
        try:
            out[key] = parse_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"{what} {item}: {e}") from None
    return out


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
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key) if isinstance(key, str) else key
        if name in out:
            raise ConfigError(f"{path}: {key!r} and {name!r} are the same setting; give it once")
        out[name] = value
    return out


def resolve_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """defaults < the model's own defaults (a pretrained backbone's recipe) < preset < config file < overrides
    (values that are None in ``overrides`` are ignored)."""
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
    model = data.get("model", TrainConfig.model)
    if isinstance(model, str):
        from .models.registry import train_defaults

        defaults = train_defaults(model)
        if defaults and data.get("dataset") in ("folder", "list") and data.get("image_size") is None:
            # photos of every size are decoded once at the size the backbone sees, not kept at full size
            defaults["image_size"] = data.get("input_size", defaults["input_size"])
        data = {**defaults, **data}
    try:
        return TrainConfig.from_dict(data, source=str(config_file or "settings")).validate()
    except ConfigError as e:
        # a bad value that came from the file: say which file (the message names the setting and its flag)
        culprit = next((k for k in from_file - set(given) if str(e).startswith(f"{k} (")), None)
        if culprit is not None:
            raise ConfigError(f"{config_file}: {e}") from None
        raise


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    write_json(path, cfg.to_dict())


def trained_with_tta_flip(info, source: str = "the model file") -> bool:
    """Whether the run behind a model file (its :class:`dsh.models.ModelInfo` ``info``) chose its best epoch on
    flip-TTA codes (its ``tta_flip`` setting): what its encoders and ONNX exports do unless told otherwise."""
    settings = TrainConfig.of_model(info, source)
    return bool(settings and settings.tta_flip)
