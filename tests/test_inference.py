"""The sampling form of the network (conformer.nn.inference): the same function as e3nn's
blocks to float64 rounding, O(3) + translation equivariant, and what generate uses."""

import copy

import numpy as np
import pytest
import torch

from conformer.data import keys
from conformer.generation.sampler import ConformerModel
from conformer.nn import build_denoiser
from conformer.nn.inference import FusedInteraction, dense_linear, fuse_for_inference
from conformer.nn.layers import InteractionBlock
from tests.equivariance import POSITION, max_equivariance_error, output_scale, single_thread
from tests.test_nn import denoiser_fn, molecule_batch

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
NOISE = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def batch():
    return molecule_batch()


def randomised(net):
    """``net`` with every parameter redrawn, so no path is trivially zero (e3nn initialises
    some weights to zero, and a fused path that were wrong there would go unnoticed)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator,
                                        dtype=parameter.dtype) * 0.5)
    return net


@pytest.mark.parametrize("preset,overrides", [
    ("tiny", {}),
    ("small", {"fine_radial": 16, "pairwise_head": 16, "bond_hops": 3}),
    ("small", {"stereo_parity": "0o", "pseudoscalar_channels": 4}),
])
def test_fused_network_equals_e3nn_in_float64(batch, preset, overrides):
    torch.manual_seed(0)
    net = randomised(build_denoiser(preset, "equivariant", **overrides).double().eval())
    fused = copy.deepcopy(net)
    assert fuse_for_inference(fused) == len(net.interactions)
    assert all(isinstance(layer.layer, FusedInteraction) for layer in fused.interactions)
    for scale in (0.1, 1.0, 4.0):  # dense and sparse radius graphs
        positions = batch[keys.POS] * scale
        with torch.no_grad():
            expected = denoiser_fn(net, batch, NOISE)(positions)
            got = denoiser_fn(fused, batch, NOISE)(positions)
        assert expected.abs().max() > 1e-3
        assert torch.allclose(got, expected, rtol=0, atol=1e-10 * float(expected.abs().max()))


def test_fused_block_equals_e3nn_block_with_every_parity():
    torch.manual_seed(1)
    block = randomised(InteractionBlock("4x0o+8x0e+3x1o+2x1e", "4x0o+8x0e+3x1o+2x1e",
                                        "1x0e+1x1o", edge_dim=6, radial_hidden=5,
                                        avg_num_neighbors=4.0).double())
    fused = FusedInteraction(block)
    generator = torch.Generator().manual_seed(2)
    nodes, edges = 7, 30
    h = torch.randn(nodes, block.irreps_in.dim, generator=generator, dtype=torch.float64)
    source = torch.randint(0, nodes, (edges,), generator=generator)
    target = torch.randint(0, nodes, (edges,), generator=generator)
    sh = torch.randn(edges, 4, generator=generator, dtype=torch.float64)
    scalars = torch.randn(edges, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        expected = block(h, source, target, sh, scalars)
        got = fused(h, source, target, sh, scalars)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12 * float(expected.abs().max()))


def test_fused_network_is_o3_and_translation_equivariant(batch):
    torch.manual_seed(0)
    net = randomised(build_denoiser("small", "equivariant", bond_hops=3).double().eval())
    fuse_for_inference(net)
    fn = denoiser_fn(net, batch, NOISE)
    inputs = {"pos": (batch[keys.POS], POSITION)}
    scale = output_scale(fn, inputs)
    assert scale > 1e-3
    assert max_equivariance_error(fn, inputs, "1x1o") < 1e-9 * max(1.0, scale)


def test_fusion_leaves_blocks_it_cannot_handle():
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", odd_gates=True).double()
    assert fuse_for_inference(net) == 0
    assert all(isinstance(layer.layer, InteractionBlock) for layer in net.interactions)


def test_dense_linear_reproduces_the_module():
    from e3nn import o3

    torch.manual_seed(0)
    linear = o3.Linear("3x0e+2x1o", "2x0e+4x1o").double()
    weight, bias = dense_linear(linear, linear.irreps_in.dim)
    x = torch.randn(5, linear.irreps_in.dim, dtype=torch.float64)
    assert torch.allclose(x @ weight + bias, linear(x), atol=1e-12)


def test_generate_samples_the_same_conformers_fused_or_not():
    """The bundled model through the generation sampler (guidance, refinement noise), fused
    and with e3nn's modules: the same conformers up to float32 rounding carried through 29
    steps."""
    from rdkit import Chem

    from conformer.generation.sampler import ModelSampler

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1"))
    draws = []
    for fused in (True, False):
        model = ConformerModel.load(None, "cpu", fused=fused)
        fused_blocks = sum(isinstance(layer.layer, FusedInteraction)
                           for layer in model.net.interactions)
        assert fused_blocks == (len(model.net.interactions) if fused else 0)
        sampler = ModelSampler(model, None, batch_size=4)
        draw = sampler.molecule_draws(mol, torch.Generator().manual_seed(5))
        draws.append(draw(4))
    assert np.abs(draws[0] - draws[1]).max() < 1e-3


def test_fused_network_passes_gradients_like_e3nn(batch):
    torch.manual_seed(0)
    net = randomised(build_denoiser("tiny", "equivariant").double().eval())
    fused = copy.deepcopy(net)
    fuse_for_inference(fused)
    grads = []
    for module in (net, fused):
        positions = batch[keys.POS].clone().requires_grad_(True)
        denoiser_fn(module, batch, NOISE)(positions).square().sum().backward()
        grads.append(positions.grad)
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-10 * float(grads[0].abs().max()))


def test_bench_fused_runs_and_reports_float64_agreement(capsys, monkeypatch):
    """benchmarks/bench_fused.py at toy size: it prints both timings and the ratio, and on a
    real GEOM-Drugs test molecule the float64 outputs agree to rounding."""
    import importlib.util
    import re
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fused.py"
    spec = importlib.util.spec_from_file_location("bench_fused", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_fused.py", "--molecules", "1", "--conformers",
                                      "2", "--repeats", "1"])
    try:
        module.main()
    finally:
        torch.set_num_threads(1)
    out = capsys.readouterr().out
    assert "4 blocks fused" in out and "ratio e3nn / fused" in out
    float64 = float(re.search(r"([0-9.e+-]+) A \(float64\)", out).group(1))
    assert float64 < 1e-9
