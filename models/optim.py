"""Adam for the training loop, without importing torch's compiler.

Constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its ``add_param_group`` is wrapped
to keep the compiler out): about a second of CPU in a cold command here, for a compiler no network of ours
uses. ``Adam`` below keeps the optimiser's state itself and steps it with the same function
``torch.optim.Adam`` calls (``torch.optim.adam.adam``, its fused kernel where the parameters allow it), so
its steps are the same to the bit (``tests/test_optim.py``). Where a step needs more than that (a
``GradScaler`` on CUDA, which reads an optimiser's ``param_groups``), ``adam`` returns ``torch.optim.Adam``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam as adam_step


class Adam:
    """``torch.optim.Adam(parameters, lr, fused=...)`` with the default betas, eps and no weight decay: ``zero_grad`` and ``step``."""

    def __init__(self, parameters: list[nn.Parameter], lr: float, *, fused: bool) -> None:
        self.parameters, self.lr, self.fused = list(parameters), lr, fused
        self.betas, self.eps = (0.9, 0.999), 1e-8
        self.complex = any(torch.is_complex(p) for p in self.parameters)
        # Created at a parameter's first step, as torch.optim.Adam creates them: a parameter that never takes a gradient has none.
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.parameters if p.grad is not None]
        if not params:
            return
        for i, p in enumerate(self.parameters):
            if p.grad is not None and i not in self.state:
                # torch.optim.Adam's step count: a float32 tensor on the parameter's device when fused, a CPU one otherwise
                count = torch.zeros((), dtype=torch.float32, device=p.device if self.fused else "cpu")
                self.state[i] = (count, torch.zeros_like(p, memory_format=torch.preserve_format), torch.zeros_like(p, memory_format=torch.preserve_format))
        states = [self.state[i] for i, p in enumerate(self.parameters) if p.grad is not None]
        adam_step(
            params, [p.grad for p in params], [s[1] for s in states], [s[2] for s in states], [], [s[0] for s in states],
            foreach=False, capturable=False, differentiable=False, fused=self.fused or None, grad_scale=None, found_inf=None,
            has_complex=self.complex, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1],
            lr=self.lr, weight_decay=0.0, eps=self.eps, maximize=False,
        )


def adam(parameters: list[nn.Parameter], lr: float, *, scaled: bool = False) -> Adam | torch.optim.Adam:
    """Adam with its fused kernel, one call a step for every parameter: on the CPU the default network's steps took
    0.56 ms against 0.80 ms with the loop over parameters (PyTorch's default off CUDA), the same maths.
    ``scaled``: the steps go through a ``GradScaler`` (fp16 on CUDA), which needs a ``torch.optim`` optimiser."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    if scaled:
        return torch.optim.Adam(parameters, lr=lr, fused=fused or None)
    return Adam(parameters, lr, fused=fused)
