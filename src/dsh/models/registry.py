"""Hashing networks, created by name from one plain registry.

Every model maps images ``float32[B, C, H, W]`` to real-valued outputs ``u`` ``float32[B, nbits]``; the binary code
is ``u >= 0`` (see :mod:`dsh.codes.bits`). Build one with :func:`create_model`; :func:`list_models` names them all::

    model = create_model("paper", nbits=12, in_channels=1, image_size=28)
    u = model(images)                              # (B, 12)
    same = create_model(**model.config)            # what a checkpoint stores to rebuild it

Models:

- ``paper``: the network of Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016
  (https://openaccess.thecvf.com/content_cvpr_2016/papers/Liu_Deep_Supervised_Hashing_CVPR_2016_paper.pdf);
- ``resnet-small``: a small ResNet of BasicBlock stages, fast on a CPU, for 8x8 to 32x32 images;
- ``resnet18`` / ``resnet50``: torchvision backbones with a linear hash head, optionally loading a local state_dict;
- ``airbench``: a fast CIFAR-10 network after Keller Jordan's airbench (2x2 patch-whitening conv, three conv
  groups, global max pooling), with :meth:`AirbenchNet.init_whitening` and :meth:`AirbenchNet.optimizer_groups`.

All models are friendly to ``model.to(memory_format=torch.channels_last)`` with channels_last inputs (no ``.view``
on feature maps; flattening is done with ``torch.flatten``, which copies when the layout needs it). On a 2-core
AVX512 CPU (batch 128) channels_last trained the paper net 1.4-1.6x faster and resnet-small 1.3-1.4x; bf16 autocast
gave another 1.3-1.6x.

This module does not import the rest of :mod:`dsh`'s training side (data, loss, train).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock

from ..errors import InputError
from .heads import init_hash_layer
from .pretrained import BACKBONES, DEFAULT_TIMM_ARCH

__all__ = ["create_model", "list_models", "model_settings", "register_model"]

# name -> builder(nbits, in_channels, image_size, **kwargs) -> nn.Module
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | Callable | None = None):
    """Add a builder ``fn(nbits, in_channels, image_size, **kwargs) -> nn.Module`` to the registry.

    ``image_size`` reaches the builder as an int for square images and as ``(H, W)`` otherwise.

    Use as ``@register_model("my-net")``, or bare ``@register_model`` to register under the function's name.
    """

    def add(fn: Callable[..., nn.Module], key: str) -> Callable[..., nn.Module]:
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    if callable(name):  # bare @register_model
        return add(name, name.__name__)
    return lambda fn: add(fn, name or fn.__name__)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def model_settings(name: str) -> tuple[str, ...] | None:
    """The keyword settings model ``name``'s builder takes besides ``nbits, in_channels, image_size``, in order;
    ``None`` when it takes any keyword (``**kwargs``)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    params = list(inspect.signature(_REGISTRY[name]).parameters.values())[3:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def train_defaults(name: str) -> dict:
    """Training settings model ``name`` carries (a pretrained backbone's recipe), below any preset, file or flag."""
    from .pretrained import TRAIN_DEFAULTS, is_pretrained

    return dict(TRAIN_DEFAULTS) if is_pretrained(name) else {}


def create_model(
    name: str, nbits: int, in_channels: int = 3, image_size: int | tuple[int, int] = 32, **kwargs
) -> nn.Module:
    """Build model ``name`` mapping ``float32[B, in_channels, H, W]`` to ``u`` ``float32[B, nbits]``.

    ``image_size``: ``S`` for square ``S x S`` images, or ``(H, W)``.

    ``kwargs`` go to the model (e.g. ``batch_norm=True`` for ``paper``, ``weights_path=`` for ``resnet18``).
    The returned module has ``model.config``, a plain dict such that ``create_model(**model.config)`` rebuilds the
    same architecture (same state_dict keys and shapes); ``weights_path`` is left out of it, since a checkpoint
    carries the weights itself and the file may not exist where the checkpoint is loaded.
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    if int(nbits) != nbits or int(nbits) < 1:
        raise InputError(f"nbits must be an integer >= 1, got {nbits!r}")
    if int(in_channels) < 1:
        raise InputError(f"in_channels must be >= 1, got {in_channels!r}")
    h, w = _as_hw(image_size)
    # builders and model.config get a plain int for square images (the common case), (H, W) otherwise
    nbits, in_channels = int(nbits), int(in_channels)
    accepted = model_settings(name)
    unknown = [] if accepted is None else sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(f"model {name!r} has no setting {', '.join(unknown)}")
    model = _REGISTRY[name](nbits, in_channels, h if h == w else (h, w), **kwargs)
    image_size = h if h == w else [h, w]
    # the starting weights are not part of the architecture: a checkpoint carries its own
    config = {k: v for k, v in kwargs.items() if k not in ("weights_path", "weights")}
    model.config = {"name": name, "nbits": nbits, "in_channels": in_channels, "image_size": image_size, **config}
    return model


def _as_hw(image_size) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``, each >= 1."""
    hw = (image_size, image_size) if isinstance(image_size, numbers.Real) else tuple(image_size)
    if len(hw) != 2 or any(int(v) != v or int(v) < 1 for v in hw):
        raise ValueError(f"image_size must be S or (H, W) with sizes >= 1, got {image_size!r}")
    return int(hw[0]), int(hw[1])


# --------------------------------------------------------------------------------------------------- paper network


class PaperNet(nn.Module):
    """The DSH paper's network (Liu et al. 2016, Sec. 3.3), built on Caffe's "CIFAR-10 quick" net.

    conv 32@5x5 -> max-pool 3/2 -> conv 32@5x5 -> avg-pool 3/2 -> conv 64@5x5 -> avg-pool 3/2 -> fc 500 -> fc nbits,
    ReLU after each conv and after fc 500. As in Caffe, convs pad by 2 ("same" size) and pools round up
    (``ceil_mode``), so 32x32 -> 16 -> 8 -> 4 and 28x28 -> 14 -> 7 -> 3. The flatten size is found by a dummy
    forward, so any image size and channel count works.
    """

    def __init__(self, nbits: int, in_channels: int = 3, image_size: int | tuple[int, int] = 32,
                 batch_norm: bool = False):
        super().__init__()

        # batch_norm is not in the paper (2016, Caffe, no BN): it is an option here, off by default to stay
        # faithful; with BN after each conv and fc 500 the net tolerates larger learning rates.
        def conv(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2, bias=not batch_norm)]
            return layers + [nn.BatchNorm2d(cout)] if batch_norm else layers

        self.features = nn.Sequential(
            *conv(in_channels, 32), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(inplace=True),
            *conv(32, 32), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
            *conv(32, 64), nn.ReLU(inplace=True), nn.AvgPool2d(3, 2, ceil_mode=True),
        )  # fmt: skip
        flat = _flat_size(self.features, in_channels, image_size)
        self.fc = nn.Sequential(
            nn.Linear(flat, 500, bias=not batch_norm),
            *([nn.BatchNorm1d(500)] if batch_norm else []),
            nn.ReLU(inplace=True),
        )
        self.hash = nn.Linear(500, nbits)
        # He init (fan_in, the forward pass keeps its scale) rather than PyTorch's default, which shrinks the
        # signal layer by layer here: fc 500 features have RMS ~1-2 on standardised 28x28/32x32 inputs instead of
        # ~0.05. (The paper does not state its init; Caffe's quick net used fixed small Gaussians.)
        for m in [*self.features, *self.fc]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        init_hash_layer(self.hash)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)  # (B, 64 * h * w); a copy when x is channels_last
        return self.hash(self.fc(x))  # (B, nbits)


