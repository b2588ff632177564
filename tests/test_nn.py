"""The denoiser and its blocks: O(3) + translation equivariance, permutation, shapes (float64)."""

import copy

import pytest
import torch
from e3nn import o3
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.data import keys
from conformer.data.batching import collate_molecules, with_positions
from conformer.data.features import featurize_mol
from conformer.data.records import molecule_graph
from conformer.nn import build_denoiser
from conformer.nn.denoiser import CIP_LABEL_COLUMN, CIP_R, CIP_S
from conformer.nn.graph import bond_hop_pairs, intra_graph_pairs, radius_graph
from conformer.nn.layers import InteractionBlock
from conformer.recm import export
from conformer.recm.haar import random_orthogonal
from tests.equivariance import POSITION, max_equivariance_error, output_scale, single_thread

SMILES = ("C[C@H](N)C(=O)O", "CC(=O)Nc1ccc(O)cc1", "F/C=C/Cl")


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def molecule_batch(smiles=SMILES, seed=1):
    """A float64 PyG batch of RDKit-embedded molecules, built as training builds its batches."""
    graphs = []
    for index, text in enumerate(smiles):
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        AllChem.EmbedMolecule(mol, randomSeed=seed + index)
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
        graphs.append(molecule_graph(featurize_mol(mol), pos=pos))
    return collate_molecules(graphs)


def denoiser_fn(net, batch, noise):
    def fn(pos):
        return net(with_positions(batch, pos), noise)
    return fn


@pytest.fixture(scope="module")
def batch():
    return molecule_batch()


def test_intra_graph_pairs_match_brute_force():
    graph = torch.tensor([0, 0, 0, 1, 2, 2])
    source, target = intra_graph_pairs(graph, 3)
    got = set(zip(source.tolist(), target.tolist(), strict=True))
    expected = {(i, j) for i in range(6) for j in range(6)
                if i != j and graph[i] == graph[j]}
    assert got == expected


def test_radius_graph_respects_cutoff_and_graphs():
    torch.manual_seed(0)
    pos = torch.randn(10, 3, dtype=torch.float64) * 3
    graph = torch.tensor([0] * 4 + [1] * 6)
    source, target = radius_graph(pos, graph, 2, 2.5)
    dist = (pos[:, None] - pos[None]).norm(dim=-1)
    expected = {(i, j) for i in range(10) for j in range(10)
                if i != j and graph[i] == graph[j] and dist[i, j] < 2.5}
    assert set(zip(source.tolist(), target.tolist(), strict=True)) == expected


