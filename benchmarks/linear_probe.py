"""A linear probe: what a frozen encoder's features hold about a task, read without fine-tuning.

Given one feature vector per clip (the caller pools the encoder's tokens), the probe fits a
multinomial logistic regression on the labelled clips' vectors, standardised by the labelled
clips' mean and spread. Its L2 strength is picked from `STRENGTHS` by cross-validation on the
labelled clips alone (`FOLDS` stratified folds, a fixed split), then the probe is refitted on all
of them and scored on the held-out clips, which it never sees before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried, on the mean per-clip loss
FOLDS = 4
MAX_ITER = 500


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, strength: float) -> torch.Tensor:
    """Multinomial logistic regression, x (N, D) float64, y (N,) -> weights (D + 1, classes), the
    last row the bias: the minimum of mean cross-entropy + strength / 2 * |W|^2 (bias not
    penalised), by L-BFGS with a strong-Wolfe line search."""
    with torch.enable_grad():
        return _fit(x, y, classes, strength)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, strength: float) -> torch.Tensor:
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w = torch.zeros(xb.shape[1], classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(xb, y, w, strength)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def objective(xb: torch.Tensor, y: torch.Tensor, w: torch.Tensor, strength: float) -> torch.Tensor:
    """The probe's loss at w, xb (N, D + 1) with the bias column."""
    return F.cross_entropy(xb @ w, y) + strength / 2 * w[:-1].pow(2).sum()


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ w[:-1] + w[-1]).argmax(dim=1)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Every set shifted and scaled by train's per-feature mean and std (a constant feature keeps
    scale 1)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return [(t - mean) / std for t in (train, *others)]


def folds(y: torch.Tensor, k: int = FOLDS) -> list[torch.Tensor]:
    """k disjoint index sets covering range(len(y)), stratified: each class's clips, in order,
    are dealt round-robin to the folds, so every fold holds each class about equally often
    (a split by position would not: the synthetic sets cycle through the classes)."""
    parts: list[list[int]] = [[] for _ in range(k)]
    for c in torch.unique(y).tolist():
        for j, i in enumerate(torch.nonzero(y == c).flatten().tolist()):
            parts[j % k].append(i)
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


def choose_strength(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[float, dict[float, float]]:
    """The strength of STRENGTHS with the best cross-validated accuracy on (x, y) (ties: the
    stronger), and every strength's accuracy in %."""
    splits = []  # per fold: the kept and the held-out clips standardised by the kept, and their labels
    for held in folds(y):
        keep = torch.ones(len(x), dtype=torch.bool)
        keep[held] = False
        splits.append((*standardise(x[keep], x[held]), y[keep], y[held]))
    scores = {}
    for strength in STRENGTHS:
        right = sum(int((predict(fit_logistic(xtr, ytr, classes, strength), xte) == yte).sum())
                    for xtr, xte, ytr, yte in splits)
        scores[strength] = 100.0 * right / len(x)
    best = max(scores.values())
    return max(s for s, v in scores.items() if v == best), scores


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int) -> dict:
    """Held-out top-1 (%) of the probe fitted on (train_x, train_y) with the cross-validated
    strength; features (N, D) of any float dtype, computed in float64."""
    train_x, test_x = train_x.double(), test_x.double()
    strength, cv = choose_strength(train_x, train_y, classes)
    xtr, xte = standardise(train_x, test_x)
    w = fit_logistic(xtr, train_y, classes, strength)
    top1 = 100.0 * float((predict(w, xte) == test_y).double().mean())
    train_top1 = 100.0 * float((predict(w, xtr) == train_y).double().mean())
    return {"top1": top1, "train_top1": train_top1, "strength": strength, "cv_top1": cv,
            "train": len(train_x), "heldout": len(test_x)}
