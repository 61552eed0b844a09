"""The teacher study's linear probe against independent computations: the fit is the minimum of
its objective (the gradient, worked out by hand in numpy, vanishes there), a symmetric problem puts
the boundary where symmetry says, the standardisation uses the labelled clips alone, and the
strength is the cross-validated one."""

import numpy as np
import pytest
import torch

from benchmarks import linear_probe as lp


def _blobs(n: int, d: int, classes: int, spread: float, seed: int, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around `classes` centres (fixed by seed), the points' noise fixed by (seed, draw)."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    y = torch.arange(n) % classes
    g = torch.Generator().manual_seed(1000 * seed + draw + 1)
    return centres[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("strength", [1e-3, 1e-1])
def test_the_fit_is_where_the_hand_worked_gradient_vanishes(strength):
    x, y = _blobs(120, 5, 3, 2.0, 0)
    w = lp.fit_logistic(x, y, 3, strength).numpy()
    xb = np.concatenate([x.numpy(), np.ones((len(x), 1))], axis=1)
    z = xb @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[y.numpy()]
    grad = xb.T @ (p - onehot) / len(x)
    grad[:-1] += strength * w[:-1]  # the bias row is not penalised
    assert np.abs(grad).max() < 1e-6
    # and a step away in any direction raises the objective
    xt = torch.from_numpy(xb)
    at = lp.objective(xt, y, torch.from_numpy(w), strength)
    for _ in range(5):
        nudged = torch.from_numpy(w) + 1e-2 * torch.randn(*w.shape, dtype=torch.float64)
        assert lp.objective(xt, y, nudged, strength) > at


def test_a_symmetric_problem_puts_the_boundary_at_zero():
    # two classes mirrored about 0 in one feature: the optimum's boundary is x = 0, so the held-out
    # accuracy is the share of held-out points on their class's side, counted without the probe
    g = torch.Generator().manual_seed(1)
    half = torch.randn(200, 1, generator=g, dtype=torch.float64) + 0.7
    x, y = torch.cat([half, -half]), torch.cat([torch.zeros(200), torch.ones(200)]).long()
    w = lp.fit_logistic(x, y, 2, 1e-2)
    boundary = -(w[1, 0] - w[1, 1]) / (w[0, 0] - w[0, 1])
    assert abs(float(boundary)) < 1e-6
    test = torch.randn(300, 1, generator=g, dtype=torch.float64) * 1.5
    test_y = (test[:, 0] < 0).long() ^ (torch.arange(300) % 7 == 0).long()  # some labels flipped
    want = float(((test[:, 0] > 0) == (test_y == 0)).double().mean())
    assert float((lp.predict(w, test) == test_y).double().mean()) == pytest.approx(want)


def test_separable_classes_are_probed_perfectly_and_noise_is_not_learnt():
    x, y = _blobs(200, 8, 4, 0.3, 2)
    tx, ty = _blobs(80, 8, 4, 0.3, 2, draw=1)  # the same centres, fresh points
    result = lp.linear_probe(x, y, tx, ty, 4)
    assert result["top1"] == 100.0 and result["train"] == 200 and result["heldout"] == 80
    # labels independent of the features: the held-out accuracy stays near chance (25 %)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(400, 8, generator=g)
    labels = torch.randint(0, 4, (400,), generator=g)
    result = lp.linear_probe(noise[:240], labels[:240], noise[240:], labels[240:], 4)
    assert result["top1"] < 40


def test_standardisation_uses_the_labelled_clips_alone():
    train = torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]], dtype=torch.float64)
    other = torch.tensor([[2.0, 7.0]], dtype=torch.float64)
    st_train, st_other = lp.standardise(train, other)
    assert torch.allclose(st_train[:, 0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(st_train[:, 1], torch.zeros(3, dtype=torch.float64))  # constant: scale 1
    assert torch.allclose(st_other, torch.tensor([[0.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("labels", [torch.arange(480) % 4,  # the direction task: clip i shows class i % 4
                                    (torch.arange(480) % 16) // 4,  # the spatial task: runs of 4 per class
                                    torch.tensor([0] * 10 + [1] * 7 + [2] * 3)])
def test_folds_partition_the_clips_and_balance_the_classes(labels):
    parts = lp.folds(labels)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(labels)))
    counts = torch.stack([torch.bincount(labels[part], minlength=3 if len(labels) == 20 else 4) for part in parts])
    assert (counts.max(0).values - counts.min(0).values).max() <= 1


def test_the_strength_is_the_best_cross_validated_one():
    # few clips, many noisy features: the cross-validated accuracy decides, and the probe refits
    # with the strength whose accuracy is highest (ties go to the stronger)
    x, y = _blobs(48, 40, 4, 4.0, 4)
    strength, scores = lp.choose_strength(x, y, 4)
    assert set(scores) == set(lp.STRENGTHS)
    best = max(scores.values())
    assert scores[strength] == best and all(s <= strength for s, v in scores.items() if v == best)
    result = lp.linear_probe(x, y, *_blobs(40, 40, 4, 4.0, 4, draw=1), 4)
    assert result["strength"] == strength and result["cv_top1"] == scores
