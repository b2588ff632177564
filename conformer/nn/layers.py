"""E(3)-equivariant building blocks (e3nn): radial basis, interaction block, noise embedding."""

from __future__ import annotations

import math

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn
from torch_geometric.utils import scatter


class GaussianRadialBasis(nn.Module):
    """Gaussians of the edge length, centres evenly from ``start`` to ``cutoff``, width the
    spacing: [E] (Angstrom) -> [E, num_basis]."""

    def __init__(self, cutoff: float, num_basis: int, start: float = 0.0):
        super().__init__()
        self.register_buffer("centers", torch.linspace(start, cutoff, num_basis))
        self.width = (cutoff - start) / max(num_basis - 1, 1)

    def forward(self, length: torch.Tensor) -> torch.Tensor:
        centers = self.centers.to(length.dtype)
        return torch.exp(-0.5 * ((length.unsqueeze(-1) - centers) / self.width) ** 2)


def smooth_cutoff(length: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Cosine envelope, 1 at 0 and 0 (with zero slope) at ``cutoff``: [E] -> [E]."""
    inside = (length < cutoff).to(length.dtype)
    return 0.5 * (torch.cos(math.pi * length.clamp(max=cutoff) / cutoff) + 1.0) * inside


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise level then an MLP: [B] -> [B, dim]."""

    def __init__(self, dim: int, num_frequencies: int = 16):
        super().__init__()
        self.register_buffer("frequencies", torch.logspace(-1, 2, num_frequencies))
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(),
                                 nn.Linear(dim, dim))

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        angles = level.unsqueeze(-1) * self.frequencies.to(level.dtype)
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1))


def gate_for(irreps_out: o3.Irreps) -> e3nn_nn.Gate:
    """A gated nonlinearity whose output is ``irreps_out`` (scalars act, l > 0 gated)."""
    irreps_out = o3.Irreps(irreps_out).simplify()
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
    activations = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return e3nn_nn.Gate(scalars, activations, gates, [torch.sigmoid] * len(gates), gated)


def odd_gate_for(gate: e3nn_nn.Gate) -> e3nn_nn.Gate | None:
    """The parity-flipping companion of ``gate`` (``gate_for``), or None when it gates nothing.

    One odd gate (0o, through tanh, an odd function, so the product stays O(3)-equivariant)
    per gated irrep, multiplying an irrep of the same l and opposite parity: 0o x 1e -> 1o and
    0o x 1o -> 1e. Its output irreps are ``gate``'s gated output irreps, in the same order, so
    the two gates' outputs add channel by channel: vector channel k is
    ``sigmoid(g_k) u_k + tanh(q_k) w_k``. This is how a node multiplies a pseudoscalar (the
    0o stereo label) into one of its own vectors; a message-passing tensor product cannot, as
    it is bilinear in a source feature and the edge's harmonics, never in two features of the
    same node."""
    gated = o3.Irreps(gate.irreps_gated)
    if not gated.num_irreps:
        return None
    flipped = o3.Irreps([(mul, o3.Irrep(ir.l, -ir.p)) for mul, ir in gated])
    odd = e3nn_nn.Gate("", [], f"{gated.num_irreps}x0o", [torch.tanh], flipped)
    gated_out = o3.Irreps(gate.irreps_out)[len(o3.Irreps(gate.irreps_scalars)):]
    assert odd.irreps_out == gated_out, (odd.irreps_out, gated_out)
    return odd


