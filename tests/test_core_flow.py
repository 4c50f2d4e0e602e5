"""The degraded -> clean flow of uir.py: x_s = (1-s) z_hq + s z_deg, v = z_deg - z_hq, Euler from
s = 1 to 0. With the exact velocity, Euler is exact for any schedule: it must land on z_hq."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rar_core.model import Assessment
from rar_core.uir import FlowEuler, flow_loss, flow_pair, sample_s


def latents(seed: int, shape=(3, 16, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 2 + 0.5


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 25])
@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_sigmas_start_at_one_end_at_zero(steps, shift):
    sig = FlowEuler(steps, shift).sigmas
    assert sig.shape == (steps + 1,)
    assert sig.dtype == torch.float32
    assert sig[0].item() == pytest.approx(1.0)
    assert sig[-1].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all()), f"sigmas not strictly decreasing: {sig.tolist()}"
    assert bool(((sig >= 0) & (sig <= 1)).all())


def test_shift_moves_sigmas_towards_the_degraded_end():
    base, shifted = FlowEuler(6, 1.0).sigmas, FlowEuler(6, 3.0).sigmas
    assert bool((shifted[1:-1] > base[1:-1]).all())  # shift > 1 spends more steps near s = 1
    # shift 1: evenly spaced timesteps from 1 to diffusers' sigma_min (1 / 1000)
    expected = torch.cat((torch.linspace(1.0, 1e-3, 6), torch.zeros(1)))
    assert torch.allclose(base, expected, atol=1e-6)


def test_invalid_steps():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        FlowEuler(0, 1.0)


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_euler_with_exact_constant_velocity_lands_on_z_hq(steps, shift):
    z_hq, z_deg = latents(steps * 10 + int(shift * 10))
    calls = []

    def velocity(x, s):
        calls.append(s.clone())
        assert s.shape == (x.shape[0],)
        return z_deg - z_hq

    out = FlowEuler(steps, shift).sample(velocity, z_deg)
    assert len(calls) == steps
    assert calls[0].eq(1.0).all()  # first evaluation at the degraded end
    assert torch.allclose(out, z_hq, atol=1e-5), (out - z_hq).abs().max()


@pytest.mark.parametrize("steps", [1, 3, 4])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_with_state_dependent_exact_velocity(steps, shift):
    """v(x, s) = (x - z_hq) / s is the exact field along the straight path; Euler stays on it."""
    z_hq, z_deg = latents(100 + steps)
    flow = FlowEuler(steps, shift)
    seen = []

    def velocity(x, s):
        s_ = s.view(-1, 1, 1, 1)
        x_s, _ = flow_pair(z_hq, z_deg, s)
        assert torch.allclose(x, x_s, atol=1e-4)  # every intermediate is on the path
        seen.append(float(s[0]))
        return (x - z_hq) / s_

    out = flow.sample(velocity, z_deg)
    assert seen == pytest.approx(flow.sigmas[:-1].tolist())
    assert torch.allclose(out, z_hq, atol=1e-4)


def test_sample_keeps_dtype_and_input():
    z_hq, z_deg = latents(7)
    z16 = z_deg.half()
    before = z16.clone()
    out = FlowEuler(3, 3.0).sample(lambda x, s: x.new_zeros(x.shape), z16)
    assert out.dtype == torch.float16
    assert torch.equal(z16, before)  # not modified in place
    assert torch.equal(out, z16)  # zero velocity: no motion


def test_flow_pair_endpoints_and_target():
    z_hq, z_deg = latents(3)
    s = torch.tensor([0.0, 1.0, 0.25])
    x, v = flow_pair(z_hq, z_deg, s)
    assert torch.equal(v, z_deg - z_hq)
    assert torch.allclose(x[0], z_hq[0])
    assert torch.allclose(x[1], z_deg[1])
    assert torch.allclose(x[2], 0.75 * z_hq[2] + 0.25 * z_deg[2])
    # moving from x_s back by s * v is the clean latent, forward by (1 - s) * v the degraded one
    assert torch.allclose(x - s.view(-1, 1, 1, 1) * v, z_hq, atol=1e-6)
    assert torch.allclose(x + (1 - s).view(-1, 1, 1, 1) * v, z_deg, atol=1e-6)


class ExactVelocity(nn.Module):
    """A stand-in restorer that predicts the true velocity from (x_s, s) given the clean latent."""

    def __init__(self, z_hq: torch.Tensor):
        super().__init__()
        self.z_hq = z_hq
        self.calls = 0
        self.anchor = nn.Parameter(torch.zeros(()))  # RAR.device reads the restorer's parameters

    def forward(self, x, s, context, pooled):
        self.calls += 1
        return (x - self.z_hq) / s.view(-1, 1, 1, 1).clamp_min(1e-12)


def test_flow_loss_is_zero_for_the_exact_velocity():
    z_hq, z_deg = latents(4)
    s = torch.tensor([0.9, 0.5, 0.1])
    loss, z_pred = flow_loss(ExactVelocity(z_hq), z_hq, z_deg, s, None, None)
    assert loss.shape == (3,)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-10)
    assert torch.allclose(z_pred, z_hq, atol=1e-5)


def test_flow_loss_matches_manual_mse_on_a_real_restorer(tiny_model):
    z_hq, z_deg = latents(5, shape=(2, 16, 8, 8))
    s = torch.tensor([0.3, 0.8])
    hidden = [torch.randn(20, 32), torch.randn(25, 32)]
    context, pooled = tiny_model.connector.condition(hidden)
    with torch.no_grad():
        loss, z_pred = flow_loss(tiny_model.uir, z_hq, z_deg, s, context, pooled)
        x_s, v = flow_pair(z_hq, z_deg, s)
        v_hat = tiny_model.uir(x_s, s, context, pooled)
    assert torch.allclose(loss, ((v_hat - v) ** 2).mean(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(z_pred, z_deg - v_hat, atol=1e-6)
    # per-sample: the loss of item 0 does not depend on item 1
    with torch.no_grad():
        loss0, _ = flow_loss(tiny_model.uir, z_hq[:1], z_deg[:1], s[:1], context[:1], pooled[:1])
    assert torch.allclose(loss0, loss[:1], rtol=1e-4, atol=1e-6)


def test_flow_loss_trains_the_restorer(tiny_model):
    """Gradients flow: a few Adam steps on one pair reduce the loss."""
    z_hq, z_deg = latents(6, shape=(2, 16, 8, 8))
    s = torch.tensor([0.5, 0.7])
    context, pooled = torch.zeros(2, 16, 64), torch.zeros(2, 32)
    tiny_model.uir.train()
    opt = torch.optim.Adam(tiny_model.uir.parameters(), lr=3e-3)
    first = None
    for _ in range(6):
        loss, _ = flow_loss(tiny_model.uir, z_hq, z_deg, s, context, pooled)
        loss = loss.mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.9


def test_sample_s_range_shift_and_determinism():
    a = sample_s(4096, 1.0, torch.Generator().manual_seed(0))
    b = sample_s(4096, 1.0, torch.Generator().manual_seed(0))
    c = sample_s(4096, 3.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert bool(((a > 0) & (a < 1)).all()) and bool(((c > 0) & (c < 1)).all())
    assert abs(a.mean().item() - 0.5) < 0.02  # logit-normal(0, 1) is symmetric around 1/2
    assert bool((c > a).all())  # shift > 1 maps every time towards the degraded end
    assert torch.allclose(c, 3 * a / (1 + 2 * a))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_rar_restore_with_exact_velocity_lands_on_z_hq(tiny_model, steps):
    """RAR.restore (A_Q conditioning + FlowEuler + the restorer) with an oracle restorer."""
    z_hq, z_deg = latents(8, shape=(2, 16, 8, 8))
    oracle = ExactVelocity(z_hq)
    tiny_model.uir = oracle
    hidden = [torch.randn(12, 32), torch.randn(30, 32)]
    out = tiny_model.restore(z_deg, Assessment(["Noise", "Haze"], hidden), steps=steps)
    assert oracle.calls == steps
    assert torch.allclose(out, z_hq, atol=1e-4)
