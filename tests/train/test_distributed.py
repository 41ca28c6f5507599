"""Distributed training on 2 CPU processes (gloo, loopback only): the global-batch loss and its gradients, the
sharded batches, a 2-process run whose checkpoint a single process uses, its resume, and the batch-size check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dsh.cli import main
from dsh.config import TrainConfig
from dsh.errors import ConfigError
from dsh.train.distributed import GlobalBatchLoss, ShardedBatches, check_batch_size, global_batch
from dsh.train.launch import free_port, loopback_interface
from dsh.train.loss import DSHLoss

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
# the settings of the 2-process runs below, as flags and as a TrainConfig (threads=1: as torchrun's workers)
RUN_FLAGS = ["--dataset", "digits", "--bits", "8", "--epochs", "2", "--batch-size", "64", "--threads", "1",
             "--no-tensorboard"]
RUN_CFG = TrainConfig(dataset="digits", nbits=8, epochs=2, batch_size=64, threads=1, tensorboard=False)


def loopback_env(port: int, rank: int | None = None) -> None:
    """This process joins a gloo group on 127.0.0.1 only."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME=loopback_interface() or "lo")
    if rank is not None:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))


def spawn(fn, *args, timeout: float = 120.0) -> None:
    """``fn(rank, *args)`` in WORLD fresh processes; fails (and ends them) past ``timeout`` seconds."""
    import torch.multiprocessing as mp

    procs = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__} did not finish within {timeout} s")


def run_cli(args: list[str], timeout: float = 180.0) -> subprocess.CompletedProcess:
    """``python -m dsh ARGS`` in a process group of its own, ended past ``timeout`` seconds: SIGTERM first, on
    which torchrun's launcher ends its workers (they run in sessions of their own), then SIGKILL."""
    p = subprocess.Popen([sys.executable, "-m", "dsh", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        pytest.fail(f"dsh {' '.join(args)} did not finish within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# ---------------------------------------------------------------------------------------------------------------
# the loss over the global batch, and its gradients through DDP


NBITS, PER_RANK = 6, 8


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, NBITS)).double()


def joined_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * PER_RANK, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (WORLD * PER_RANK,), generator=g)
    return x, y


def margin_with_both_sides() -> float:
    """A margin with dissimilar pairs on both sides of the hinge for the joined batch, so every branch counts."""
    x, y = joined_batch()
    u = small_model()(x).detach()
    d = torch.cdist(u, u).pow(2)
    dissimilar = d[(y[:, None] != y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)]
    margin = float(dissimilar.median())
    assert (dissimilar < margin).any() and (dissimilar > margin).any() and (y[:, None] == y[None, :]).sum() > len(y)
    return margin


def _worker(rank: int, port: int, margin: float, out: str) -> None:
    """One of the 2 processes: the global-batch loss and its gradients through DDP; train() with a batch the world
    does not divide; a 2-epoch digits run, and the same run stopped after its first epoch (resumed by a test)."""
    loopback_env(port, rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # from torchrun's variables; train() below uses this group
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from dsh.train.loop import train

        model = DDP(small_model())
        x, y = joined_batch()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)  # rank r holds rows r*8 .. r*8+7 of the joined batch
        u_mine = model(x[mine])
        u, labels = global_batch(u_mine, y[mine])
        terms = DSHLoss(NBITS, margin=margin, alpha=0.1)(u, labels)
        terms.total.backward()
        # the training loop's form: the loss itself gathers the global batch
        wrapped = GlobalBatchLoss(DSHLoss(NBITS, margin=margin, alpha=0.1))(u_mine.detach(), y[mine])
        result = {"terms": [t.detach() for t in terms], "u": u.detach(), "labels": labels,
                  "grads": {k: p.grad for k, p in model.module.named_parameters()},
                  "wrapped_terms": [t.detach() for t in wrapped]}
        try:
            train(TrainConfig(dataset="digits", batch_size=63, tensorboard=False), Path(out) / "odd",
                  progress=False, log=lambda m: None)
        except ConfigError as e:
            result["batch_error"] = str(e)
        train(RUN_CFG, Path(out) / "whole", progress=False, log=lambda m: None)
        train(RUN_CFG, Path(out) / "stopped", progress=False, log=lambda m: None, stop_after=1)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    """What the 2 processes of :func:`_worker` left: ``rank0.pt``, ``rank1.pt``, the runs ``whole/`` and
    ``stopped/``."""
    out = tmp_path_factory.mktemp("spawned")
    spawn(_worker, free_port(), margin_with_both_sides(), str(out))
    return out