def test_bond_hop_pairs_are_rdkit_topological_distances_within_each_molecule():
    smiles = ("CCCCCC", "C1CC1CO", "c1ccc2ccccc2c1", "CC(C)(C)C(=O)N")
    mols = [Chem.MolFromSmiles(text) for text in smiles]
    edges, offset, expected = [], 0, set()
    for mol in mols:
        distance = Chem.GetDistanceMatrix(mol)
        for bond in mol.GetBonds():
            a, b = bond.GetBeginAtomIdx() + offset, bond.GetEndAtomIdx() + offset
            edges += [(a, b), (b, a)]
        n = mol.GetNumAtoms()
        expected |= {(i + offset, j + offset, int(distance[i, j]))
                     for i in range(n) for j in range(n) if 2 <= distance[i, j] <= 3}
        offset += n
    source, target, hops = bond_hop_pairs(torch.tensor(edges).T, offset, 3)
    got = list(zip(source.tolist(), target.tolist(), hops.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert bond_hop_pairs(torch.tensor(edges).T, offset, 1)[0].numel() == 0


@pytest.mark.parametrize("bond_hops,reaches", [(1, False), (3, True)])
def test_hop_edges_carry_messages_three_bonds_away_when_atoms_are_far_apart(bond_hops, reaches):
    # at high noise no radius edge is left; one block then sees its bonded neighbours only,
    # unless pairs up to three bonds apart are edges of their own
    torch.manual_seed(0)
    butane = molecule_batch(("CCCC",))
    carbons = (butane.x[:, 0] == butane.x[0, 0]).nonzero().flatten()
    assert carbons.tolist() == [0, 1, 2, 3]  # RDKit keeps heavy atoms first, in SMILES order
    pos = (butane.pos * 100.0).requires_grad_(True)
    net = build_denoiser("tiny", "equivariant", num_layers=1, bond_hops=bond_hops).double()
    out = net(with_positions(butane, pos), torch.tensor([5.0], dtype=torch.float64))
    (gradient,) = torch.autograd.grad(out[0].sum(), pos)
    assert gradient[1].abs().max() > 1e-12
    assert bool(gradient[3].abs().max() > 1e-12) == reaches


def test_hop_edges_start_as_radius_edges_from_a_network_without_them():
    torch.manual_seed(0)
    plain = build_denoiser("tiny", "equivariant")
    with_hops = build_denoiser("tiny", "equivariant", bond_hops=3)
    with_hops.load_state_dict(plain.state_dict(), strict=True)
    expected = plain.radius_embedding.detach().expand(2, -1)
    assert torch.equal(with_hops.hop_embedding.weight.detach(), expected)
    with pytest.raises(ValueError, match="bond_hops"):
        build_denoiser("tiny", "equivariant", bond_hops=0)


@pytest.mark.parametrize("odd_gates,node_cross_products",
                         [(False, False), (True, False), (True, True)])
def test_interaction_block_is_equivariant(odd_gates, node_cross_products):
    torch.manual_seed(0)
    irreps_in, irreps_sh = o3.Irreps("4x0e+2x0o+2x1o+2x1e"), o3.Irreps.spherical_harmonics(2)
    # build in float64: e3nn stores Clebsch-Gordan constants in the default dtype, and the
    # float32 l = 2 constants alone break equivariance at ~1e-8
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        block = InteractionBlock(irreps_in, irreps_in, irreps_sh, 5, 8, 3.0, odd_gates=odd_gates,
                                 node_cross_products=node_cross_products)
    finally:
        torch.set_default_dtype(previous)
    assert (block.odd_gate is not None) == odd_gates
    assert (block.node_cross is not None) == node_cross_products
    source, target = intra_graph_pairs(torch.zeros(6, dtype=torch.long), 1)
    scalars = torch.randn(source.numel(), 5, dtype=torch.float64)

    def fn(h, pos):
        sh = o3.spherical_harmonics(irreps_sh, pos[source] - pos[target], True,
                                    normalization="component")
        return block(h, source, target, sh, scalars)

    inputs = {"h": (torch.randn(6, irreps_in.dim, dtype=torch.float64), irreps_in),
              "pos": (torch.randn(6, 3, dtype=torch.float64), POSITION)}
    assert block.residual
    assert max_equivariance_error(fn, inputs, block.irreps_out) < 1e-9 * max(
        1.0, output_scale(fn, inputs))


@pytest.mark.parametrize("preset,overrides", [("tiny", {}), ("small", {}),
                                               ("small", {"fine_radial": 16}),
                                               ("small", {"fine_radial": 16,
                                                          "pairwise_head": 16}),
                                               ("small", {"pairwise_head": 8,
                                                          "bond_hops": 3})])
def test_equivariant_denoiser_is_o3_and_translation_equivariant(batch, preset, overrides):
    torch.manual_seed(0)
    net = build_denoiser(preset, "equivariant", **overrides).double()
    fn = denoiser_fn(net, batch, torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64))
    inputs = {"pos": (batch[keys.POS], POSITION)}
    scale = output_scale(fn, inputs)
    assert scale > 1e-3  # not trivially zero
    assert max_equivariance_error(fn, inputs, "1x1o") < 1e-9 * max(1.0, scale)


def test_unconstrained_denoiser_is_not_equivariant(batch):
    torch.manual_seed(0)
    net = build_denoiser("tiny", "unconstrained").double()
    fn = denoiser_fn(net, batch, torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64))
    inputs = {"pos": (batch[keys.POS], POSITION)}
    assert max_equivariance_error(fn, inputs, "1x1o", translate=False) > 1e-4


@pytest.mark.parametrize("overrides", [{}, {"pairwise_head": 8}])
def test_exported_recm_denoiser_with_zero_gammas_is_equivariant(batch, overrides):
    torch.manual_seed(0)
    net = build_denoiser("tiny", "recm", **overrides).double()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    inputs = {"pos": (batch[keys.POS], POSITION)}
    # with gamma 1 the free branches break the symmetry ...
    for state in net.recm.states:
        state.gamma.fill_(1.0)
    assert max_equivariance_error(denoiser_fn(net, batch, noise), inputs, "1x1o") > 1e-6
    for state in net.recm.states:
        state.gamma.zero_()
    exported = export(net)
    assert all(layer.free is None for layer in exported.recm.layers)
    fn = denoiser_fn(exported, batch, noise)
    assert max_equivariance_error(fn, inputs, "1x1o") < 1e-9 * max(1.0, output_scale(fn, inputs))


