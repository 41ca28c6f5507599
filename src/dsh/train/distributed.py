"""Training on several processes: torchrun's environment -> a process group, the global batch of the pair loss,
and each rank's share of the batches (the one-machine launcher is :mod:`dsh.train.launch`).

Launch with ``torchrun --nproc-per-node N -m dsh train ...`` (one node, or many by rendezvous) or, on one machine,
``dsh train --nproc N ...``. One process per GPU with ``nccl``; ``gloo`` on CPUs.

- :func:`setup` reads torchrun's ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` and joins the process group; a plain
  process (no ``RANK``) is a world of one and nothing here does anything.
- :func:`global_batch` gathers every process's ``u`` (with its gradient) and labels, so that each process computes
  the DSH loss over all pairs of the *global* batch, as one process would on the joined batch
  (:class:`GlobalBatchLoss`: a loss that does so).
- :class:`ShardedBatches`: every rank draws the same seeded global batches (and their augmentation) and keeps
  its rows, so the global batch is the one a single process would use, for any world size.

Gradients: :func:`global_batch` gathers with an all_gather whose backward is a reduce-scatter that *sums*, over
the processes, the gradient each one computes for a rank's rows. Every process computes the same global loss
``L``, so rank r receives ``N * dL/du_r`` and its parameters ``N * dL/du_r * du_r/dtheta``; DistributedDataParallel
then averages over the N processes, which leaves ``sum_r dL/du_r * du_r/dtheta = dL/dtheta``: exactly one
process's gradient on the joined batch. (Without DDP's averaging the gradients would be N times too large.)

Batch norm normalises each process's own rows (no SyncBatchNorm), so batch-norm models differ a little from one
process on the joined batch; models without it (``paper``, the default) see the same batches and the same loss.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError, UserError

__all__ = ["Context", "setup", "teardown", "global_batch", "GlobalBatchLoss", "ShardedBatches", "share_cores",
           "check_batch_size"]

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``ddp`` (part of a process group), its ranks, the world size and its device."""

    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # this process created the group (and destroys it in teardown)

    @property
    def master(self) -> bool:
        """Rank 0: the one process that validates, writes checkpoints, TensorBoard and log lines."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier(**({"device_ids": [self.device.index]} if self.device.type == "cuda" else {}))

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; for small things and checkpoint states)."""
        if not self.ddp:
            return obj
        box = [obj if self.master else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_master(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone, its result on every rank; a :class:`UserError` it raises is raised on every
        rank (so all of them stop with the same one-line message instead of waiting for rank 0)."""
        if not self.ddp:
            return fn()
        result: tuple[Any, UserError | None] = (None, None)
        if self.master:
            try:
                result = (fn(), None)
            except UserError as e:
                result = (None, e)
        value, error = self.broadcast(result)
        if error is not None:
            raise error
        return value

    @contextmanager
    def local_master_first(self) -> Iterator[None]:
        """The block runs on each machine's local rank 0 first, then on the others (downloads, dataset caches)."""
        if self.ddp and self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.ddp and self.local_rank == 0:
                self.barrier()


def setup(device: torch.device) -> Context:
    """Join the process group torchrun describes (``RANK`` set), or none: then ``Context(device=device)``.

    Under torchrun: ``nccl`` and ``cuda:LOCAL_RANK`` where ``device`` is a GPU, else ``gloo`` on the CPU. A process
    group the caller already made is used as it is (and left to the caller to destroy).
    """
    ddp = int(os.environ.get("RANK", -1)) != -1 or (dist.is_available() and dist.is_initialized())
    if not ddp:
        return Context(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.device(device).type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    return Context(ddp=True, rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                   device=device, backend=dist.get_backend(), owns_group=owns)


def teardown(ctx: Context) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def global_batch(u: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``u`` and ``labels`` joined in rank order (``u`` keeps its gradient to every rank's rows);
    outside a process group, or in a world of one, ``u`` and ``labels`` themselves.

    Every process must pass tensors of the same shape. For DDP: see the module's note on gradients.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return u, labels
    # an all_gather whose backward reaches the other ranks (a reduce-scatter that sums); a plain dist.all_gather
    # would cut the gradient to every row but this process's own
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd, wait_tensor
    except ImportError:  # older torch: the public (now deprecated) one
        import torch.distributed.nn.functional as dist_nn

        all_u = torch.cat(dist_nn.all_gather(u.contiguous()))
    else:  # wait_tensor: a plain tensor, not an AsyncCollectiveTensor
        all_u = wait_tensor(all_gather_single_autograd(u.contiguous(), 0, dist.group.WORLD))
    all_labels = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(all_labels, labels.contiguous())  # labels need no gradient
    return all_u, torch.cat(all_labels)


class GlobalBatchLoss:
    """``loss_fn`` over the global batch: ``(u, labels)`` of this process's rows are joined with every other
    process's (:func:`global_batch`) before ``loss_fn`` sees them, so each process computes the loss of all pairs
    of the global batch. ``u`` ``float32[B / N, nbits]`` -> ``loss_fn``'s result on ``float32[B, nbits]``."""

    def __init__(self, loss_fn: Callable) -> None:
        self.loss_fn = loss_fn

    def __call__(self, u: torch.Tensor, labels: torch.Tensor):
        return self.loss_fn(*global_batch(u, labels))


def check_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the world size {world_size} (the "
                          f"batch is the global one, shared equally by the processes)")


class ShardedBatches:
    """This rank's share of a :class:`dsh.data.BatchLoader`'s batches: rows ``rank, rank + N, rank + 2N, ...`` of
    each global batch (N the world size), with ``len`` the loader's.

    Every rank draws, from a generator seeded alike, the same order of images and the same augmentation for the
    *whole* global batch, and keeps its rows: the generators stay in step (one saved state resumes every rank),
    and the global batch holds the same images, augmented the same way, as one process's batch, whatever N.
    """

    def __init__(self, loader, rank: int, world_size: int) -> None:
        batch = loader.p * loader.k if loader.sampler == "balanced" else loader.batch_size
        if batch % world_size:
            if batch == loader.batch_size:
                check_batch_size(batch, world_size)
            raise ConfigError(f"the balanced sampler's batch of {loader.p} classes x {loader.k} images = {batch} "
                              f"(from --batch-size {loader.batch_size}) is not divisible by the world size "
                              f"{world_size}; choose another --batch-size")
        if not loader.drop_last and loader.sampler != "balanced":
            raise ValueError("sharded batches need drop_last=True (every rank a batch of the same size)")
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader, mine = self.loader, slice(self.rank, None, self.world_size)
        images, labels = loader.data.images, loader.data.labels
        for idx in loader.batch_indices():
            # drawn for the whole global batch, as BatchLoader draws it, then this rank's rows kept
            draws = loader.augment.sample(idx.shape[0], loader.generator) if loader.augment is not None else None
            idx = idx[mine]
            x = images[idx].to(loader.device, non_blocking=True)
            if draws is not None:
                x = loader.augment.apply(x, *(d[mine] for d in draws))
            if loader.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield loader.normalizer(x), labels[idx].to(loader.device, non_blocking=True)


def share_cores() -> None:
    """Keep numba's threads (the validation mAP) to torch's per-process count, and torch's count as it is.

    Processes on one machine share its cores. numba's threads would take every core, and starting them can reset
    the OpenMP thread count torch shares with them to all cores as well: on 2 cores the training steps of 2
    processes were 10-30x slower after rank 0's first validation. They are started here, at this process's share.
    """
    from ..utils.threads import set_threads

    set_threads(torch.get_num_threads())  # numba's threads started at torch's count, torch's count set again