class InteractionBlock(nn.Module):
    """One message-passing layer, strictly O(3)-equivariant.

    Messages: depthwise ('uvu') tensor product of the source node's features with the edge's
    spherical harmonics, weighted per edge by an MLP of the edge scalars; summed at the target,
    mixed by an ``o3.Linear``, plus a linear self-connection, then a gate; residual when the
    irreps match.

    odd_gates: also gate each vector channel by an odd scalar times a vector of the opposite
    parity (``odd_gate_for``), both linear in the aggregated messages and the node's own
    features, added to the ordinary gate's output (the output irreps do not change). Off, the
    block has exactly the parameters, random draws and outputs it had before the option.
    node_cross_products: add to the gate's 1e inputs cross products of the node's own 1o gate
    inputs (an ``o3.FullyConnectedTensorProduct`` 1o x 1o -> 1e of the pre-gate features with
    themselves). After a message pass whose weights depend on the CIP rank of each neighbour,
    those 1o channels are rank-weighted sums of bond directions, and their cross product is
    the rank-oriented normal of the neighbours (a pseudovector), which the next block's odd
    gate can multiply by the 0o label; the message tensor product cannot form it, as it never
    multiplies two features of the same node. Off: as before.

    forward(h [N, irreps_in.dim], edge_source [E], edge_target [E], edge_sh [E, irreps_sh.dim],
    edge_scalars [E, edge_dim]) -> [N, irreps_out.dim].
    """

    def __init__(self, irreps_in, irreps_out, irreps_sh, edge_dim: int, radial_hidden: int,
                 avg_num_neighbors: float, odd_gates: bool = False,
                 node_cross_products: bool = False):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.gate = gate_for(self.irreps_out)
        wanted = {ir for _, ir in self.gate.irreps_in}
        mid, instructions = [], []
        for i_in, (mul, ir_in) in enumerate(self.irreps_in):
            for i_sh, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_mid in ir_in * ir_sh:
                    if ir_mid in wanted:
                        instructions.append((i_in, i_sh, len(mid), "uvu", True))
                        mid.append((mul, ir_mid))
        irreps_mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = e3nn_nn.FullyConnectedNet(
            [edge_dim, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.mix = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.odd_gate = odd_gate_for(self.gate) if odd_gates else None
        if self.odd_gate is not None:
            self.odd_mix = o3.Linear(irreps_mid, self.odd_gate.irreps_in)
            self.odd_self_connection = o3.Linear(self.irreps_in, self.odd_gate.irreps_in)
            # the gated (l > 0) channels follow the scalars in the gate's output
            self.odd_gate_offset = o3.Irreps(self.gate.irreps_scalars).dim
        self.node_cross = None
        if node_cross_products:
            gate_in = o3.Irreps(self.gate.irreps_in)
            polar = [i for i, (_, ir) in enumerate(gate_in) if ir == o3.Irrep("1o")]
            axial = [i for i, (_, ir) in enumerate(gate_in) if ir == o3.Irrep("1e")]
            if polar and axial:  # simplified irreps: at most one of each
                self.cross_polar = gate_in.slices()[polar[0]]
                self.cross_axial = gate_in.slices()[axial[0]]
                self.node_cross = o3.FullyConnectedTensorProduct(
                    gate_in[polar[0]:polar[0] + 1], gate_in[polar[0]:polar[0] + 1],
                    gate_in[axial[0]:axial[0] + 1])
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)
        self.irreps_out = self.gate.irreps_out  # the gate fixes the order of the irreps
        self.residual = self.irreps_in == self.irreps_out

    def forward(self, h, edge_source, edge_target, edge_sh, edge_scalars):
        messages = self.tp(h[edge_source], edge_sh, self.radial(edge_scalars))
        aggregated = scatter(messages, edge_target, 0, h.shape[0], reduce="sum") * self.norm
        pre_gate = self.mix(aggregated) + self.self_connection(h)
        if self.node_cross is not None:
            polar = pre_gate[:, self.cross_polar]
            pre_gate = torch.cat([pre_gate[:, :self.cross_axial.start],
                                  pre_gate[:, self.cross_axial] + self.node_cross(polar, polar),
                                  pre_gate[:, self.cross_axial.stop:]], dim=-1)
        out = self.gate(pre_gate)
        if self.odd_gate is not None:
            odd = self.odd_gate(self.odd_mix(aggregated) + self.odd_self_connection(h))
            out = torch.cat([out[:, :self.odd_gate_offset],
                             out[:, self.odd_gate_offset:] + odd], dim=-1)
        return h + out if self.residual else out
