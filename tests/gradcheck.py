"""The one gradient checker every op test uses (Caffe's GradientChecker, JAX's check_vjp).

``check_gradients(model, torch_fn, x_shape, dtype, rng)`` compiles ``model`` for training with
an MSE loss against a random target and with the input gradient on, then checks:

1. against PyTorch autograd: the loss, the input gradient and every parameter gradient, with
   ``torch_fn(x, params)`` computing the same forward pass from torch tensors (``params`` maps
   state_dict keys to leaf tensors), relative error below ``OP_TOLERANCE[dtype]``;
2. in float64, against central finite differences along one random direction through input and
   parameters together: ``(L(p + eps t) - L(p - eps t)) / 2 eps`` against ``<grad, t>``, the
   error scaled by ``max(|a|, |b|, 1)``. Inputs are drawn away from kinks by the caller (the
   ``away_from`` helper moves values off ReLU's zero and pooling ties).

A failure names the gradient, its relative error and the two norms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF

import engine
from tests.helpers import OP_TOLERANCE, rel_error


def compile_for_gradients(model, x_shape, dtype: str):
    return engine.compile(
        model, x_shape[1:], batch=x_shape[0], dtype=dtype, train=True, loss="mse", input_grad=True
    )


def randomize_params(exe, rng: np.random.Generator) -> None:
    """Fresh random weights (BatchNorm variances positive), so every term is exercised."""
    for name, array in exe.params.items():
        if name.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, array.shape)
        else:
            array[...] = rng.standard_normal(array.shape)


def check_gradients(
    model,
    torch_fn,
    x_shape,
    dtype: str,
    rng: np.random.Generator,
    x: np.ndarray | None = None,
    finite_differences: bool = True,
) -> None:
    exe = compile_for_gradients(model, x_shape, dtype)
    randomize_params(exe, rng)
    x = rng.standard_normal(x_shape).astype(dtype) if x is None else x.astype(dtype)
    target = rng.standard_normal(exe.graph.outputs[0].shape).astype(dtype)
    exe.poison_buffers()
    loss = exe.forward_backward(x, target)

    params = {
        k: torch.tensor(v, requires_grad=True) for k, v in exe.params.items() if k in exe.grads
    }
    params.update({k: torch.tensor(v) for k, v in exe.params.items() if k not in exe.grads})
    tx = torch.tensor(x, requires_grad=True)
    ref_loss = TF.mse_loss(torch_fn(tx, params), torch.from_numpy(target))
    ref_loss.backward()
    tol = OP_TOLERANCE[dtype]
    assert rel_error(np.array([loss]), np.array([ref_loss.item()])) < tol, (loss, ref_loss.item())
    expected = {"input": tx.grad, **{k: p.grad for k, p in params.items() if p.requires_grad}}
    assert set(exe.grads) == set(expected), (sorted(exe.grads), sorted(expected))
    for name, grad in expected.items():
        err = rel_error(exe.grads[name], grad.numpy())
        assert err < tol, (
            f"gradient of {name}: relative error {err:.2e} (ours |g|="
            f"{np.linalg.norm(exe.grads[name]):.4g}, torch |g|={grad.norm().item():.4g})"
        )
    if finite_differences and dtype == "float64":
        check_directional_derivative(exe, x, target, rng)


def check_directional_derivative(
    exe,
    x: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    eps: float = 1e-6,
    tol: float = 1e-6,
    directions: int = 3,
) -> None:
    """Central differences of the loss along a random direction in (input, params) space.

    Inside a network a ReLU's zero or a max pool's tie can fall within ``eps`` of the point
    along the direction (``away_from`` cannot reach hidden layers). Such a kink shows as
    one-sided differences that disagree with each other by more than the central difference
    misses the analytic value; only then is another direction drawn, at most ``directions``
    in all. A wrong gradient misses along every direction, with one-sided differences that
    agree, so it still fails."""
    centre = exe.forward_backward(x, target)
    grads = {k: v.copy() for k, v in exe.grads.items()}
    base = {k: exe.params[k].copy() for k in grads if k != "input"}

    def loss_at(direction: dict, scale: float) -> float:
        for k in base:
            exe.params[k][...] = base[k] + scale * direction[k]
        return exe.forward_backward(x + scale * direction["input"], target)

    for _ in range(directions):
        direction = {k: rng.standard_normal(v.shape) for k, v in grads.items()}
        analytic = sum(float(np.vdot(grads[k], direction[k])) for k in grads)
        ahead, behind = loss_at(direction, eps), loss_at(direction, -eps)
        numeric = (ahead - behind) / (2 * eps)
        one_sided_gap = abs((ahead - centre) - (centre - behind)) / eps
        scale = max(abs(analytic), abs(numeric), 1.0)
        err = abs(analytic - numeric) / scale
        if err < tol or one_sided_gap < abs(analytic - numeric):
            break
    loss_at(direction, 0.0)  # the parameters (and gradients) back at the point
    assert err < tol, f"directional derivative: analytic {analytic:.10g}, numeric {numeric:.10g}"


def away_from(values: np.ndarray, points: float | list[float] = 0.0, gap: float = 1e-3):
    """Move values within ``gap`` of any kink point out to ``gap`` away (ReLU at 0 and the like),
    so finite differences never straddle a kink."""
    values = values.copy()
    for point in np.atleast_1d(points):
        close = np.abs(values - point) < gap
        values[close] = point + np.where(values[close] >= point, gap, -gap)
    return values
