"""The E(3)-equivariant denoiser: molecular graph + noisy coordinates -> one vector per atom."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from conformer.data import keys
from conformer.data.features import (
    ATOM_FEATURE_CARDINALITIES,
    ATOM_FEATURE_NAMES,
    BOND_FEATURE_CARDINALITIES,
    CIP_NEIGHBOUR_RANK_CARDINALITY,
)
from conformer.errors import UserInputError
from conformer.nn.graph import bond_hop_pairs, radius_graph
from conformer.nn.layers import (
    GaussianRadialBasis,
    InteractionBlock,
    NoiseEmbedding,
    smooth_cutoff,
)
from conformer.recm import ModulatedLayer, RECMConfig, RECMController


@dataclass(frozen=True)
class DenoiserConfig:
    """Size of the network. scalar/vector channels: multiplicities of 0e and of 1o and 1e
    (and 0o) in the hidden irreps; lmax: of the edge spherical harmonics (1 or 2); cutoff of
    the radius graph in Angstrom; avg_num_neighbors: message normalisation.
    fine_radial: extra narrow Gaussians of the edge length over ``fine_range`` (Angstrom),
    where covalent bonds lie: the coarse basis (width cutoff / (num_radial - 1), about 0.5 A)
    cannot resolve the 0.01-0.1 A deviations that decide whether a bond length is right.
    0 = none.
    pairwise_head: hidden width of the pairwise read-out (0 = none: the node read-out alone).
    It adds, per edge, an invariant MLP weight times the unit edge vector, so a bond's length
    correction is predicted per bond instead of being assembled from a few node vector
    channels, which is what limits bond-length accuracy.

    Stereo inputs (every default reproduces the networks trained before they existed):
    stereo_parity: how the tetrahedral R/S label enters. ``"0e"``: as a category of the even
    atom embedding (a mirrored molecule keeps its label, so no O(3)-equivariant network can
    tell which handedness the label asks for). ``"0o"``: as a pseudoscalar, +1 for R and -1
    for S times a learned even function of the atom, in ``pseudoscalar_channels`` 0o channels
    of layer 0's input; the even embedding then only says "labelled centre". The label is
    then a proper O(3) input (mirror the molecule and flip R/S), so an equivariant network can
    represent handedness.
    cip_rank_edges: add, per bond edge, an embedding of the source's CIP priority among the
    target's neighbours (``keys.CIP_NEIGHBOUR_RANK``): R/S is defined relative to this order.
    cip_rank_out_edges: also add, per bond edge leaving a labelled centre, an embedding (a
    table of its own) of the target's CIP priority among the centre's neighbours, i.e. the
    rank of the reverse edge. Without it the ranks reach the centre only: what the centre
    sends to its neighbours is the same function for each of them (up to bond type and
    length), so a label-dependent push it sends is the same rotation for every neighbour,
    which cannot change the centre's handedness (docs/results/chirality_tiny.md, session 7).
    parity_readout: the read-out also sums, over edges, a tensor product of the source's
    features with the edge's spherical harmonics onto 1o, so 1e (and, through the trunk, 0o)
    channels reach the output; without it the node read-out sees 1o channels only.
    odd_gates: each interaction block also gates its vector channels by odd scalars (0o,
    through tanh) times vectors of the opposite parity (1e -> 1o, 1o -> 1e; ``conformer.nn.
    layers.odd_gate_for``), so a node can multiply a pseudoscalar such as the 0o stereo label
    into a pseudovector it holds (e.g. the normal of its CIP-ranked neighbours) and get a
    displacement-like 1o vector. Strictly O(3)-equivariant; the hidden irreps do not change.
    node_cross_products: each interaction block adds cross products of a node's own 1o
    channels to its 1e channels before the gate (``InteractionBlock``), so the rank-oriented
    normal of a centre's neighbours, the pseudovector odd gates multiply by the label, is
    formed at the centre in one block. Strictly O(3)-equivariant; irreps unchanged.
    bond_hops: atoms up to this many bonds apart are joined by an edge whatever their distance
    (1 = bonds only). Pairs 2 and 3 bonds apart fix bond angles and torsions, and at high noise,
    when radius edges are few, they widen what ``num_layers`` blocks see from ``num_layers``
    bonds to ``num_layers x bond_hops``. Each hop count has its own edge type; a network
    without them (``model.init_from``) lends them its radius-edge type, so it starts as it was
    at the data scale.
    chirality_features: give layer 0 the labelled centres' handedness as it stands in the
    input positions, with the label multiplied in (``chirality_inputs``): per R/S centre c
    with CIP-ranked neighbours 1, 2, 3 (u_k = x_k - x_c), the signed volume
    V = u1 . (u2 x u3) / (|u1| |u2| |u3|) (a pseudoscalar) on c, and the pseudovectors
    dV/dx_k (the direction that moves atom k to raise V; they sum to 0 over c and its
    neighbours, scaled to unit size) on c and the three neighbours, each times the label sign
    (+1 R, -1 S). With the label as 0o they are a 0e and a 1o input, so an equivariant network
    can output "move towards the label" directly (what stereo guidance does from outside);
    with the label as 0e they are a 0o and a 1e input: an O(3)-equivariant network still
    cannot use them (a mirrored molecule keeps its label), a reflection-odd RECM branch can
    (1e -> 1o). Needs ``cip_rank_edges``."""

    num_layers: int = 3
    scalar_channels: int = 32
    vector_channels: int = 8
    pseudoscalar_channels: int = 4
    lmax: int = 1
    cutoff: float = 5.0
    num_radial: int = 12
    radial_hidden: int = 32
    edge_embedding_dim: int = 8
    avg_num_neighbors: float = 20.0
    fine_radial: int = 0
    fine_range: tuple[float, float] = (0.8, 2.0)
    pairwise_head: int = 0
    stereo_parity: str = "0e"
    cip_rank_edges: bool = False
    cip_rank_out_edges: bool = False
    parity_readout: bool = False
    odd_gates: bool = False
    node_cross_products: bool = False
    bond_hops: int = 1
    chirality_features: bool = False

    def __post_init__(self) -> None:
        if self.stereo_parity not in STEREO_PARITIES:
            raise ValueError(f"stereo_parity {self.stereo_parity!r}: choose one of "
                             f"{', '.join(STEREO_PARITIES)}")
        if self.stereo_parity == "0o" and self.pseudoscalar_channels < 1:
            raise ValueError("stereo_parity '0o' needs pseudoscalar_channels >= 1")
        if self.cip_rank_out_edges and not self.cip_rank_edges:
            raise ValueError("cip_rank_out_edges needs cip_rank_edges")
        if self.chirality_features and not self.cip_rank_edges:
            raise ValueError("chirality_features needs cip_rank_edges")
        if not 1 <= self.bond_hops <= 4:
            raise ValueError(f"bond_hops {self.bond_hops}: choose 1 (bonds only) to 4")

    def input_irreps(self) -> o3.Irreps:
        """Irreps of layer 0's input: the even atom embedding, plus the pseudoscalar stereo
        channels when ``stereo_parity == "0o"``."""
        parts = [f"{self.scalar_channels}x0e"]
        if self.stereo_parity == "0o":
            parts.append(f"{self.pseudoscalar_channels}x0o")
        if self.chirality_features:  # label times V, label times dV/dx (see the docstring)
            parts += ["1x0e", "1x1o"] if self.stereo_parity == "0o" else ["1x0o", "1x1e"]
        return o3.Irreps("+".join(parts))

    def hidden_irreps(self) -> o3.Irreps:
        parts = [f"{self.scalar_channels}x0e"]
        if self.pseudoscalar_channels:
            parts.append(f"{self.pseudoscalar_channels}x0o")
        parts += [f"{self.vector_channels}x1o", f"{self.vector_channels}x1e"]
        return o3.Irreps("+".join(parts)).sort().irreps.simplify()


STEREO_PARITIES = ("0e", "0o")
CIP_LABEL_COLUMN = ATOM_FEATURE_NAMES.index("cip_label")
CIP_R, CIP_S = 1, 2  # values of the cip_label column (conformer.data.features)

PRESETS: dict[str, DenoiserConfig] = {
    "tiny": DenoiserConfig(num_layers=2, scalar_channels=8, vector_channels=4,
                           pseudoscalar_channels=2, num_radial=8, radial_hidden=16,
                           edge_embedding_dim=4),
    # sized for CPU training (see benchmarks/bench_denoiser.py): 4 A cutoff, narrow channels
    "small": DenoiserConfig(scalar_channels=16, vector_channels=8, pseudoscalar_channels=4,
                            cutoff=4.0, num_radial=8, radial_hidden=16),
    "base": DenoiserConfig(num_layers=6, scalar_channels=128, vector_channels=32,
                           pseudoscalar_channels=16, lmax=2, num_radial=16, radial_hidden=64,
                           edge_embedding_dim=16),
}

RADIUS_EDGE_TYPE = BOND_FEATURE_CARDINALITIES[0]  # one past the bond types


class CategoricalEmbedding(nn.Module):
    """One embedding per categorical column, summed: [M, columns] int64 -> [M, dim]."""

    def __init__(self, cardinalities, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return sum(table(features[:, i]) for i, table in enumerate(self.tables))


class OutputHead(nn.Module):
    """The equivariant read-out: node features -> one ``1o`` vector per atom.

    ``linear(h)`` plus, when ``pairwise_hidden`` > 0, ``sum_j w_ij (x_i - x_j) / |x_i - x_j|``
    over the edges j -> i, with ``w_ij`` an MLP of the two atoms' ``0e`` features and the
    edge's scalars: invariant, so the term is O(3)-equivariant (pseudoscalars are left out
    because they flip sign under reflection). Radius edges fade out with the cutoff envelope.

    forward(h [N, irreps_in.dim], edge_source [E], edge_target [E], edge_vectors [E, 3]
    (x_source - x_target, Angstrom), edge_scalars [E, edge_dim], envelope [E]) -> [N, 3].
    """

    def __init__(self, irreps_in, edge_dim: int, pairwise_hidden: int, parity_readout=False,
                 irreps_sh="1x0e+1x1o", radial_hidden: int = 16, avg_num_neighbors=20.0):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        self.linear = o3.Linear(irreps_in, "1x1o")
        self.edge_product = None
        if parity_readout:
            # every path of (source features) x (edge harmonics) that lands on 1o; 1e x 1o is
            # the one through which a handedness signal (0o, 1e channels) reaches the output
            self.irreps_sh = o3.Irreps(irreps_sh)
            self.edge_product = o3.FullyConnectedTensorProduct(
                irreps_in, self.irreps_sh, "1x1o", shared_weights=False, internal_weights=False)
            self.edge_weights = e3nn_nn.FullyConnectedNet(
                [edge_dim, radial_hidden, self.edge_product.weight_numel],
                torch.nn.functional.silu)
            self.edge_norm = 1.0 / math.sqrt(avg_num_neighbors)
        scalar_index = [torch.arange(piece.start, piece.stop)
                        for (_, ir), piece in zip(irreps_in, irreps_in.slices(), strict=True)
                        if ir == o3.Irrep("0e")]
        self.register_buffer("scalar_index", torch.cat(scalar_index), persistent=False)
        self.pairwise = None
        if pairwise_hidden:
            num_scalars = int(self.scalar_index.numel())
            self.pairwise = nn.Sequential(
                nn.Linear(2 * num_scalars + edge_dim, pairwise_hidden), nn.SiLU(),
                nn.Linear(pairwise_hidden, pairwise_hidden), nn.SiLU(),
                nn.Linear(pairwise_hidden, 1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved before the pairwise read-out existed stored the o3.Linear directly
        for name in ("weight", "bias", "output_mask"):
            if prefix + name in state_dict:
                state_dict[prefix + "linear." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, h, edge_source, edge_target, edge_vectors, edge_scalars, envelope):
        out = self.linear(h)
        if self.edge_product is not None:
            edge_sh = o3.spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True,
                                             normalization="component") * envelope.unsqueeze(-1)
            messages = self.edge_product(h[edge_source], edge_sh,
                                         self.edge_weights(edge_scalars))
            out = out + scatter(messages, edge_target, 0, h.shape[0], reduce="sum") * self.edge_norm
        if self.pairwise is None:
            return out
        scalars = h[:, self.scalar_index]
        weight = self.pairwise(torch.cat(
            [scalars[edge_target], scalars[edge_source], edge_scalars], dim=-1))
        # edge_vectors point from the target to the source: a positive weight pushes the
        # target away from the source, i.e. lengthens the edge
        length = edge_vectors.norm(dim=-1, keepdim=True).clamp(min=1e-2)
        push = -edge_vectors / length * (weight * envelope.unsqueeze(-1))
        return out + scatter(push, edge_target, 0, h.shape[0], reduce="sum")


class Denoiser(nn.Module):
    """``net(batch, noise_conditioning [B]) -> [N_total, 3]``, one ``1o`` vector per atom.

    batch: a torch_geometric ``Batch`` (``conformer.data.batching.collate_molecules``; fields in
    conformer.data.keys): x [N, 9] atom features, edge_index [2, E] bonds, edge_attr [E, 4]
    bond features, pos [N, 3] (Angstrom), batch [N] (sorted), num_graphs; cip_neighbour_rank
    [E] when ``config.cip_rank_edges``. Only relative positions
    enter, so the output is translation invariant; in ``equivariant`` mode (or after export
    with every gamma 0) it is exactly O(3)-equivariant. ``net.recm`` is the RECM controller;
    each modulated layer keeps its RECM state under ``<layer>.state``.
    """

    def __init__(self, config: DenoiserConfig, recm: RECMConfig):
        super().__init__()
        self.config = config
        self.recm_config = recm
        hidden = config.hidden_irreps()
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.lmax)
        scalars = config.scalar_channels
        self.atom_embedding = CategoricalEmbedding(ATOM_FEATURE_CARDINALITIES, scalars)
        self.noise_embedding = NoiseEmbedding(scalars)
        self.bond_embedding = CategoricalEmbedding(BOND_FEATURE_CARDINALITIES,
                                                   config.edge_embedding_dim)
        self.cip_rank_embedding = (nn.Embedding(CIP_NEIGHBOUR_RANK_CARDINALITY,
                                                config.edge_embedding_dim)
                                   if config.cip_rank_edges else None)
        self.cip_rank_out_embedding = (nn.Embedding(CIP_NEIGHBOUR_RANK_CARDINALITY,
                                                    config.edge_embedding_dim)
                                       if config.cip_rank_out_edges else None)
        # 0o input: sign of the label (+1 R, -1 S) times an even function of the atom
        self.stereo_pseudoscalar = (nn.Linear(scalars, config.pseudoscalar_channels)
                                    if config.stereo_parity == "0o" else None)
        self.radius_embedding = nn.Parameter(torch.randn(config.edge_embedding_dim))
        self.hop_embedding = (nn.Embedding(config.bond_hops - 1, config.edge_embedding_dim)
                              if config.bond_hops > 1 else None)
        self.radial_basis = GaussianRadialBasis(config.cutoff, config.num_radial)
        self.fine_basis = (GaussianRadialBasis(config.fine_range[1], config.fine_radial,
                                               start=config.fine_range[0])
                           if config.fine_radial else None)
        edge_dim = config.num_radial + config.fine_radial + config.edge_embedding_dim
        irreps = config.input_irreps()
        layers = []
        for index in range(config.num_layers):
            block = InteractionBlock(irreps, hidden, self.irreps_sh, edge_dim,
                                     config.radial_hidden, config.avg_num_neighbors,
                                     odd_gates=config.odd_gates,
                                     node_cross_products=config.node_cross_products)
            layers.append(ModulatedLayer(block, irreps, block.irreps_out, recm,
                                         irreps_free_in=irreps + o3.Irreps("1x1o"),
                                         layer_index=index))
            irreps = block.irreps_out
        self.interactions = nn.ModuleList(layers)
        head = OutputHead(irreps, edge_dim, config.pairwise_head, config.parity_readout,
                          self.irreps_sh, config.radial_hidden, config.avg_num_neighbors)
        self.head = ModulatedLayer(head, irreps, "1x1o", recm,
                                   irreps_free_in=irreps + o3.Irreps("1x1o"),
                                   layer_index=len(layers))
        self.recm = RECMController([*layers, self.head], recm)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights of a network without hop edges (model.init_from): hop edges start as the
        # radius edges they were at the data scale (see DenoiserConfig.bond_hops)
        hop_key, radius_key = prefix + "hop_embedding.weight", prefix + "radius_embedding"
        if self.hop_embedding is not None and hop_key not in state_dict \
                and radius_key in state_dict:
            state_dict[hop_key] = state_dict[radius_key].detach().expand(
                self.hop_embedding.num_embeddings, -1).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def edges(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bond edges, then hop edges (``config.bond_hops`` > 1), then radius edges that are
        neither: (source [E], target [E], edge type embedding [E, edge_embedding_dim], 1.0 for
        bond and hop edges (always present) else 0.0 [E])."""
        pos, graph = batch.pos, batch.batch
        num_atoms = pos.shape[0]
        bond_source, bond_target = batch.edge_index
        radius_source, radius_target = radius_graph(pos, graph, batch.num_graphs,
                                                    self.config.cutoff)
        pair_id = bond_source * num_atoms + bond_target
        hop_type = None
        if self.hop_embedding is not None:
            hop_source, hop_target, hops = bond_hop_pairs(batch.edge_index, num_atoms,
                                                          self.config.bond_hops)
            pair_id = torch.cat([pair_id, hop_source * num_atoms + hop_target])
            hop_type = self.hop_embedding(hops - 2)
        is_bond = torch.isin(radius_source * num_atoms + radius_target, pair_id)
        radius_source, radius_target = radius_source[~is_bond], radius_target[~is_bond]
        bond_type = self.bond_embedding(batch.edge_attr)
        if self.cip_rank_embedding is not None:
            if keys.CIP_NEIGHBOUR_RANK not in batch:
                raise UserInputError(
                    "this model reads CIP neighbour ranks (cip_rank_edges), which records "
                    "prepared before FEATURE_VERSION 2 lack: rerun `conformer prepare`")
            ranks = batch[keys.CIP_NEIGHBOUR_RANK]
            bond_type = bond_type + self.cip_rank_embedding(ranks)
            if self.cip_rank_out_embedding is not None:
                bond_type = bond_type + self.cip_rank_out_embedding(
                    reverse_edge_values(bond_source, bond_target, ranks, num_atoms))
        radius_type = self.radius_embedding.to(pos.dtype).expand(radius_source.numel(), -1)
        if hop_type is not None:
            bond_source = torch.cat([bond_source, hop_source])
            bond_target = torch.cat([bond_target, hop_target])
            bond_type = torch.cat([bond_type, hop_type])
        source = torch.cat([bond_source, radius_source])
        target = torch.cat([bond_target, radius_target])
        envelope = torch.cat([torch.ones_like(bond_source, dtype=pos.dtype),
                              torch.zeros_like(radius_source, dtype=pos.dtype)])
        return source, target, torch.cat([bond_type.to(pos.dtype), radius_type]), envelope

    def node_inputs(self, atom_features: torch.Tensor, dtype) -> torch.Tensor:
        """The even atom embedding [N, scalar_channels]. With ``stereo_parity == "0o"`` R and
        S share one category here (the pseudoscalar carries which): an even feature that
        changed with the label would break the O(3) symmetry "mirror and flip R/S"."""
        if self.config.stereo_parity == "0o":
            atom_features = atom_features.clone()
            column = atom_features[:, CIP_LABEL_COLUMN]
            column[column == CIP_S] = CIP_R
        return self.atom_embedding(atom_features).to(dtype)

    def forward(self, batch: Batch, noise_conditioning: torch.Tensor) -> torch.Tensor:
        pos, graph = batch.pos, batch.batch
        num_graphs = batch.num_graphs
        source, target, edge_type, is_bond = self.edges(batch)
        vectors = pos[source] - pos[target]
        length = vectors.norm(dim=-1)
        # radius edges fade out at the cutoff (smooth in pos); bond edges are always present
        envelope = is_bond + (1 - is_bond) * smooth_cutoff(length, self.config.cutoff)
        radial = self.radial_basis(length)
        if self.fine_basis is not None:
            radial = torch.cat([radial, self.fine_basis(length)], dim=-1)
        edge_scalars = torch.cat([radial * envelope.unsqueeze(-1), edge_type], dim=-1)
        edge_sh = o3.spherical_harmonics(self.irreps_sh, vectors, normalize=True,
                                         normalization="component") * envelope.unsqueeze(-1)
        centred = pos - scatter(pos, graph, 0, num_graphs, reduce="mean")[graph]
        noise = self.noise_embedding(noise_conditioning.to(pos.dtype))
        h = self.node_inputs(batch.x, pos.dtype) + noise[graph]
        if self.stereo_pseudoscalar is not None:
            label = batch.x[:, CIP_LABEL_COLUMN]
            sign = (label == CIP_R).to(pos.dtype) - (label == CIP_S).to(pos.dtype)
            h = torch.cat([h, sign.unsqueeze(-1) * self.stereo_pseudoscalar(h)], dim=-1)
        if self.config.chirality_features:
            h = torch.cat([h, *chirality_inputs(pos, batch)], dim=-1)
        for layer in self.interactions:
            h = layer(h, source, target, edge_sh, edge_scalars,
                      free_input=torch.cat([h, centred], dim=-1), graph=graph)
        return self.head(h, source, target, vectors, edge_scalars, envelope,
                         free_input=torch.cat([h, centred], dim=-1), graph=graph)


