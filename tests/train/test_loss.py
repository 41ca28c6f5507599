"""DSHLoss against an explicit Python loop over pairs, on hand-placed points where every case occurs."""

from __future__ import annotations

import pytest
import torch

from dsh.train.loss import DSHLoss, LossTerms, similarity_matrix

# Five hand-placed outputs (nbits = 4, margin 2 * 4 = 8), squared distances include:
# 0-1: 4 (similar), 0-2: 16 (dissimilar, beyond the margin), 0-3: 4.89 (dissimilar, within the margin); none at 8.
U5 = [
    [1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 1.0, -1.0],
    [-1.0, -1.0, -1.0, -1.0],
    [0.5, -1.0, 0.2, 1.0],
    [-0.8, 1.0, -1.2, 0.6],
]
CLASS_IDS = [0, 0, 1, 1, 2]
MULTI_HOT = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]


def is_similar(a, b) -> bool:
    if a.ndim == 0:
        return int(a) == int(b)
    return any(bool(x) and bool(y) for x, y in zip(a.tolist(), b.tolist()))


def reference_pairs(u, labels, ref_u=None, ref_labels=None):
    """[(i, j, squared distance, similar)] for every pair the loss averages over, by explicit loops."""
    if ref_u is None:
        index = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u))]
        ref_u, ref_labels = u, labels
    else:
        index = [(i, j) for i in range(len(u)) for j in range(len(ref_u))]
    out = []
    for i, j in index:
        d = sum((u[i, k] - ref_u[j, k]) ** 2 for k in range(u.shape[1]))
        out.append((i, j, d, is_similar(labels[i], ref_labels[j])))
    return out


def reference_loss(u, labels, margin, alpha, ref_u=None, ref_labels=None):
    """The definition, one pair and one bit at a time (scalar torch ops, so autograd gives reference gradients)."""
    pairs = reference_pairs(u, labels, ref_u, ref_labels)
    similar = dissimilar = torch.zeros((), dtype=u.dtype)
    for _, _, d, sim in pairs:
        if sim:
            similar = similar + 0.5 * d
        else:
            dissimilar = dissimilar + 0.5 * torch.clamp(margin - d, min=0)
    n = max(len(pairs), 1)
    quant = sum(sum(abs(abs(u[i, k]) - 1) for k in range(u.shape[1])) for i in range(len(u))) / len(u)
    similar, dissimilar, quant = similar / n, dissimilar / n, alpha * quant
    return similar + dissimilar + quant, similar, dissimilar, quant


def assert_all_cases(pairs, margin):
    """The data must hold similar pairs and dissimilar pairs both within and beyond the margin, else the
    comparison could pass with a term that does nothing."""
    d = [float(p[2]) for p in pairs]
    assert any(p[3] and dd > 0 for p, dd in zip(pairs, d)), "no similar pair at a non-zero distance"
    assert any(not p[3] and dd < margin for p, dd in zip(pairs, d)), "no dissimilar pair within the margin"
    assert any(not p[3] and dd > margin for p, dd in zip(pairs, d)), "no dissimilar pair beyond the margin"
    assert all(abs(dd - margin) > 1e-3 for dd in d), "a pair sits on the hinge's kink"


def compare(u_values, labels, margin=None, alpha=0.05, ref_values=None, ref_labels=None):
    nbits = len(u_values[0])
    loss = DSHLoss(nbits, margin=margin, alpha=alpha)
    u = torch.tensor(u_values, dtype=torch.float32, requires_grad=True)
    u64 = torch.tensor(u_values, dtype=torch.float64, requires_grad=True)
    ref = ref64 = None
    if ref_values is not None:
        ref = torch.tensor(ref_values, dtype=torch.float32, requires_grad=True)
        ref64 = torch.tensor(ref_values, dtype=torch.float64, requires_grad=True)

    terms = loss(u, labels, ref, ref_labels)
    expected = reference_loss(u64, labels, loss.margin, alpha, ref64, ref_labels)
    ref_detached = None if ref64 is None else ref64.detach()
    assert_all_cases(reference_pairs(u64.detach(), labels, ref_detached, ref_labels), loss.margin)

    for got, want in zip(terms, expected):
        assert got.ndim == 0 and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    assert torch.isclose(terms.total, terms.similar + terms.dissimilar + terms.quantization)

    terms.total.backward()
    expected[0].backward()
    torch.testing.assert_close(u.grad.double(), u64.grad, rtol=1e-5, atol=1e-5)
    assert u.grad.abs().sum() > 0
    if ref is not None:
        torch.testing.assert_close(ref.grad.double(), ref64.grad, rtol=1e-5, atol=1e-5)
        assert ref.grad.abs().sum() > 0