def _flat_size(features: nn.Module, in_channels: int, image_size: int | tuple[int, int]) -> int:
    """Features per image after ``features``, found by a dummy forward (eval mode, so BN statistics stay put)."""
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, *_as_hw(image_size)))
    features.train(was_training)
    return out[0].numel()


@register_model("paper")
def _paper(nbits: int, in_channels: int, image_size, batch_norm: bool = False) -> nn.Module:
    return PaperNet(nbits, in_channels, image_size, batch_norm=batch_norm)


@register_model("paper-bn")
def _paper_bn(nbits: int, in_channels: int, image_size) -> nn.Module:
    """The paper's network with batch norm after every conv and fc 500 (not in the paper; trains faster)."""
    return PaperNet(nbits, in_channels, image_size, batch_norm=True)


# --------------------------------------------------------------------------------------------------- small ResNet


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, stages of torchvision BasicBlocks (the first at full resolution, each later
    one halving it), global average pooling, a linear hash head. Any image size (8x8 digits to 32x32 CIFAR and up)
    and channel count, since nothing depends on the spatial size after the global pooling.
    """

    def __init__(
        self,
        nbits: int,
        in_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks: tuple[int, ...] = (2, 2, 2),
    ):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must be non-empty and of equal length, got {widths} and {blocks}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or cin != width:
                    down = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
                layers.append(BasicBlock(cin, width, stride=stride, downsample=down))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hash = nn.Linear(cin, nbits)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Not zero-initialising each block's last BN (a common trick): it would leave the block's other weights
        # without gradient on the first step.
        init_hash_layer(self.hash)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))  # (B, width, 1, 1)
        return self.hash(torch.flatten(x, 1))  # (B, nbits)


@register_model("resnet-small")
def _resnet_small(
    nbits: int,
    in_channels: int,
    image_size,
    widths: tuple[int, ...] = (16, 32, 64),
    blocks: tuple[int, ...] = (2, 2, 2),
) -> nn.Module:
    # Default: a ResNet-14 (16/32/64 channels, 2 blocks a stage, 175k parameters), ~2.2x the paper net's FLOPs
    # (159 vs 72 MFLOP per 32x32 image, forward + backward) and ~0.4x its training speed on 2 CPU cores.
    # widths=(32, 64, 128), blocks=(1, 1, 1) costs ~4x the paper net; (16, 32, 64) x (1, 1, 1) about the same.
    # image_size is not needed (global pooling); it stays in model.config for the record.
    return SmallResNet(nbits, in_channels, widths=tuple(widths), blocks=tuple(blocks))


# --------------------------------------------------------------------------------------------------- torchvision


class TorchvisionHashNet(nn.Module):
    """A torchvision ResNet (``fc`` replaced by the identity) followed by a linear hash head.

    For small images (``image_size < 64``) the ImageNet stem (7x7 stride-2 conv, then a stride-2 max-pool) would
    shrink a 32x32 image to 8x8 before the first block and to 1x1 by the last stage, throwing away most of the
    spatial detail; as is usual for CIFAR, the stem becomes a 3x3 stride-1 conv and the max-pool is dropped, so the
    last stage sees 4x4. That conv has no counterpart in ImageNet weights and starts from random init.
    For ``in_channels != 3`` the stem conv takes ``in_channels`` inputs; loaded RGB weights are adapted as in timm
    (summed for 1 channel, tiled and rescaled otherwise).
    """

    def __init__(self, arch: str, nbits: int, in_channels: int = 3, image_size: int | tuple[int, int] = 224,
                 weights_path=None):
        super().__init__()
        self.backbone = getattr(torchvision.models, arch)(weights=None)
        self.small_input = min(_as_hw(image_size)) < 64
        if self.small_input:
            self.backbone.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.backbone.maxpool = nn.Identity()
        elif in_channels != 3:
            self.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if self.small_input or in_channels != 3:
            nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.hash = nn.Linear(features, nbits)
        init_hash_layer(self.hash)
        if weights_path is not None:
            _load_backbone(self.backbone, arch, weights_path, skip_conv1=self.small_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hash(self.backbone(x))  # (B, features) -> (B, nbits)


def _load_backbone(backbone: nn.Module, arch: str, weights_path, skip_conv1: bool) -> None:
    """Load a torchvision ``arch`` state_dict file into ``backbone``; ``fc.*`` is ignored. Any problem -> one-line
    ValueError naming the file. Never downloads."""
    path = Path(weights_path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, non-tensor objects: all "not a state_dict we can read"
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(f"cannot read weights file {path}: {type(e).__name__}: {first_line}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = backbone.state_dict()
    if skip_conv1:
        state.pop("conv1.weight", None)
    elif "conv1.weight" in state and state["conv1.weight"].shape[1] != own["conv1.weight"].shape[1]:
        state["conv1.weight"] = _adapt_input_conv(state["conv1.weight"], own["conv1.weight"].shape[1])
    missing = [k for k in own if k not in state and not (skip_conv1 and k == "conv1.weight")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        problems = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
        raise ValueError(f"weights file {path} does not match a torchvision {arch}: {'; '.join(problems)}")
    backbone.load_state_dict(state, strict=False)


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem weights ``[out, 3, k, k]`` -> ``[out, in_channels, k, k]`` (timm's rule): the sum over RGB for
    one channel (a grey image then gives the response of a grey RGB image), else RGB tiled and rescaled by
    ``3 / in_channels`` to keep the response scale."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


@register_model("resnet18")
def _resnet18(nbits: int, in_channels: int, image_size, weights_path=None) -> nn.Module:
    return TorchvisionHashNet("resnet18", nbits, in_channels, image_size, weights_path=weights_path)


@register_model("resnet50")
def _resnet50(nbits: int, in_channels: int, image_size, weights_path=None) -> nn.Module:
    return TorchvisionHashNet("resnet50", nbits, in_channels, image_size, weights_path=weights_path)


# --------------------------------------------------------------------------------------------------- airbench


class AirbenchNet(nn.Module):
    """A fast CIFAR-10 network in the manner of Keller Jordan's airbench ("94% on CIFAR-10 in 3.29 seconds"),
    written here from its published description, with a linear hash head:

    - ``whiten``: a 2x2 convolution (no padding) with ``8 * in_channels`` filters, then GELU. Its filters are meant
      to be set from the training images by :meth:`init_whitening`: the eigenvectors of the covariance of the
      images' 2x2 patches, each scaled by ``1 / sqrt(eigenvalue + eps)`` (so the layer whitens patches), once with
      each sign (GELU then passes both halves of every direction). Until then they are random (Kaiming).
    - three groups, each ``conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU`` of ``widths`` channels
      (default 64/256/256, the recipe's; ``(48, 192, 192)`` costs ~0.56x the FLOPs);
    - global max pooling and a linear hash head (``nbits`` outputs).

    Any channel count and any size of at least 2x2: a pool whose input is already 1 pixel along a side does not
    pool that side (8x8 digits: 7 -> 3 -> 1 -> 1), so nothing vanishes. 32x32 CIFAR: 31 -> 15 -> 7 -> 3, as in the
    recipe. :meth:`optimizer_groups` gives the recipe's parameter groups (batch-norm and whitening biases at a
    higher learning rate, whitening filters frozen).
    """

    def __init__(self, nbits: int, in_channels: int = 3, image_size: int | tuple[int, int] = 32,
                 widths: tuple[int, ...] = (64, 256, 256)):
        super().__init__()
        h, w = _as_hw(image_size)
        if h < 2 or w < 2:
            raise InputError(f"airbench needs images of at least 2x2 pixels, got {h}x{w}")
        widths = tuple(int(v) for v in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise InputError(f"airbench widths must be three channel counts >= 1, got {widths!r}")
        self.whiten = nn.Conv2d(in_channels, 8 * in_channels, 2, padding=0, bias=True)
        self.act = nn.GELU()
        h, w = h - 1, w - 1
        groups: list[nn.Module] = []
        cin = self.whiten.out_channels
        for width in widths:
            kernel = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
            pool = nn.MaxPool2d(kernel) if kernel != (1, 1) else nn.Identity()
            h, w = h // kernel[0], w // kernel[1]
            groups.append(nn.Sequential(
                nn.Conv2d(cin, width, 3, padding=1, bias=False), pool, nn.BatchNorm2d(width), nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
            ))  # fmt: skip
            cin = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.hash = nn.Linear(cin, nbits)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(self.whiten.bias)
        init_hash_layer(self.hash)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.hash(torch.flatten(self.pool(x), 1))  # (B, nbits)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, normalizer=None, max_images: int = 5000, eps: float = 5e-4,
                       seed: int = 0) -> None:
        """Set the 2x2 whitening filters from the images' patch statistics.

        ``images``: ``uint8[N, C, H, W]`` training images (at most ``max_images`` of them, drawn with ``seed``,
        are used); ``normalizer``: the :class:`dsh.models.Normalizer` the model's inputs go through (``None``:
        images already float and normalised). The patch covariance (``4C x 4C``) is eigendecomposed; filter ``k``
        is eigenvector ``k`` over ``sqrt(eigenvalue_k + eps)`` and filter ``4C + k`` its negative; the biases
        centre the mean patch at 0.
        """
        if images.ndim != 4 or images.shape[1] != self.whiten.in_channels or images.shape[0] == 0:
            raise InputError(f"init_whitening needs [N, {self.whiten.in_channels}, H, W] images, got "
                             f"{list(images.shape)}")
        if images.shape[0] > max_images:
            g = torch.Generator().manual_seed(seed)
            images = images[torch.randperm(images.shape[0], generator=g)[:max_images].sort().values]
        x = normalizer(images.cpu()) if normalizer is not None else images.cpu().float()
        c = x.shape[1]
        # every 2x2 patch as a row of 4C values, in the order of the conv weight's (C, 2, 2) flattening
        patches = F.unfold(x.double(), kernel_size=2).transpose(1, 2).reshape(-1, 4 * c)
        mean = patches.mean(0)
        cov = torch.cov(patches.T)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None])  # (4C, 4C)
        weight = torch.cat([filters, -filters]).reshape(8 * c, c, 2, 2)
        dev, dtype = self.whiten.weight.device, self.whiten.weight.dtype
        # copy_ keeps the parameter's own memory format (channels_last stays channels_last)
        self.whiten.weight.copy_(weight.to(dev, dtype))
        self.whiten.bias.copy_((-weight.reshape(8 * c, -1) @ mean).to(dev, dtype))

    def optimizer_groups(self, lr: float, weight_decay: float, bias_lr_scale: float = 8.0,
                         train_whitening: bool = False) -> list[dict]:
        """Parameter groups for a torch optimiser, as the recipe trains: conv and head weights at ``lr`` with
        ``weight_decay``; batch-norm biases and the whitening biases at ``bias_lr_scale * lr`` without decay;
        batch-norm weights and the head bias at ``lr`` without decay; the whitening filters frozen (``lr`` 0, since
        they come from :meth:`init_whitening`) unless ``train_whitening``. Every parameter is in exactly one
        group; each group has ``params``, ``lr``, ``weight_decay`` and a ``name``."""
        bn_bias, no_decay, decay = [], [], []
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                bn_bias.append(m.bias)
                no_decay.append(m.weight)
        decay += [m.weight for m in self.groups.modules() if isinstance(m, nn.Conv2d)] + [self.hash.weight]
        no_decay.append(self.hash.bias)
        groups = [
            {"name": "weights", "params": decay, "lr": lr, "weight_decay": weight_decay},
            {"name": "norm_weights", "params": no_decay, "lr": lr, "weight_decay": 0.0},
            {"name": "biases", "params": bn_bias + [self.whiten.bias], "lr": bias_lr_scale * lr, "weight_decay": 0.0},
            {"name": "whitening", "params": [self.whiten.weight], "lr": lr if train_whitening else 0.0,
             "weight_decay": 0.0},
        ]
        return groups


@register_model("airbench")
def _airbench(nbits: int, in_channels: int, image_size, widths: tuple[int, ...] = (64, 256, 256),
              width: int | None = None) -> nn.Module:
    """``width``: the first group's channels, the other two get 4x (``width=48``: 48/192/192); wins over
    ``widths``."""
    if width is not None:
        widths = (int(width), 4 * int(width), 4 * int(width))
    return AirbenchNet(nbits, in_channels, image_size, widths=tuple(widths))


# ------------------------------------------------------------------------------------- ImageNet-pretrained backbones


def _pretrained(name: str):
    """The builder of backbone ``name`` (dsh.models.pretrained; timm is imported when one is built)."""

    def builder(nbits: int, in_channels: int, image_size, weights: str | None = None, input_size: int | None = None,
                tune: str = "all", backbone_lr_scale: float = 0.1, head_hidden: int = 1024,
                train_bn: bool = False) -> nn.Module:
        from .pretrained import build

        return build(name, nbits, in_channels, image_size, weights=weights, input_size=input_size, tune=tune,
                     backbone_lr_scale=backbone_lr_scale, head_hidden=head_hidden, train_bn=train_bn)

    return builder


for _name in BACKBONES:
    register_model(_name)(_pretrained(_name))


@register_model("timm")
def _timm_any(nbits: int, in_channels: int, image_size, arch: str = DEFAULT_TIMM_ARCH, weights: str | None = None,
              input_size: int | None = None, tune: str = "all", backbone_lr_scale: float = 0.1,
              head_hidden: int = 1024, train_bn: bool = False) -> nn.Module:
    """Any timm architecture by name (``arch``, default ``efficientnet_lite0``), with a local weights file, timm's
    own download (``weights="timm"``, for users with a network) or, for the EfficientNet-Lites, the packaged
    ImageNet weights (``weights="imagenet"``)."""
    from .pretrained import build

    return build("timm", nbits, in_channels, image_size, arch=arch, weights=weights, input_size=input_size,
                 tune=tune, backbone_lr_scale=backbone_lr_scale, head_hidden=head_hidden, train_bn=train_bn)
