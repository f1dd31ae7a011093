r"""Explicit gradient regularization: a training loss plus a penalty on its own gradient norm.

Gradient descent with step size h on a loss L does not follow the gradient flow of L but, to a global
error of O(h²), the flow of

.. math::
    \tilde L = L + \frac{h}{4} \lVert \nabla L \rVert^2

(Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021): a finite learning rate already
penalises the gradient norm, and so steers towards flatter regions. ``with_gradient_penalty`` makes
the penalty explicit: gradient descent with step h on ``L + μ‖∇L‖²`` implicitly minimises
``L + (μ + h/4)‖∇L‖²`` to first order, so μ adds to the h/4 the step size brings by itself.
"""
import math
import numbers

import torch


def with_gradient_penalty(loss, params, coefficient):
    r"""``loss + coefficient · ‖∇loss‖²``, ready for ``backward()``.

    ‖∇loss‖² is the squared norm of the gradient with respect to all of ``params`` together (the sum
    over the tensors of their squared entries). The gradient is taken with ``create_graph=True``, so
    ``backward()`` on the result differentiates through it (a double backward) and gives

    .. math::
        \nabla \bigl(L + μ \lVert \nabla L \rVert^2\bigr) = \nabla L + 2 μ\, H \nabla L,

    with H the Hessian of L. A param the loss does not depend on adds nothing to the penalty.

    ``loss``: a scalar tensor that requires grad. ``params``: a tensor or an iterable of tensors that
    require grad (e.g. ``model.parameters()``). ``coefficient``: μ, a finite real number ≥ 0.
    """
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    _check_arguments(loss, params, coefficient)
    gradients = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    squared_norm = sum(gradient.pow(2).sum() for gradient in gradients if gradient is not None)
    return loss + coefficient * squared_norm


def _check_arguments(loss, params, coefficient):
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"with_gradient_penalty: loss must be a scalar tensor, got {shape}; reduce it "
                         "first (e.g. loss.mean())")
    if not loss.requires_grad:
        raise ValueError("with_gradient_penalty: loss does not require grad; compute it from params that "
                         "require grad, outside torch.no_grad()")
    if not params:
        raise ValueError("with_gradient_penalty: params is empty; pass the tensors whose gradient norm to penalise")
    for index, param in enumerate(params):
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"with_gradient_penalty: params[{index}] is a {type(param).__name__}, not a tensor")
        if not param.requires_grad:
            raise ValueError(f"with_gradient_penalty: params[{index}] (shape {tuple(param.shape)}) does not "
                             "require grad; its gradient cannot be penalised")
    if isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real):
        raise TypeError(f"with_gradient_penalty: coefficient must be a real number, got {type(coefficient).__name__}")
    if not math.isfinite(coefficient) or coefficient < 0:
        raise ValueError(f"with_gradient_penalty: coefficient must be finite and >= 0, got {coefficient}; "
                         "a negative one would reward large gradients")