@pytest.mark.parametrize("bond_hops", [1, 3])
def test_denoiser_is_permutation_equivariant(batch, bond_hops):
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", bond_hops=bond_hops).double()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    out = net(batch, noise)
    num_atoms = out.shape[0]
    # permute atoms within each molecule so the batch vector stays sorted
    perm = torch.cat([torch.nonzero(batch[keys.BATCH] == g).flatten()[
        torch.randperm(int((batch[keys.BATCH] == g).sum()))] for g in range(3)])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(num_atoms)
    permuted = with_positions(batch, batch.pos[perm])
    permuted.x, permuted.batch = batch.x[perm], batch.batch[perm]
    permuted.edge_index = inverse[batch.edge_index]
    assert torch.allclose(net(permuted, noise), out[perm], atol=1e-10)


def test_denoiser_runs_in_float32_and_backpropagates(batch):
    net = build_denoiser("tiny", "recm")
    batch32 = with_positions(batch, batch.pos.float())
    out = net(batch32, torch.rand(3))
    assert out.dtype == torch.float32 and out.shape == (batch[keys.POS].shape[0], 3)
    out.pow(2).mean().backward()
    assert all(len(state.pending_b) == 1 for state in net.recm.states)


def test_build_denoiser_rejects_unknown_names():
    with pytest.raises(ValueError, match="preset"):
        build_denoiser("huge")
    with pytest.raises(ValueError, match="mode"):
        build_denoiser("tiny", "magic")
    with pytest.raises(ValueError, match="num_layerz"):
        build_denoiser("tiny", num_layerz=3)


def test_fine_radial_basis_resolves_bond_length_changes():
    from conformer.nn.layers import GaussianRadialBasis

    coarse = GaussianRadialBasis(4.0, 8)
    fine = GaussianRadialBasis(2.0, 16, start=0.8)
    lengths = torch.tensor([1.40, 1.45], dtype=torch.float64)
    change = (fine(lengths)[1] - fine(lengths)[0]).abs().max()
    assert float(fine.centers[0]) == pytest.approx(0.8) and fine.width == pytest.approx(0.08)
    assert change > 3 * (coarse(lengths)[1] - coarse(lengths)[0]).abs().max()


def test_pairwise_head_contributes_and_is_equivariant_alone(batch):
    """The pairwise read-out by itself (node read-out zeroed) is nonzero and O(3)-equivariant."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", pairwise_head=8).double()
    with torch.no_grad():
        net.head.layer.linear.weight.zero_()
    fn = denoiser_fn(net, batch, torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64))
    inputs = {"pos": (batch[keys.POS], POSITION)}
    scale = output_scale(fn, inputs)
    assert scale > 1e-3
    assert max_equivariance_error(fn, inputs, "1x1o") < 1e-9 * max(1.0, scale)


def test_models_saved_before_the_pairwise_head_still_load(batch):
    """Older files stored the head's o3.Linear as ``head.layer.*``; they load unchanged."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant").double()
    old_style = {k.replace("head.layer.linear.", "head.layer."): v
                 for k, v in net.state_dict().items()}
    assert "head.layer.weight" in old_style
    fresh = build_denoiser("tiny", "equivariant").double()
    fresh.load_state_dict(old_style)
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(fresh(batch, sigma), net(batch, sigma))


