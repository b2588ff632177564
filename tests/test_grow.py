"""``model.init_grow``: a network with added inputs and read-outs starts as the one it grows from."""

import pytest
import torch

from conformer.errors import UserInputError
from conformer.nn import build_denoiser
from conformer.nn.grow import grow_into
from conformer.recm.layer import ModulatedLayer
from tests.equivariance import single_thread
from tests.test_nn import _chirality_batch

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

GROWN = {"cip_rank_edges": True, "chirality_features": True, "parity_readout": True,
         "cip_rank_out_edges": True}


def _randomised(net):
    """Every weight away from its initial value (zero biases, unit gates would hide a wrong
    copy), in float64."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return net.double()


def _trunk(net):
    """The network without its RECM branches (what the grown network adds on its own)."""
    for module in net.modules():
        if isinstance(module, ModulatedLayer):
            if module.free is not None:
                module.drop_branch()
            if module.reflection is not None:
                module.drop_reflection_branch()
    return net


@pytest.mark.parametrize("mode", ["equivariant", "recm"])
def test_grown_network_computes_what_the_smaller_one_did(mode):
    batch = _chirality_batch()
    small = _trunk(_randomised(build_denoiser("tiny", mode, bond_hops=3, pairwise_head=8)))
    large = build_denoiser("tiny", "recm", bond_hops=3, pairwise_head=8, **GROWN).double()
    fresh = grow_into(large, small)
    assert any("cip_rank_embedding" in name for name in fresh)
    assert any(".reflection." in name for name in fresh)  # branches start afresh
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    expected = small(batch, noise)
    grown = _trunk(large)(batch, noise)
    assert float(expected.abs().max()) > 1e-2
    assert torch.allclose(grown, expected, rtol=0, atol=1e-10)


def test_grown_network_can_learn_from_its_new_inputs():
    """The new paths start at zero but have gradients: training moves them."""
    batch = _chirality_batch()
    small = _trunk(_randomised(build_denoiser("tiny", "equivariant", bond_hops=3)))
    large = _trunk(build_denoiser("tiny", "recm", bond_hops=3, **GROWN).double())
    grow_into(large, small)
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    large(batch, noise).pow(2).sum().backward()
    block = large.interactions[0].layer
    old_paths = len(small.interactions[0].layer.mix.instructions)
    sizes = [i.path_shape[0] * i.path_shape[1] for i in block.mix.instructions]
    new_paths = block.mix.weight.grad[sum(sizes[:old_paths]):]
    assert new_paths.numel() > 0 and float(new_paths.abs().max()) > 0
    new_inputs = block.self_connection.weight.grad[
        small.interactions[0].layer.self_connection.weight.numel():]
    assert new_inputs.numel() > 0 and float(new_inputs.abs().max()) > 0
    assert float(large.cip_rank_embedding.weight.grad.abs().max()) > 0
    assert float(large.head.layer.edge_weights.layer1.weight.grad.abs().max()) > 0


@pytest.mark.parametrize("other", [{"scalar_channels": 12}, {"num_layers": 3},
                                   {"stereo_parity": "0o", "pseudoscalar_channels": 2}])
def test_networks_that_differ_otherwise_are_refused(other):
    small = build_denoiser("tiny", "equivariant")
    large = build_denoiser("tiny", "recm", **{**GROWN, **other})
    with pytest.raises(UserInputError, match="init_grow"):
        grow_into(large, small)


def test_init_grow_starts_a_run_from_a_model_file(tmp_path, capsys):
    from conformer.model_io import save_model
    from conformer.train.run import load_initial_weights

    small = _trunk(_randomised(build_denoiser("tiny", "recm", bond_hops=3)))
    path = tmp_path / "small.pt"
    save_model(small.float(), {"preset": "tiny", "mode": "recm",
                               "overrides": {"bond_hops": 3}, "hydrogens": "implicit"},
               {"sample_steps": 5}, path)
    large = build_denoiser("tiny", "recm", bond_hops=3, **GROWN)
    with pytest.raises(UserInputError, match="its network is not the one"):
        load_initial_weights(large, path, "implicit")  # without init_grow: strict
    large = build_denoiser("tiny", "recm", bond_hops=3, **GROWN)
    load_initial_weights(large, path, "implicit", grow=True)
    assert "model.init_grow: started from" in capsys.readouterr().out
    assert large.interactions[0].free is not None  # the branches are kept, afresh
    batch = _chirality_batch()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(_trunk(large).double()(batch, noise), small.double()(batch, noise),
                          rtol=0, atol=1e-5)
