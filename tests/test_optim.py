"""The training loop's Adam: torch.optim.Adam's steps to the bit, without importing torch's compiler."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lepton.models.network import MLP
from lepton.models.optim import Adam, adam


def _batches(n: int = 6):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 5, generator=generator), torch.randint(0, 3, (32,), generator=generator)) for _ in range(n)]


def _train(model: MLP, optimiser, batches, *, skip_head_at: int | None = None) -> None:
    for i, (x, y) in enumerate(batches):
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if i == skip_head_at:  # a parameter without a gradient this step is not stepped, its moments kept
            for p in model.head.parameters():
                p.grad = None
        optimiser.step()


@pytest.mark.parametrize("fused", [True, False])
def test_steps_equal_torch_optim_adam_to_the_bit(fused):
    torch.manual_seed(0)
    ours = MLP(n_features=5, n_classes=3, hidden=(16, 8))
    theirs = copy.deepcopy(ours)
    batches = _batches()
    _train(ours, Adam(list(ours.parameters()), 3e-3, fused=fused), batches, skip_head_at=2)
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=3e-3, fused=True if fused else None, foreach=False), batches, skip_head_at=2)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), MLP(n_features=5, n_classes=3, hidden=(16, 8)).parameters(), strict=True))


def test_parameters_that_never_take_a_gradient_keep_no_state():
    model = MLP(n_features=5, n_classes=3, hidden=(16,))
    optimiser = adam(list(model.parameters()), 1e-3)
    x, y = _batches(1)[0]
    head = {id(p) for p in model.head.parameters()}
    optimiser.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for p in model.head.parameters():
        p.grad = None
    before = [p.detach().clone() for p in model.head.parameters()]
    optimiser.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))
    assert len(optimiser.state) == len([p for p in model.parameters() if id(p) not in head])


def test_zero_grad_keeps_or_drops_the_gradient_tensors():
    model = MLP(n_features=5, n_classes=3, hidden=(4,))
    optimiser = adam(list(model.parameters()), 1e-3)
    x, y = _batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    optimiser.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    optimiser.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_scaled_step_gets_torch_optim_adam():
    model = MLP(n_features=5, n_classes=3, hidden=(4,))
    assert isinstance(adam(list(model.parameters()), 1e-3, scaled=True), torch.optim.Adam)
    assert isinstance(adam(list(model.parameters()), 1e-3), Adam)


def test_training_does_not_import_torch_dynamo():
    """A cold command paid about a second importing torch._dynamo, which any torch.optim optimiser imports when made."""
    script = """
import sys
import numpy as np, torch
from lepton.models.loop import fit
from lepton.models.network import MLP
x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
fit(MLP(n_features=4, n_classes=2, hidden=(8,)), x, y, epochs=2, batch_size=16, lr=1e-2, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