def test_layers_with_equal_irreps_start_with_different_free_branches():
    """Layers 1 and 2 have the same irreps; their free branches are seeded by layer index."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", "recm", num_layers=3)
    second, third = net.interactions[1], net.interactions[2]
    assert second.irreps_free_in == third.irreps_free_in and second.irreps_out == third.irreps_out
    assert not torch.equal(second.free.net[0].weight, third.free.net[0].weight)
    torch.manual_seed(1)  # deterministic for a given RECM seed, whatever the global stream
    again = build_denoiser("tiny", "recm", num_layers=3)
    assert torch.equal(again.interactions[2].free.net[0].weight, third.free.net[0].weight)


def test_denoiser_state_in_the_old_layout_loads(batch):
    """Files written when the controller held the states (``recm.states.<i>.*``) load them."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", "recm").double()
    for index, state in enumerate(net.recm.states):
        state.gamma.fill_(0.25 * (index + 1))
        state.step.fill_(10 + index)
    names = ["interactions.0", "interactions.1", "head"]
    old = {}
    for key, value in net.state_dict().items():
        layer = next((i for i, n in enumerate(names) if key.startswith(f"{n}.state.")), None)
        old[key if layer is None else f"recm.states.{layer}.{key.split('.state.')[1]}"] = value
    assert not any(".state." in key for key in old)
    fresh = build_denoiser("tiny", "recm").double()
    fresh.load_state_dict(old)
    assert fresh.recm.gammas() == [0.25, 0.5, 0.75]
    assert [int(s.step) for s in fresh.recm.states] == [10, 11, 12]
    sigma = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(fresh.eval()(batch, sigma), net.eval()(batch, sigma))


def test_bundled_model_keeps_its_recm_state():
    from conformer.model_io import BUNDLED_MODEL, load_model

    stored = torch.load(BUNDLED_MODEL, map_location="cpu", weights_only=True)["state_dict"]
    net, _, _ = load_model()
    layer_names = {id(module): name for name, module in net.named_modules()}
    for index, layer in enumerate(net.recm.layers):
        for name in ("gamma", "step", "dropped", "b_count"):
            # the old layout (the file as shipped) or the new one (a re-exported file)
            old_key, new_key = f"recm.states.{index}.{name}", \
                f"{layer_names[id(layer)]}.state.{name}"
            stored_value = stored[old_key] if old_key in stored else stored[new_key]
            assert torch.equal(getattr(layer.state, name), stored_value), (index, name)
    assert int(net.recm.states[0].step) > 0  # trained, so not the defaults


STEREO_OVERRIDES = {"cip_rank_edges": True, "parity_readout": True}


def flipped_labels(batch):
    """``batch`` with every R and S label swapped (what mirroring the molecule does)."""
    features = batch[keys.ATOM_FEATURES].clone()
    label = features[:, CIP_LABEL_COLUMN]
    features[:, CIP_LABEL_COLUMN] = torch.where(label == CIP_R, CIP_S,
                                                torch.where(label == CIP_S, CIP_R, label))
    flipped = copy.copy(batch)
    flipped.x = features
    return flipped


def mirror_error(net, batch, flip_labels: bool, trials: int = 3) -> float:
    """Max |net(g x + t, labels') - g net(x)| over random reflections g (float64), with
    labels' the flipped labels or the same ones."""
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    plain = net(batch, noise)
    moved_batch = flipped_labels(batch) if flip_labels else batch
    generator = torch.Generator().manual_seed(5)
    worst = 0.0
    for _ in range(trials):
        rotation = random_orthogonal(generator, torch.float64, reflections=False)
        reflection = -rotation
        shift = torch.randn(3, generator=generator, dtype=torch.float64) * 3
        moved = net(with_positions(moved_batch, batch.pos @ reflection.T + shift), noise)
        worst = max(worst, float((moved - plain @ reflection.T).abs().max()))
    return worst


def test_pseudoscalar_stereo_label_makes_an_equivariant_model_tell_handedness(batch):
    """With the label as 0o the model is exactly O(3)-equivariant when the mirror flips R/S
    too, and not when the label is kept: it can represent which handedness is asked for."""
    assert (batch[keys.ATOM_FEATURES][:, CIP_LABEL_COLUMN] == CIP_S).any()
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", stereo_parity="0o", **STEREO_OVERRIDES).double()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    scale = float(net(batch, noise).abs().max())
    assert mirror_error(net, batch, flip_labels=True) < 1e-9 * max(1.0, scale)
    assert mirror_error(net, batch, flip_labels=False) > 1e-4 * scale
    # proper rotations with the label kept: equivariant as always
    fn = denoiser_fn(net, batch, noise)
    inputs = {"pos": (batch[keys.POS], POSITION)}
    assert max_equivariance_error(fn, inputs, "1x1o", reflections=False) < 1e-9 * max(1.0, scale)


def test_even_stereo_label_cannot_tell_handedness(batch):
    """The default (0e) equivariant model gives the mirror image whatever the label says."""
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", **STEREO_OVERRIDES).double()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    scale = float(net(batch, noise).abs().max())
    assert mirror_error(net, batch, flip_labels=False) < 1e-9 * max(1.0, scale)