def test_single_label_matches_pair_loop():
    compare(U5, torch.tensor(CLASS_IDS))


def test_multi_hot_matches_pair_loop():
    compare(U5, torch.tensor(MULTI_HOT, dtype=torch.uint8))
    compare(U5, torch.tensor(MULTI_HOT, dtype=torch.float32), margin=6.0, alpha=0.2)


def test_random_batch_matches_pair_loop():
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(12, 6, generator=g) * 1.5).tolist()  # spread so that some pairs pass the margin of 12
    compare(u, torch.randint(0, 3, (12,), generator=g))
    compare(u, (torch.rand(12, 4, generator=g) < 0.3).long(), margin=10.0)


def test_ref_u_matches_pair_loop():
    ref = [[0.9, 1.1, 1.0, 0.8], [-1.0, -1.0, -1.0, -1.0], [1.0, -1.0, 0.6, -1.0]]
    compare(U5, torch.tensor(CLASS_IDS), ref_values=ref, ref_labels=torch.tensor([0, 1, 2]))
    ref_hot = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    compare(U5, torch.tensor(MULTI_HOT), ref_values=ref, ref_labels=ref_hot)


def test_margin_defaults_to_twice_nbits():
    assert DSHLoss(12).margin == 24.0
    assert DSHLoss(12, margin=5).margin == 5.0
    assert DSHLoss(64).alpha == 0.01
    with pytest.raises(ValueError):
        DSHLoss(0)


def test_quantization_term_on_hand_placed_points():
    u = torch.tensor([[1.0, -1.0], [0.5, 2.0]])  # per-image sum_k ||u_k| - 1| = 0 + 0 and 0.5 + 1
    terms = DSHLoss(2, alpha=0.1)(u, torch.tensor([0, 0]))
    assert torch.isclose(terms.quantization, torch.tensor(0.1 * (0.0 + 1.5) / 2))
    # the only pair is similar at squared distance 0.25 + 9
    assert torch.isclose(terms.similar, torch.tensor(0.5 * 9.25))
    assert terms.dissimilar == 0


def test_identical_outputs_give_finite_gradients():
    u = torch.tensor([[0.3, -0.2, 0.1]] * 4, requires_grad=True)  # all pairs at distance exactly 0
    terms = DSHLoss(3)(u, torch.tensor([0, 0, 1, 1]))
    terms.total.backward()
    assert torch.isfinite(u.grad).all()
    assert terms.similar == 0 and terms.dissimilar > 0


def test_single_image_has_no_pairs():
    u = torch.tensor([[0.5, -2.0]], requires_grad=True)
    terms = DSHLoss(2, alpha=1.0)(u, torch.tensor([3]))
    assert terms.similar == 0 and terms.dissimilar == 0
    assert torch.isclose(terms.total, torch.tensor(1.5))
    terms.total.backward()
    assert torch.isfinite(u.grad).all()


def test_bf16_autocast_computes_in_float32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 16)
    x, labels = torch.randn(10, 8), torch.randint(0, 3, (10,))
    loss = DSHLoss(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = layer(x)
        assert u.dtype == torch.bfloat16
        terms = loss(u, labels)
    assert all(t.dtype == torch.float32 for t in terms)
    torch.testing.assert_close(terms.total, loss(u.float(), labels).total)
    terms.total.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_returns_named_terms():
    terms = DSHLoss(4)(torch.randn(3, 4), torch.tensor([0, 1, 0]))
    assert isinstance(terms, LossTerms)
    assert terms._fields == ("total", "similar", "dissimilar", "quantization")


def test_similarity_matrix():
    s = similarity_matrix(torch.tensor([0, 1, 0]), torch.tensor([0, 1]))
    assert s.tolist() == [[True, False], [False, True], [True, False]]
    s = similarity_matrix(torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0]]), torch.tensor([[0, 1, 0], [0, 0, 1]]))
    assert s.tolist() == [[True, False], [False, True], [False, False]]


def test_bad_inputs():
    loss = DSHLoss(4)
    u = torch.randn(3, 4)
    with pytest.raises(ValueError, match="ref_u and ref_labels"):
        loss(u, torch.tensor([0, 1, 0]), ref_u=u)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        loss(torch.randn(3, 5), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="rows"):
        loss(u, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multi-hot"):
        loss(u, torch.tensor([[3], [1], [2]]))  # class ids given as a column
