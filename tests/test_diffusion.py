"""EDM diffusion: preconditioning algebra, sampler budget, centring, equivariance (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from conformer.data import keys
from conformer.data.batching import with_positions
from conformer.diffusion import EDMDiffusion, EDMSettings, center, karras_sigmas, random_rotations


def toy_batch(dtype=torch.float64, seed=0):
    """Two molecules (5 and 3 atoms) with a chain of bonds each."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(8, 3, generator=g, dtype=dtype) * 1.5
    bonds = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7)]
    index = torch.tensor([[a for a, b in bonds] + [b for a, b in bonds],
                          [b for a, b in bonds] + [a for a, b in bonds]])
    return Batch(x=torch.zeros(8, 9, dtype=torch.long), z=torch.full((8,), 6),
                 edge_index=index, edge_attr=torch.zeros(index.shape[1], 4, dtype=torch.long),
                 pos=pos, batch=torch.tensor([0, 0, 0, 0, 0, 1, 1, 1]))


class OracleNet(nn.Module):
    """The ideal network for a data set of ONE conformer ``target`` per molecule: it inverts
    the preconditioning so that D(x; sigma) = target exactly."""

    def __init__(self, target, settings: EDMSettings):
        super().__init__()
        self.target = target
        self.sd = settings.sigma_data
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros((), dtype=target.dtype))

    def forward(self, batch, noise_conditioning):
        self.calls += 1
        sigma = (4 * noise_conditioning).exp()[batch[keys.BATCH]].unsqueeze(1)
        sd = self.sd
        x = batch[keys.POS] * (sigma ** 2 + sd ** 2).sqrt() / sd  # undo sd * c_in
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        return (self.target - c_skip * x) / c_out


def test_karras_sigmas_and_rotations():
    sigmas = karras_sigmas(20, 0.01, 30.0, 7.0)
    assert sigmas.shape == (21,) and sigmas[-1] == 0
    assert torch.isclose(sigmas[0], torch.tensor(30.0, dtype=torch.float64))
    assert torch.isclose(sigmas[-2], torch.tensor(0.01, dtype=torch.float64))
    assert (sigmas[:-1] > sigmas[1:]).all()
    rot = random_rotations(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16, dtype=torch.float64))


def test_oracle_network_gives_zero_loss_and_exact_samples():
    settings = EDMSettings(sample_steps=20)
    diffusion = EDMDiffusion(settings)
    batch = toy_batch()
    target = center(batch[keys.POS], batch[keys.BATCH], 2)
    net = OracleNet(target, settings)
    loss = diffusion.loss(net, batch, generator=torch.Generator().manual_seed(0), rotate=False)
    assert float(loss) < 1e-18
    net.calls = 0
    sample = diffusion.sample(net, batch, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sample, target, atol=1e-9)
    assert net.calls == diffusion.num_evaluations() == 39 <= 50


@pytest.mark.parametrize("solver,steps,expected", [("heun", 5, 9), ("euler", 7, 7),
                                                   ("heun", 25, 49)])
def test_sampler_uses_the_stated_number_of_network_evaluations(solver, steps, expected):
    diffusion = EDMDiffusion()
    batch = toy_batch()
    net = OracleNet(center(batch[keys.POS], batch[keys.BATCH], 2), diffusion.settings)
    diffusion.sample(net, batch, steps=steps, solver=solver)
    assert net.calls == expected == diffusion.num_evaluations(steps, solver)


def test_default_sampler_budget_is_at_most_50_evaluations():
    assert EDMDiffusion().num_evaluations() <= 50


def test_denoiser_wrapper_is_equivariant_and_translation_invariant_float64():
    """D(Q x + t; sigma) = Q D(x; sigma) for random orthogonal Q (reflections included) with
    the strictly equivariant network, in float64."""
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant").double().eval()
    diffusion = EDMDiffusion()
    batch = toy_batch()
    x = center(batch[keys.POS], batch[keys.BATCH], 2)
    sigma = torch.tensor([0.3, 4.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
        if torch.rand((), generator=generator) < 0.5:
            q = -q  # a reflection too
        with torch.no_grad():
            out = diffusion.denoise(net, batch, x, sigma)
            moved = diffusion.denoise(net, batch, x @ q.T, sigma)
        assert torch.allclose(moved, out @ q.T, atol=1e-9)
        shifted = with_positions(batch, x + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        with torch.no_grad():
            again = diffusion.denoise(net, shifted, center(shifted[keys.POS],
                                                           batch[keys.BATCH], 2), sigma)
        assert torch.allclose(again, out, atol=1e-9)


def test_outputs_are_centred_and_loss_is_seeded():
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("tiny", "recm").double()
    diffusion = EDMDiffusion(EDMSettings(sample_steps=3))
    batch = toy_batch()
    sample = diffusion.sample(net, batch, generator=torch.Generator().manual_seed(0))
    means = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, batch[keys.BATCH], sample)
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-9)
    first = diffusion.loss(net, batch, generator=torch.Generator().manual_seed(5))
    second = diffusion.loss(net, batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second) and torch.isfinite(first)


def test_stochastic_sampler_is_exact_for_the_oracle_and_batch_independent():
    """With churn the sampler still lands on an oracle's target, keeps the evaluation count,
    and with one noise generator per molecule a molecule's sample ignores its batch mates."""
    settings = EDMSettings(sample_steps=10, churn=20.0, refine_steps=6)
    diffusion = EDMDiffusion(settings)
    batch = toy_batch()
    target = center(batch[keys.POS], batch[keys.BATCH], 2)
    net = OracleNet(target, settings)
    sample = diffusion.sample(net, batch, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sample, target, atol=1e-9)
    assert net.calls == 25 == diffusion.num_evaluations()
    ladder = settings.refine_sigmas()
    assert len(ladder) == 6 and ladder[0] == 0.5 and abs(ladder[-1] - 0.02) < 1e-12
    assert all(a > b for a, b in zip(ladder, ladder[1:], strict=False))

    class Wobbly(nn.Module):  # not an oracle: the added noise changes the result
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, batch, noise_conditioning):
            return torch.tanh(batch[keys.POS]) * 0.3

    x_init = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run(churn, seeds, refine_steps=3):
        d = EDMDiffusion(EDMSettings(sample_steps=10, churn=churn, refine_steps=refine_steps))
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return d.sample(Wobbly(), batch, x_init=x_init, noise_generators=gens)

    first = run(20.0, [5, 6])
    assert torch.equal(first, run(20.0, [5, 6]))  # reproducible
    other = run(20.0, [5, 7])  # molecule 1's noise changed, molecule 0's not
    assert torch.allclose(first[:5], other[:5], atol=1e-12)
    assert not torch.allclose(first[5:], other[5:], atol=1e-6)
    assert not torch.allclose(first, run(0.0, [5, 6]), atol=1e-6)  # churn does something
    assert not torch.allclose(first, run(20.0, [5, 6], refine_steps=0), atol=1e-6)
    with pytest.raises(ValueError):
        EDMSettings(refine_steps=2, refine_sigma_min=0.6)