def test_global_batch_loss_and_gradients_equal_one_process_on_the_joined_batch(spawned):
    x, y = joined_batch()
    model = small_model()
    u = model(x)
    ref = DSHLoss(NBITS, margin=margin_with_both_sides(), alpha=0.1)(u, y)
    assert ref.total.dtype == torch.float64
    ref.total.backward()
    for rank in range(WORLD):
        got = torch.load(spawned / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["u"], u.detach(), rtol=0, atol=1e-12)  # the joined batch, in rank order
        assert torch.equal(got["labels"], y)
        for name, a, b in zip(ref._fields, got["terms"], [t.detach() for t in ref]):
            assert abs(float(a) - float(b)) <= 1e-6, (rank, name, float(a), float(b))
        assert len(got["wrapped_terms"]) == len(ref)
        for name, a, b in zip(ref._fields, got["wrapped_terms"], got["terms"]):
            assert float(a) == float(b), (rank, name, float(a), float(b))
        for name, p in model.named_parameters():  # after DDP's averaging
            g = got["grads"][name]
            assert g.dtype == torch.float64 and p.grad.abs().max() > 0
            assert (g - p.grad).abs().max() <= 1e-6, (rank, name, float((g - p.grad).abs().max()))


def test_global_batch_is_the_batch_itself_in_one_process():
    u, y = torch.randn(4, 3, requires_grad=True), torch.arange(4)
    gu, gy = global_batch(u, y)
    assert gu is u and gy is y


# ---------------------------------------------------------------------------------------------------------------
# the data: each rank's rows of the same seeded global batches


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_ranks_rows_make_up_the_one_process_batches(sampler):
    from dsh.data import BatchLoader, default_augment, load_split
    from dsh.models import Normalizer

    data = load_split("digits", "train")
    kw = dict(batch_size=40, shuffle=True, drop_last=True, augment=default_augment("digits"), sampler=sampler,
              normalizer=Normalizer.fit(data.images))
    one = BatchLoader(data, generator=torch.Generator().manual_seed(5), **kw)
    shards = [ShardedBatches(BatchLoader(data, generator=torch.Generator().manual_seed(5), **kw), r, WORLD)
              for r in range(WORLD)]
    assert all(len(s) == len(one) for s in shards)
    for _ in range(2):  # two epochs: the generators stay in step
        n = 0
        for (x, y), *parts in zip(one, *shards):
            assert all(px.shape[0] == x.shape[0] // WORLD for px, _ in parts)
            for r, (px, py) in enumerate(parts):
                assert torch.equal(px, x[r::WORLD]) and torch.equal(py, y[r::WORLD])
            n += 1
        assert n == len(one)
    assert all(torch.equal(s.loader.generator.get_state(), one.generator.get_state()) for s in shards)


def test_a_batch_the_world_size_does_not_divide_is_one_line(spawned, tmp_path, capsys):
    # under torchrun: every rank stops with the same one-line error
    for rank in range(WORLD):
        err = torch.load(spawned / f"rank{rank}.pt", weights_only=True)["batch_error"]
        assert "--batch-size 63" in err and "world size 2" in err and "\n" not in err
    with pytest.raises(ConfigError, match=r"--batch-size 64 is not divisible by the world size 3"):
        check_batch_size(64, 3)
    check_batch_size(64, 4)
    # before anything is launched
    assert main(["train", "--nproc", "3", "--dataset", "digits", "--batch-size", "64", "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsh: error:") and len(err.splitlines()) == 1, err
    assert "--batch-size 64" in err and "world size 3" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------------------
# 2-process training runs


def test_nproc_launches_torchrun_on_loopback_with_the_resolved_settings(tmp_path, monkeypatch):
    import torch.distributed.run as torchrun

    seen = {}

    def fake_run(args):  # what torchrun's launcher would start, and the workers' environment
        seen["args"] = args
        seen["env"] = {k: os.environ.get(k) for k in ("MASTER_ADDR", "GLOO_SOCKET_IFNAME")}
        config = args.training_script_args[args.training_script_args.index("--config") + 1]
        seen["config"] = TrainConfig.from_dict(json.loads(Path(config).read_text()))

    monkeypatch.setattr(torchrun, "run", fake_run)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    before = os.environ.get("MASTER_ADDR")
    assert main(["train", "--nproc", "2", *RUN_FLAGS, "--out", str(tmp_path / "r")]) == 0
    args = seen["args"]
    assert (args.nproc_per_node, args.nnodes, args.master_addr, args.module, args.training_script) == (
        "2", "1", "127.0.0.1", True, "dsh")
    assert args.training_script_args[:3] == ["train", "--out", str(tmp_path / "r")]
    assert seen["config"] == RUN_CFG
    assert seen["env"] == {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": loopback_interface()}
    assert os.environ.get("MASTER_ADDR") == before and "GLOO_SOCKET_IFNAME" not in os.environ  # restored
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "none"), "--resume"]) == 2  # checked first


