"""Pieces of the training loop that can be checked without training."""

import numpy as np
import torch
from torch import nn

from dsh.config import TrainConfig
from dsh.models import Normalizer
from dsh.train.loop import validation_map
from dsh.train.optim import make_scheduler


class CodeOfClass(nn.Module):
    """u = a fixed +-1 code per class, the class read back from the pixel value (20 * class)."""

    def __init__(self, n_classes: int, nbits: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.where(torch.rand(n_classes, nbits, generator=g) < 0.5, -1.0, 1.0)
        self.table[:, 0] = torch.arange(n_classes) % 2 * 2 - 1.0  # distinct rows below, checked in the test
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        cls = torch.round(x[:, 0, 0, 0] * 255 / 20).long()
        return self.table[cls] * self.scale


def test_validation_map_on_class_ordered_split():
    # an image folder is stored class by class: the validation halves must still share classes
    labels = torch.arange(10).repeat_interleave(30)
    images = (labels * 20).to(torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4).contiguous()
    model = CodeOfClass(10, 16)
    assert len({tuple(r.tolist()) for r in model.table}) == 10
    score, u = validation_map(model, images, labels, Normalizer.identity(1), "cpu", channels_last=False)
    assert u.shape == (300, 16) and u.dtype == np.float32
    assert score == 1.0  # every class has its own code: perfect retrieval, never 0 for lack of shared classes


def test_schedules_reach_the_peak_and_end_low():
    model = nn.Linear(2, 2)
    for schedule in ("onecycle", "cosine"):
        cfg = TrainConfig(schedule=schedule, lr=0.1, warmup_fraction=0.2)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        sched = make_scheduler(cfg, opt, total_steps=100)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert abs(max(lrs) - 0.1) < 1e-3, schedule
        assert lrs[-1] < 0.01 and lrs[0] < 0.05, schedule