def test_parity_readout_carries_pseudovectors_to_the_output():
    """The node read-out alone ignores 1e channels; the edge product read-out does not."""
    from conformer.nn.denoiser import OutputHead

    irreps = o3.Irreps("2x0e+2x1e")
    torch.manual_seed(0)
    edges = (torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2]))
    vectors = torch.randn(4, 3, dtype=torch.float64)
    edge_scalars = torch.randn(4, 3, dtype=torch.float64)
    envelope = torch.ones(4, dtype=torch.float64)
    h = torch.randn(3, irreps.dim, dtype=torch.float64)
    pseudovectors_changed = h.clone()
    pseudovectors_changed[:, 2:] += 1.0
    for parity_readout, changes in ((False, False), (True, True)):
        head = OutputHead(irreps, 3, 0, parity_readout).double()
        a = head(h, *edges, vectors, edge_scalars, envelope)
        b = head(pseudovectors_changed, *edges, vectors, edge_scalars, envelope)
        assert bool((a - b).abs().max() > 1e-6) == changes


def test_stereo_options_are_validated():
    with pytest.raises(ValueError, match="stereo_parity"):
        build_denoiser("tiny", "equivariant", stereo_parity="1o")
    with pytest.raises(ValueError, match="pseudoscalar_channels"):
        build_denoiser("tiny", "equivariant", stereo_parity="0o", pseudoscalar_channels=0)


def test_odd_gates_multiply_a_node_pseudoscalar_into_its_pseudovector():
    """A lone node (no edges, so no messages) holding a pseudoscalar s (0o) and a pseudovector
    n (1e): with odd gates its 1o output carries s * n (odd in s, along n); without them the
    1o output is linear in the node's 1o input alone, here zero, whatever s and n are."""
    irreps = o3.Irreps("2x0e+1x0o+1x1o+1x1e")
    no_edges = torch.zeros(0, dtype=torch.long)
    sh, edge_scalars = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)
    pseudovector = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)

    def vector_output(block, s):
        h = torch.cat([torch.tensor([0.5, -0.2, s], dtype=torch.float64),
                       torch.zeros(3, dtype=torch.float64), pseudovector]).unsqueeze(0)
        out = block(h, no_edges, no_edges, sh, edge_scalars)
        return out[0, irreps.slices()[2]]  # the 1o channel

    for odd_gates in (False, True):
        torch.manual_seed(0)
        block = InteractionBlock(irreps, irreps, "1x0e+1x1o", 3, 8, 3.0,
                                 odd_gates=odd_gates).double()
        assert block.irreps_out == irreps  # the option does not change the irreps
        with torch.no_grad():
            plus, minus = vector_output(block, 1.0), vector_output(block, -1.0)
        if not odd_gates:
            assert plus.abs().max() == 0 and minus.abs().max() == 0
            continue
        assert plus.norm() > 1e-3
        assert torch.allclose(minus, -plus, atol=1e-12)  # odd in the pseudoscalar
        # parallel to the node's pseudovector: the product s * n, no other direction exists
        assert float(torch.linalg.cross(plus, pseudovector).norm()) < 1e-12 * float(plus.norm())


def test_node_cross_products_give_a_node_the_normal_of_its_own_vectors():
    """A lone node (no messages) holding two polar vectors u, v (1o): with node cross
    products its 1e output gains a pseudovector along u x v; without, its 1e output is
    linear in its 1e input, here zero."""
    irreps = o3.Irreps("2x0e+2x1o+1x1e")
    no_edges = torch.zeros(0, dtype=torch.long)
    sh, edge_scalars = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)
    u = torch.tensor([1.0, 0.2, -0.3], dtype=torch.float64)
    v = torch.tensor([-0.4, 0.9, 0.5], dtype=torch.float64)
    h = torch.cat([torch.tensor([0.5, -0.2], dtype=torch.float64), u, v,
                   torch.zeros(3, dtype=torch.float64)]).unsqueeze(0)
    for node_cross_products in (False, True):
        torch.manual_seed(0)
        block = InteractionBlock(irreps, irreps, "1x0e+1x1o", 3, 8, 3.0,
                                 node_cross_products=node_cross_products).double()
        assert block.irreps_out == irreps
        with torch.no_grad():
            axial = block(h, no_edges, no_edges, sh, edge_scalars)[0, irreps.slices()[2]]
        if not node_cross_products:
            assert axial.abs().max() == 0
            continue
        # the only pseudovector two polar vectors make is their cross product
        normal = torch.linalg.cross(u, v)
        assert axial.norm() > 1e-3
        assert float(torch.linalg.cross(axial, normal).norm()) < 1e-12 * float(axial.norm())