@pytest.fixture(scope="module")
def resumed(spawned) -> Path:
    """``dsh train --resume --nproc 2`` of the run the spawned processes stopped after its first epoch."""
    run = spawned / "stopped"
    first = torch.load(run / "last.pt", weights_only=True)
    assert first["epoch"] == 0 and len(first["history"]) == 1
    done = run_cli(["train", "--out", str(run), "--resume", "--nproc", str(WORLD)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best epoch") == 1, done.stdout  # rank 0 alone reports and logs
    assert "2 processes (gloo)" in done.stderr and done.stderr.count("epoch 2/2:") == 1, done.stderr[-3000:]
    assert done.stderr.count("resuming") == 1, done.stderr[-3000:]
    return run


def test_resume_of_an_interrupted_two_process_run(spawned, resumed):
    final = torch.load(resumed / "last.pt", weights_only=True)
    assert final["epoch"] == 1 and [r["epoch"] for r in final["history"]] == [1, 2]
    assert final["images_seen"] == 2 * 20 * 64  # the global batches: 20 steps of 64 images per epoch
    # every rank restored the same state: the resumed run ends where the uninterrupted one did
    whole = torch.load(spawned / "whole" / "last.pt", weights_only=True)
    assert [r["loss_total"] for r in whole["history"]] == [r["loss_total"] for r in final["history"]]
    for k, v in whole["state_dict"].items():
        assert torch.equal(v, final["state_dict"][k]), f"resumed 2-process run differs at {k}"


def test_two_process_runs_give_checkpoints_one_process_loads_and_encodes(spawned, resumed):
    from dsh.data import load_split
    from dsh.models.checkpoint import load_model
    from dsh.runtime.encoder import Encoder

    images = load_split("digits", "test").images[:50].numpy()
    for run in (spawned / "whole", resumed):
        ckpt = torch.load(run / "best.pt", weights_only=True)
        assert ckpt["config"]["batch_size"] == 64 and ckpt["best_epoch"] >= 1
        assert not any(k.startswith("module.") for k in ckpt["state_dict"])
        loaded = load_model(run)
        assert loaded.nbits == 8 and loaded.model.state_dict().keys() == ckpt["state_dict"].keys()
        u, codes = Encoder.from_run(run, backend="torch").encode(images)
        assert u.shape == (50, 8) and codes.shape == (50, 1) and bool((abs(u) < 1e6).all())
