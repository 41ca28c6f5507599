"""The DSH loss (Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016, Eq. 4-5).

https://openaccess.thecvf.com/content_cvpr_2016/papers/Liu_Deep_Supervised_Hashing_CVPR_2016_paper.pdf

This module does not import the rest of :mod:`dsh`'s training side (models, data, train).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

__all__ = ["DSHLoss", "LossTerms", "similarity_matrix"]


class LossTerms(NamedTuple):
    """Scalar tensors; ``total = similar + dissimilar + quantization`` is the one to backpropagate."""

    total: torch.Tensor
    similar: torch.Tensor  # sum over similar pairs of 0.5 * d, divided by the number of ALL pairs
    dissimilar: torch.Tensor  # sum over dissimilar pairs of 0.5 * max(m - d, 0), divided by the number of ALL pairs
    quantization: torch.Tensor  # alpha * mean_i sum_k | |u_ik| - 1 |


def similarity_matrix(labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
    """``bool[B, R]``: ``S[i, j]`` is True iff image i of ``labels`` and image j of ``ref_labels`` are similar.

    - single-label, ``int[B]`` class ids: similar iff the class ids are equal;
    - multi-label, multi-hot ``[B, C]`` rows of 0/1 (any dtype): similar iff they share at least one label
      (so a row with no label is dissimilar to everything, itself included).
    """
    if labels.ndim != ref_labels.ndim or labels.ndim not in (1, 2):
        raise ValueError(
            f"labels must both be class ids [B] or both multi-hot [B, C], got shapes "
            f"{tuple(labels.shape)} and {tuple(ref_labels.shape)}"
        )
    if labels.ndim == 1:
        if labels.is_floating_point() or ref_labels.is_floating_point():
            raise ValueError(f"class-id labels must be integers, got {labels.dtype} and {ref_labels.dtype}")
        return labels[:, None] == ref_labels[None, :]
    if labels.shape[1] != ref_labels.shape[1]:
        raise ValueError(f"multi-hot labels have {labels.shape[1]} and {ref_labels.shape[1]} classes")
    for y in (labels, ref_labels):
        if ((y != 0) & (y != 1)).any():
            raise ValueError("2-D labels are read as multi-hot rows and must hold only 0 and 1 (class ids are 1-D)")
    return (labels.float() @ ref_labels.float().T) > 0


class DSHLoss(nn.Module):
    """The DSH loss: a contrastive loss on squared Euclidean distances plus a pull of every output towards +-1.

    With ``d_ij = ||u_i - u_j||^2`` and ``S`` the similarity matrix (:func:`similarity_matrix`: equal class ids, or
    multi-hot rows sharing a label)::

        pair(i, j) = 0.5 * d_ij                   if S_ij (similar)
                     0.5 * max(m - d_ij, 0)       otherwise (dissimilar)
        total      = mean over pairs (i, j) of pair(i, j)  +  alpha * mean_i sum_k | |u_ik| - 1 |

    *Averaged over pairs*: the two pair terms. Without ``ref_u`` the pairs are all i < j of the batch (the diagonal
    i = j is excluded, so ``B (B - 1) / 2`` pairs; B = 1 has none and the pair terms are 0); with ``ref_u`` they are
    all ``B * R`` pairs (i in ``u``, j in ``ref_u``). ``similar`` and ``dissimilar`` are each divided by the number
    of all pairs, so the three returned terms add up to ``total``.
    *Averaged over images*: the quantization term, over the rows of ``u`` only (never ``ref_u``), summed over bits.

    ``margin`` defaults to ``2 * nbits`` as in the paper. Note on ``alpha``: the paper adds the regularizer of
    *both* images to every pair, ``alpha * (r_i + r_j)``; averaged over the pairs of a batch that is
    ``2 * alpha * mean_i r_i``. Here it is ``alpha * mean_i r_i``, so this ``alpha`` is twice the paper's for the
    same weight (the paper uses alpha = 0.01).

    ``forward(u, labels, ref_u=None, ref_labels=None)``: ``u`` ``[B, nbits]`` (any float dtype; the loss is
    computed in float32 with autocast off, in float64 for float64 inputs), ``labels`` ``int64[B]`` or multi-hot
    ``[B, C]``; ``ref_u`` ``[R, nbits]`` and ``ref_labels`` (given together) to compare ``u`` against another set,
    e.g. a memory bank.
    """

    def __init__(self, nbits: int, margin: float | None = None, alpha: float = 0.01):
        super().__init__()
        if int(nbits) < 1:
            raise ValueError(f"nbits must be >= 1, got {nbits}")
        self.nbits = int(nbits)
        self.margin = float(2 * self.nbits if margin is None else margin)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"nbits={self.nbits}, margin={self.margin}, alpha={self.alpha}"

    def forward(
        self,
        u: torch.Tensor,
        labels: torch.Tensor,
        ref_u: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> LossTerms:
        if (ref_u is None) != (ref_labels is None):
            raise ValueError("give ref_u and ref_labels together, or neither")
        self_pairs = ref_u is None
        if self_pairs:
            ref_u, ref_labels = u, labels
        for name, x in (("u", u), ("ref_u", ref_u)):
            if x.ndim != 2 or x.shape[1] != self.nbits:
                raise ValueError(f"{name} must have shape [n, {self.nbits}], got {tuple(x.shape)}")
        for name, x, y in (("labels", labels, u), ("ref_labels", ref_labels, ref_u)):
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{name} has {x.shape[0]} rows for {y.shape[0]} outputs")

        # float32 even under bf16/fp16 autocast (float64 stays float64): the Gram trick below subtracts numbers
        # of size ~nbits.
        with torch.autocast(device_type=u.device.type, enabled=False):
            dtype = torch.promote_types(torch.promote_types(u.dtype, ref_u.dtype), torch.float32)
            u32, ref32 = u.to(dtype), ref_u.to(dtype)
            labels, ref_labels = labels.to(u.device), ref_labels.to(u.device)
            similar = similarity_matrix(labels, ref_labels)  # (B, R)

            # d_ij = |u_i|^2 + |v_j|^2 - 2 u_i.v_j, clamped at 0 against rounding; no sqrt, so the gradient is
            # finite (and the pair's gradient exactly 0 on the similar side) when u_i == v_j.
            sq = u32.pow(2).sum(1)
            ref_sq = sq if self_pairs else ref32.pow(2).sum(1)
            dist = (sq[:, None] + ref_sq[None, :] - 2.0 * (u32 @ ref32.T)).clamp_min(0.0)  # (B, R)

            weight = torch.ones_like(dist)  # 1 for a pair that counts, 0 for the diagonal when comparing u to itself
            if self_pairs:
                weight.fill_diagonal_(0.0)  # the mean over i != j equals the mean over i < j (d and S are symmetric)
            n_pairs = weight.sum().clamp_min(1.0)
            w_sim = weight * similar  # masks by multiplication: no data-dependent shapes, no host sync
            w_dis = weight - w_sim

            sim_term = 0.5 * (dist * w_sim).sum() / n_pairs
            dis_term = 0.5 * ((self.margin - dist).clamp_min(0.0) * w_dis).sum() / n_pairs
            quant = self.alpha * (u32.abs() - 1.0).abs().sum(1).mean()
        return LossTerms(sim_term + dis_term + quant, sim_term, dis_term, quant)
