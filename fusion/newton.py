"""L2-penalised logistic regressions solved as one batched problem: Newton's method on stacked systems.

The candidate search of ``fusion.logistic`` fits hundreds of small models (a few hundred rows, at most a few
hundred columns) that differ in rows, columns and penalty. One at a time through scikit-learn, each paid its
input checks and a solver start; stacked, they are one ``(models, k, k)`` Cholesky solve per Newton step.
Newton on the exact Hessian reaches the optimum to machine precision in a handful of steps, so the models
are those scikit-learn's lbfgs converges to (``tests/test_newton.py`` holds them to it).
"""

from __future__ import annotations

import numpy as np
import torch


def fit_l2(z: np.ndarray, y: np.ndarray, weight: np.ndarray, c: np.ndarray, tol: float = 1e-10,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``c[m] * sum_i weight[m, i] * logloss(y[m, i], z[m, i] @ w[m] + b[m]) + ||w[m]||^2 / 2`` for every
    model m at once: scikit-learn's ``LogisticRegression(C=c)`` objective with sample weights, the intercept
    unpenalised. ``z`` is (M, N, K), ``y`` and ``weight`` (M, N) (a padding row has weight 0), ``c`` (M,).
    Returns the weights (M, K) and intercepts (M,)."""
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
    m, n, k = zt.shape
    zt = torch.cat([zt, torch.ones(m, n, 1, dtype=torch.float64)], dim=-1)  # the intercept's column
    yt = torch.from_numpy(np.asarray(y, np.float64))
    sw = torch.from_numpy(np.asarray(weight, np.float64)) * torch.from_numpy(np.asarray(c, np.float64))[:, None]
    ridge = torch.ones(k + 1, dtype=torch.float64)
    ridge[-1] = 0.0  # the intercept is not penalised
    theta = torch.zeros(m, k + 1, dtype=torch.float64)
    # The Hessian in single precision: it only sets the direction of each step, so its rounding slows the last
    # steps a little, while the gradient (double) decides where they end; its product is the cost of a step.
    z32 = zt.float()

    def objective(t: torch.Tensor) -> torch.Tensor:
        eta = torch.einsum("mnk,mk->mn", zt, t)
        loss = torch.nn.functional.softplus(eta) - yt * eta
        return (sw * loss).sum(1) + 0.5 * (ridge * t * t).sum(1)

    f = objective(theta)
    for _ in range(max_iter):
        p = torch.sigmoid(torch.einsum("mnk,mk->mn", zt, theta))
        grad = ((sw * (p - yt))[:, None] @ zt)[:, 0] + ridge * theta
        hess = ((z32 * (sw * p * (1 - p)).float()[..., None]).transpose(1, 2) @ z32).double() + torch.diag(ridge)
        # The intercept's diagonal is the sum of weights times p(1 - p): positive unless every weight is 0.
        hess[:, -1, -1] += 1e-12
        step = torch.cholesky_solve(grad[..., None], torch.linalg.cholesky(hess))[..., 0]
        # Half the Newton decrement bounds how far the objective is above its minimum near it: once that is
        # at rounding level, a model is done (its line search could no longer tell a step from noise).
        decrease = (grad * step).sum(1)
        active = (decrease > 1e-16 * (1 + f.abs())) & (grad.abs().amax(1) > tol)
        if not active.any():
            break
        # Backtracking (Armijo) per model: a full Newton step can overshoot far from the optimum.
        t = active.double()
        for _ in range(60):
            trial = theta - t[:, None] * step
            f_trial = objective(trial)
            ok = f_trial <= f - 1e-4 * t * decrease
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        theta, f = trial, f_trial
    return theta[:, :k].numpy(), theta[:, k].numpy()


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """scikit-learn's ``class_weight="balanced"`` for binary ``y``: n / (2 * count of the row's class)."""
    counts = np.bincount(y, minlength=2).clip(1)
    return len(y) / (2 * counts[y])