def ranked_centres(batch: Batch, dtype=torch.float32, reader: str = "chirality_features",
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The R/S centres of ``batch`` that have three CIP-ranked neighbours among its bond
    edges: (centres [C] atom indices, ring [C, 3] the neighbours of CIP rank 1, 2, 3 of each,
    sign [N] +1 on R atoms, -1 on S atoms, 0 elsewhere, of ``dtype``). ``reader`` names what
    needs the ranks, for the error on records prepared without them."""
    if keys.CIP_NEIGHBOUR_RANK not in batch:
        raise UserInputError(
            f"{reader} reads CIP neighbour ranks, which records prepared before "
            "FEATURE_VERSION 2 lack: rerun `conformer prepare`")
    label = batch.x[:, CIP_LABEL_COLUMN]
    sign = (label == CIP_R).to(dtype) - (label == CIP_S).to(dtype)
    source, target = batch.edge_index
    ranks = batch[keys.CIP_NEIGHBOUR_RANK]
    # neighbours[c, k]: the neighbour of rank k + 1 of centre c (-1: none)
    neighbours = torch.full((batch.x.shape[0], 3), -1, dtype=torch.long,
                            device=batch.x.device)
    ranked = (ranks >= 1) & (ranks <= 3) & (sign[target] != 0)
    neighbours[target[ranked], ranks[ranked] - 1] = source[ranked]
    centres = torch.nonzero((neighbours >= 0).all(dim=1) & (sign != 0)).flatten()
    return centres, neighbours[centres], sign


def chirality_inputs(pos: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(label x V [N, 1], label x dV/dx [N, 3]) for ``DenoiserConfig.chirality_features``:
    zero on atoms that are no R/S centre nor one of its three highest-ranked neighbours.

    pos [N, 3] (any length unit: V is a cosine-like ratio in [-1, 1] and the vectors are
    scaled to unit size, so both are scale-free); batch carries the atom features (CIP label
    column) and ``keys.CIP_NEIGHBOUR_RANK`` per bond edge.
    """
    num_atoms = pos.shape[0]
    centres, ring, sign = ranked_centres(batch, pos.dtype)
    scalar = pos.new_zeros(num_atoms, 1)
    vectors = pos.new_zeros(num_atoms, 3)
    if centres.numel() == 0:
        return scalar, vectors
    u = pos[ring] - pos[centres].unsqueeze(1)  # [C, 3, 3]
    norms = u.norm(dim=-1).clamp(min=1e-6)  # [C, 3]
    unit = u / norms.unsqueeze(-1)
    # dV/du_k for V = u1 . (u2 x u3) on unit vectors: the cross product of the other two
    grads = torch.stack([torch.linalg.cross(unit[:, 1], unit[:, 2], dim=-1),
                         torch.linalg.cross(unit[:, 2], unit[:, 0], dim=-1),
                         torch.linalg.cross(unit[:, 0], unit[:, 1], dim=-1)], dim=1)
    volume = (unit[:, 0] * grads[:, 0]).sum(-1)  # [C]
    centre_sign = sign[centres]
    scalar = scalar.index_add(0, centres, (centre_sign * volume).unsqueeze(-1))
    # each neighbour moves along its gradient, the centre against their sum (V depends on
    # differences only, so the four gradients sum to zero: translation invariant)
    pushes = centre_sign[:, None, None] * grads  # [C, 3, 3]
    vectors = vectors.index_add(0, ring.flatten(), pushes.reshape(-1, 3))
    vectors = vectors.index_add(0, centres, -pushes.sum(dim=1))
    return scalar, vectors


def reverse_edge_values(source: torch.Tensor, target: torch.Tensor, values: torch.Tensor,
                        num_atoms: int) -> torch.Tensor:
    """Per directed edge source -> target [E], the value [E] of its reverse edge
    target -> source, or 0 where the reverse edge is not among the edges."""
    key = source * num_atoms + target
    order = torch.argsort(key)
    sorted_key = key[order]
    reverse = target * num_atoms + source
    where = torch.searchsorted(sorted_key, reverse).clamp(max=max(len(key) - 1, 0))
    if len(key) == 0:
        return values.clone()
    found = sorted_key[where] == reverse
    return torch.where(found, values[order[where]], torch.zeros_like(values))


def build_denoiser(preset: str = "small", mode: str = "recm", **overrides) -> Denoiser:
    """Build a denoiser from a size preset (tiny, small, base) and a RECM mode.

    overrides: fields of DenoiserConfig or RECMConfig (e.g. ``num_layers=4``, ``beta=0.02``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown denoiser preset {preset!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    size_fields = {f.name for f in dataclasses.fields(DenoiserConfig)}
    recm_fields = {f.name for f in dataclasses.fields(RECMConfig)}
    unknown = set(overrides) - size_fields - recm_fields
    if unknown:
        raise ValueError(f"unknown denoiser setting(s): {', '.join(sorted(unknown))}")
    size = dataclasses.replace(PRESETS[preset],
                               **{k: v for k, v in overrides.items() if k in size_fields})
    recm = RECMConfig(mode=mode, **{k: v for k, v in overrides.items() if k in recm_fields})
    return Denoiser(size, recm)