@pytest.mark.parametrize("mode,node_cross_products",
                         [("equivariant", False), ("recm", False), ("equivariant", True)])
def test_odd_gate_denoiser_with_pseudoscalar_label_is_o3_equivariant(batch, mode,
                                                                     node_cross_products):
    """With odd gates and the label as 0o: exactly O(3)-equivariant (float64, random rotations
    and translations; reflections with R/S flipped as the mirror flips them), the label reaches
    the output, and a reflection that keeps the label is not a symmetry. In recm mode the
    exported model (every gamma 0) is the one checked."""
    assert (batch[keys.ATOM_FEATURES][:, CIP_LABEL_COLUMN] == CIP_S).any()
    torch.manual_seed(0)
    net = build_denoiser("tiny", mode, stereo_parity="0o", odd_gates=True,
                         node_cross_products=node_cross_products, **STEREO_OVERRIDES).double()
    if mode == "recm":
        for state in net.recm.states:
            state.gamma.zero_()
        net = export(net)
        assert all(layer.free is None for layer in net.recm.layers)
    assert all(layer.layer.odd_gate is not None for layer in net.interactions)
    net.eval()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    labelled = torch.nonzero(batch[keys.ATOM_FEATURES][:, CIP_LABEL_COLUMN] == CIP_S).flatten()
    source, target = batch.edge_index
    neighbours = source[torch.isin(target, labelled)]
    with torch.no_grad():
        plain = net(batch, noise)
        scale = float(plain.abs().max())
        # flipping R/S moves the centre's bonded neighbours, not just something far away
        change = (net(flipped_labels(batch), noise) - plain)[neighbours].norm(dim=-1)
        assert float(change.min()) > 1e-3 * scale
        assert mirror_error(net, batch, flip_labels=True) < 1e-9 * max(1.0, scale)
        assert mirror_error(net, batch, flip_labels=False) > 1e-4 * scale
        fn = denoiser_fn(net, batch, noise)
        inputs = {"pos": (batch[keys.POS], POSITION)}
        assert max_equivariance_error(fn, inputs, "1x1o", reflections=False) < 1e-9 * max(
            1.0, scale)


def test_odd_gate_denoiser_with_even_label_is_o3_equivariant(batch):
    """Odd gates add no handedness of their own: with the label as 0e the network gives the
    mirror image (label kept) and rotates with the molecule, to float64 precision."""
    torch.manual_seed(0)
    net = build_denoiser("small", "equivariant", odd_gates=True, node_cross_products=True,
                         **STEREO_OVERRIDES).double()
    fn = denoiser_fn(net, batch, torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64))
    inputs = {"pos": (batch[keys.POS], POSITION)}
    scale = output_scale(fn, inputs)
    assert scale > 1e-3
    assert max_equivariance_error(fn, inputs, "1x1o") < 1e-9 * max(1.0, scale)


def test_default_networks_are_unchanged_by_the_odd_gate_option(batch):
    """Networks without odd gates have the parameter names and, for the same seed, the
    outputs they had before the option existed (tests/golden/denoiser_default_outputs.json,
    written by revision 8030bc4), so every model file loads and behaves as before."""
    import json
    from pathlib import Path

    golden = json.loads((Path(__file__).parent / "golden" / "denoiser_default_outputs.json")
                        .read_text())
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    for case in golden["cases"]:
        torch.manual_seed(0)
        net = build_denoiser(case["preset"], case["mode"], **case["overrides"]).double().eval()
        assert not net.config.odd_gates
        assert sorted(name for name, _ in net.named_parameters()) == case["parameters"]
        with torch.no_grad():
            out = net(batch, noise)
        expected = torch.tensor(case["output"], dtype=torch.float64)
        assert float((out - expected).abs().max()) < 1e-9 * max(1.0, float(expected.abs().max()))


def test_reverse_edge_values_reads_each_edges_reverse():
    from conformer.nn.denoiser import reverse_edge_values

    source = torch.tensor([0, 1, 1, 2, 3])
    target = torch.tensor([1, 0, 2, 1, 0])
    values = torch.tensor([5, 6, 7, 8, 9])
    # 3 -> 0 has no reverse edge: 0
    assert reverse_edge_values(source, target, values, 4).tolist() == [6, 5, 8, 7, 0]


