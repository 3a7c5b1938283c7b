"""The Jacobian penalty's estimator (modeling/jacobian_penalty.py) on a tiny map y -> tanh(W y + U x): its value is
an unbiased estimate of ||J||_F^2 / n, and its gradient in the parameters matches a finite difference."""

import torch
from fpmamba_core.jacobian_penalty import jacobian_penalty


def _tiny_map(seed: int = 0, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    W = (0.4 * torch.randn(n, n, generator=g, dtype=torch.float64)).requires_grad_(True)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    U = torch.randn(n, n, generator=g, dtype=torch.float64)

    def f(y: torch.Tensor, W: torch.Tensor = W) -> torch.Tensor:
        return torch.tanh(y @ W.T + x @ U.T)

    y_star = torch.zeros(3, n, dtype=torch.float64)
    for _ in range(200):  # contracts: ||W|| < 1 and tanh' <= 1
        y_star = f(y_star).detach()
    return f, W, y_star


def test_the_penalty_estimates_the_squared_frobenius_norm_of_each_rows_jacobian():
    f, W, y_star = _tiny_map()
    full = torch.autograd.functional.jacobian(f, y_star)  # (3, n, 3, n): row-wise, so only the diagonal blocks
    exact = torch.stack([full[b, :, b, :].pow(2).sum() / y_star.shape[1] for b in range(3)])
    torch.manual_seed(0)
    draws = torch.stack([jacobian_penalty(f, y_star)[1] for _ in range(4000)])
    assert torch.allclose(draws.mean(0).double(), exact, rtol=0.06)
    out, _ = jacobian_penalty(f, y_star)
    assert torch.allclose(out, f(y_star))  # the application it returns is f(y*) itself


def test_the_penalty_gradient_matches_a_finite_difference():
    f, W, y_star = _tiny_map(seed=1)
    v = torch.randn(y_star.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, penalty = jacobian_penalty(f, y_star, v)
    (grad,) = torch.autograd.grad(penalty.sum(), W)
    eps = 1e-6
    numeric = torch.zeros_like(W)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            bump = torch.zeros_like(W)
            bump[i, j] = eps
            up = jacobian_penalty(lambda y: f(y, W.detach() + bump), y_star, v)[1].double().sum()
            down = jacobian_penalty(lambda y: f(y, W.detach() - bump), y_star, v)[1].double().sum()
            numeric[i, j] = (up - down) / (2 * eps)
    assert grad.abs().max() > 1e-3  # the penalty depends on W
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-8)