def test_cip_rank_out_edges_tell_a_centres_neighbours_apart(batch):
    """With ``cip_rank_out_edges`` the edges leaving a labelled centre carry each
    neighbour's CIP rank: changing that embedding moves the centre's neighbours (without
    the option nothing on those edges depends on the rank), and the network stays exactly
    O(3)-equivariant with R/S flipped under reflections."""
    labelled = torch.nonzero(torch.isin(batch[keys.ATOM_FEATURES][:, CIP_LABEL_COLUMN],
                                        torch.tensor([CIP_R, CIP_S]))).flatten()
    source, target = batch.edge_index
    neighbours = target[torch.isin(source, labelled)]
    assert len(neighbours) > 0
    with pytest.raises(ValueError, match="cip_rank_out_edges"):
        build_denoiser("tiny", "equivariant", cip_rank_out_edges=True)
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", stereo_parity="0o", cip_rank_out_edges=True,
                         **STEREO_OVERRIDES).double().eval()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        plain = net(batch, noise)
        scale = float(plain.abs().max())
        assert mirror_error(net, batch, flip_labels=True) < 1e-9 * max(1.0, scale)
        net.cip_rank_out_embedding.weight[1:] += 1.0  # ranks 1-4 only: centres' out-edges
        moved = (net(batch, noise) - plain)[neighbours].norm(dim=-1)
    assert float(moved.min()) > 1e-4 * scale


def _chirality_batch():
    # two centres (one R, one S in the same molecule), one centre with four heavy neighbours
    return molecule_batch(("C[C@H](N)C(=O)O", "N[C@@H](C)[C@H](O)CC", "C[C@](F)(Cl)CC"))


def test_chirality_inputs_measure_the_labelled_handedness():
    """label x V is +-1-ish with the sign of the geometry times the label; mirroring the
    positions flips V; the pushes sum to zero per molecule and raise label x V."""
    from conformer.nn.denoiser import chirality_inputs

    batch = _chirality_batch()
    scalar, vectors = chirality_inputs(batch[keys.POS], batch)
    label = batch[keys.ATOM_FEATURES][:, CIP_LABEL_COLUMN]
    centres = (label == CIP_R) | (label == CIP_S)
    assert int(centres.sum()) == 4
    assert (scalar[~centres] == 0).all() and (scalar[centres].abs() > 0.2).all()
    # embedded with the right stereo, every centre agrees with its label the same way
    signs = torch.sign(scalar[centres]).flatten()
    assert (signs == signs[0]).all()
    mirrored, _ = chirality_inputs(-batch[keys.POS], batch)
    assert torch.allclose(mirrored, -scalar)
    assert torch.allclose(vectors.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    step = batch[keys.POS] + 1e-3 * vectors * signs[0]
    moved, _ = chirality_inputs(step, batch)
    assert ((moved[centres] - scalar[centres]) * signs[0] > 0).all()


@pytest.mark.parametrize("parity", ["0e", "0o"])
def test_chirality_features_keep_the_label_parity_rules(parity):
    """0o label: exactly O(3)-equivariant when the mirror flips R/S (not otherwise), so an
    equivariant network can tell handedness. 0e label: exactly O(3)-equivariant with the label
    kept, so it cannot. Rotations and translations: equivariant either way."""
    batch = _chirality_batch()
    torch.manual_seed(0)
    net = build_denoiser("tiny", "equivariant", stereo_parity=parity, chirality_features=True,
                         **STEREO_OVERRIDES).double()
    noise = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    scale = float(net(batch, noise).abs().max())
    assert scale > 1e-3
    exact, broken = (True, False) if parity == "0o" else (False, True)
    assert mirror_error(net, batch, flip_labels=exact) < 1e-9 * max(1.0, scale)
    assert mirror_error(net, batch, flip_labels=broken) > 1e-4 * scale
    fn = denoiser_fn(net, batch, noise)
    inputs = {"pos": (batch[keys.POS], POSITION)}
    assert max_equivariance_error(fn, inputs, "1x1o", reflections=False) < 1e-9 * max(1.0, scale)


def test_chirality_features_need_the_ranks():
    with pytest.raises(ValueError, match="chirality_features needs cip_rank_edges"):
        build_denoiser("tiny", "equivariant", chirality_features=True)
