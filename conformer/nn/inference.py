"""A faster form of the trained network for sampling: the same function, fewer and larger ops.

At sampling sizes (one molecule's conformers, a few thousand edges) the interaction block's
cost is e3nn's generic code: the 'uvu' tensor product runs about 25 small einsums and
reshapes per layer over [E, ...] tensors, then ``o3.Linear`` runs one einsum per irrep
block. For lmax <= 1 every tensor-product path is one of five products of a source feature
with the edge's harmonics (sh0 [E, 1], the l=0 part; sh1 [E, 3], the l=1 part):

    scalar (x) sh0 -> scalar       x * sh0
    scalar (x) sh1 -> vector       x sh1                 (outer product)
    vector (x) sh0 -> vector       v * sh0
    vector (x) sh1 -> scalar       v . sh1
    vector (x) sh1 -> vector       v x sh1               (cross product)

:class:`FusedInteraction` computes each kind for all channels at once (parity only decides
which channels take part, not how), with e3nn's per-path constants (Clebsch-Gordan factor
times path normalisation) measured from the block's own tensor product and folded, with the
column order, into the radial MLP's last layer. Messages stay in this grouped layout; the
block's ``mix`` becomes one dense matrix whose rows are permuted to match (and scaled by the
neighbour normalisation), and ``self_connection`` another. The gate is e3nn's own.

The result equals the e3nn block to float rounding (tests: float64, 1e-10), so it is exactly
as equivariant. It holds copies of the weights (buffers, not parameters): it is for sampling
a trained network, never for training it. ``fuse_for_inference(net)`` swaps it in.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from conformer.nn.layers import InteractionBlock

# kinds of 'uvu' path for lmax <= 1 (input l, harmonic l, output l)
_KINDS = {(0, 0, 0): "scalar_sh0", (0, 1, 1): "scalar_sh1", (1, 0, 1): "vector_sh0",
          (1, 1, 0): "vector_dot", (1, 1, 1): "vector_cross"}
# the fused message layout: scalar outputs first, then vector outputs (component-major)
_ORDER = ("scalar_sh0", "vector_dot", "scalar_sh1", "vector_sh0", "vector_cross")
_VECTOR_OUT = {"scalar_sh1", "vector_sh0", "vector_cross"}


def dense_linear(linear: nn.Module, dim_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [dim_in, dim_out], b [dim_out]) with ``linear(x) == x @ W + b`` for a linear
    module (e.g. ``o3.Linear``), read off by evaluating it on the identity in the module's own
    dtype (``FusedInteraction`` passes a float64 copy)."""
    reference = next(linear.parameters(), None)
    dtype = reference.dtype if reference is not None else torch.float64
    device = reference.device if reference is not None else None
    with torch.no_grad():
        bias = linear(torch.zeros(1, dim_in, dtype=dtype, device=device))[0]
        weight = linear(torch.eye(dim_in, dtype=dtype, device=device)) - bias
    return weight, bias


def _product(kind: str, source, weight, sh0, sh1_stacked) -> torch.Tensor:
    """One kind's weighted products, component-major: source [E, C] (scalars) or
    [E, 3, C] (vectors), weight [E, C], sh0 [E, 1], sh1_stacked [E, 3, 1] -> [E, C] or
    [E, 3, C]."""
    if kind == "scalar_sh0":
        return source * (weight * sh0)
    if kind == "vector_dot":
        return (source * sh1_stacked).sum(1) * weight
    if kind == "scalar_sh1":
        return (source * weight).unsqueeze(1) * sh1_stacked
    if kind == "vector_sh0":
        return source * (weight * sh0).unsqueeze(1)
    return torch.linalg.cross(source, sh1_stacked.expand_as(source), dim=1) \
        * weight.unsqueeze(1)


class _Path:
    """One 'uvu' instruction: its kind, input columns, weight columns and output columns."""

    def __init__(self, kind, input_slice, mul, weight_start, output_slice):
        self.kind, self.input_slice, self.mul = kind, input_slice, mul
        self.weight_start, self.output_slice = weight_start, output_slice
        self.constant = None


def _paths(tp: o3.TensorProduct) -> list[_Path]:
    if [ir for _, ir in tp.irreps_in2] not in ([o3.Irrep("0e")], [o3.Irrep("0e"), o3.Irrep("1o")]):
        raise ValueError(f"fusion needs harmonics 0e(+1o), got {tp.irreps_in2}")
    in_slices, out_slices = tp.irreps_in1.slices(), tp.irreps_out.slices()
    paths, weight_start = [], 0
    for ins in tp.instructions:
        if ins.connection_mode != "uvu" or not ins.has_weight:
            raise ValueError(f"fusion handles weighted 'uvu' paths only, got {ins}")
        l_in = tp.irreps_in1[ins.i_in1].ir.l
        l_sh = tp.irreps_in2[ins.i_in2].ir.l
        l_out = tp.irreps_out[ins.i_out].ir.l
        if (l_in, l_sh, l_out) not in _KINDS:
            raise ValueError(f"fusion handles lmax <= 1, got a {l_in} x {l_sh} -> {l_out} path")
        mul = tp.irreps_in1[ins.i_in1].mul
        paths.append(_Path(_KINDS[l_in, l_sh, l_out], in_slices[ins.i_in1], mul,
                           weight_start, out_slices[ins.i_out]))
        weight_start += mul
    if weight_start != tp.weight_numel:
        raise ValueError("fusion: unexpected weight layout")
    return paths


def _measure_constants(tp: o3.TensorProduct, paths: list[_Path]) -> None:
    """Each path's constant c (out = c * w * raw product), fitted on random float64 inputs
    and checked to reproduce e3nn's output."""
    generator = torch.Generator().manual_seed(0)
    edges = 16
    x = torch.randn(edges, tp.irreps_in1.dim, generator=generator, dtype=torch.float64)
    sh = torch.randn(edges, tp.irreps_in2.dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(edges, tp.weight_numel, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        reference = _float64_copy(tp)(x, sh, weight)
    sh0 = sh[:, :1]
    sh1 = sh[:, 1:4] if sh.shape[1] > 1 else torch.zeros(edges, 3, dtype=torch.float64)
    sh1_stacked = sh1.unsqueeze(-1)  # [E, 3, 1]
    for path in paths:
        source = x[:, path.input_slice]
        if path.kind.startswith("vector"):  # e3nn's [channel, component] to component-major
            source = source.reshape(edges, path.mul, 3).transpose(1, 2)
        w = weight[:, path.weight_start:path.weight_start + path.mul]
        raw = _product(path.kind, source, w, sh0, sh1_stacked)
        if raw.dim() == 3:  # back to e3nn's layout
            raw = raw.transpose(1, 2)
        raw = raw.reshape(edges, -1)
        target = reference[:, path.output_slice]
        constant = float((raw * target).sum() / (raw * raw).sum())
        error = float((constant * raw - target).abs().max())
        if error > 1e-9 * max(1.0, float(target.abs().max())):
            raise ValueError(f"fusion: path {path.kind} does not match e3nn (error {error:.2e})")
        path.constant = constant


def _dtype(module: nn.Module) -> torch.dtype:
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _float64_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.float64)


class FusedInteraction(nn.Module):
    """:class:`~conformer.nn.layers.InteractionBlock` for sampling: same signature, same
    outputs (to float rounding), built from a trained block (without odd gates or node cross
    products).

    Vectors are handled component-major ([E, 3, channels], each Cartesian component a
    contiguous slab) so that dot and cross products are a few whole-slab multiply-adds, and
    every product is written straight into its columns of one preallocated message tensor
    [E, message_dim] (no concatenation pass over the edges).
    """

    def __init__(self, block: InteractionBlock):
        super().__init__()
        if block.odd_gate is not None or block.node_cross is not None:
            raise ValueError("fusion does not handle odd gates or node cross products")
        tp = block.tp
        irreps_in = block.irreps_in
        if irreps_in.lmax > 1:
            raise ValueError(f"fusion handles lmax <= 1, got inputs {irreps_in}")
        paths = _paths(tp)
        _measure_constants(tp, paths)
        dtype = _dtype(block)
        # input columns: the scalars, then the vectors component-major (all x, all y, all z
        # in e3nn's component order)
        scalar_columns, vector_starts = [], []
        for (_, ir), block_slice in zip(irreps_in, irreps_in.slices(), strict=True):
            if ir.l == 0:
                scalar_columns.extend(range(block_slice.start, block_slice.stop))
            else:
                vector_starts.extend(range(block_slice.start, block_slice.stop, 3))
        self.num_scalars, self.num_vectors = len(scalar_columns), len(vector_starts)
        input_order = scalar_columns + [start + m for m in range(3) for start in vector_starts]
        self.register_buffer("input_order", torch.tensor(input_order, dtype=torch.long),
                             persistent=False)
        scalar_position = {c: i for i, c in enumerate(scalar_columns)}
        vector_position = {c: i for i, c in enumerate(vector_starts)}
        # per kind: (input channel, weight column, constant, e3nn output columns)
        groups = {kind: [] for kind in _ORDER}
        for path in paths:
            width = 3 if path.kind in _VECTOR_OUT else 1
            for u in range(path.mul):
                if path.kind.startswith("scalar"):
                    channel = scalar_position[path.input_slice.start + u]
                else:
                    channel = vector_position[path.input_slice.start + 3 * u]
                first = path.output_slice.start + width * u
                groups[path.kind].append((channel, path.weight_start + u, path.constant,
                                          list(range(first, first + width))))
        self.kinds = [kind for kind in _ORDER if groups[kind]]
        self.group_sizes = [len(groups[kind]) for kind in self.kinds]
        weight_order, weight_scale, message_rows = [], [], []
        self.message_offsets = []
        offset = 0
        for kind in self.kinds:
            entries = groups[kind]
            channels = [channel for channel, _, _, _ in entries]
            full = self.num_scalars if kind.startswith("scalar") else self.num_vectors
            self.register_buffer(f"channels_{kind}", None if channels == list(range(full))
                                 else torch.tensor(channels, dtype=torch.long),
                                 persistent=False)
            weight_order.extend(column for _, column, _, _ in entries)
            weight_scale.extend(constant for _, _, constant, _ in entries)
            if kind in _VECTOR_OUT:  # component-major: all channels' x, then y, then z
                message_rows.extend(outputs[m] for m in range(3) for *_, outputs in entries)
            else:
                message_rows.extend(outputs[0] for *_, outputs in entries)
            self.message_offsets.append(offset)
            offset += len(entries) * (3 if kind in _VECTOR_OUT else 1)
        self.message_dim = offset
        # the radial MLP, dense; its last layer's columns in weight_order times the constants
        self.radial_layers = []
        layers = list(block.radial)
        for index, layer in enumerate(layers):
            last = index == len(layers) - 1
            if last and layer.act is not None:
                raise ValueError("fusion expects a radial MLP without an output activation")
            if last:
                scale, out_scale = (layer.h_in * layer.var_in / layer.var_out) ** -0.5, 1.0
            else:
                scale, out_scale = (layer.h_in * layer.var_in) ** -0.5, layer.var_out ** 0.5
            weight = layer.weight.detach().to(torch.float64) * scale
            if last:
                weight = weight[:, weight_order] * torch.tensor(weight_scale,
                                                                dtype=torch.float64)
            self.register_buffer(f"radial_weight_{index}", weight.to(dtype))
            self.radial_layers.append((layer.act, out_scale))
        # mix (on aggregated messages in the fused layout) and self-connection, dense
        mix_weight, mix_bias = dense_linear(_float64_copy(block.mix), tp.irreps_out.dim)
        mix_weight = mix_weight[message_rows] * block.norm
        self_weight, self_bias = dense_linear(_float64_copy(block.self_connection),
                                              irreps_in.dim)
        self.register_buffer("mix_weight", mix_weight.to(dtype))
        self.register_buffer("self_weight", self_weight.to(dtype))
        self.register_buffer("pre_gate_bias", (mix_bias + self_bias).to(dtype))
        self.gate = block.gate
        self.residual = block.residual
        self.irreps_in, self.irreps_out = block.irreps_in, block.irreps_out

    def _radial(self, edge_scalars: torch.Tensor) -> torch.Tensor:
        h = edge_scalars
        for index, (act, out_scale) in enumerate(self.radial_layers):
            h = h @ getattr(self, f"radial_weight_{index}")
            if act is not None:
                h = act(h)
                if out_scale != 1.0:
                    h = h * out_scale
        return h

    def messages(self, h, edge_source, edge_sh, edge_scalars) -> torch.Tensor:
        """[E, message_dim]: every path's product, in the fused layout."""
        num_edges = edge_source.shape[0]
        gathered = h[:, self.input_order][edge_source]
        scalars = gathered[:, :self.num_scalars]
        vectors = gathered[:, self.num_scalars:].unflatten(1, (3, self.num_vectors))
        sh0 = edge_sh[:, :1]
        sh1 = [edge_sh[:, 1 + m:2 + m] for m in range(3)]  # [E, 1] each
        weights = self._radial(edge_scalars).split(self.group_sizes, dim=1)
        sources = []
        for kind in self.kinds:
            source = scalars if kind.startswith("scalar") else vectors
            channels = getattr(self, f"channels_{kind}")
            sources.append(source if channels is None else source[..., channels])
        if torch.is_grad_enabled() and any(
                t.requires_grad for t in (h, edge_sh, edge_scalars)):
            # autograd cannot go through out= writes: the same products, concatenated
            sh1_stacked = edge_sh[:, 1:4].unsqueeze(-1)  # [E, 3, 1]
            parts = [_product(kind, source, weight, sh0, sh1_stacked).reshape(num_edges, -1)
                     for kind, source, weight in zip(self.kinds, sources, weights, strict=True)]
            return torch.cat(parts, dim=1)
        out = h.new_empty(num_edges, self.message_dim)
        for kind, source, weight, offset in zip(self.kinds, sources, weights,
                                                self.message_offsets, strict=True):
            size = weight.shape[1]
            if kind == "scalar_sh0":
                torch.mul(source, weight * sh0, out=out[:, offset:offset + size])
            elif kind == "vector_dot":
                target = out[:, offset:offset + size]
                torch.mul(source[:, 0], sh1[0], out=target)
                target.addcmul_(source[:, 1], sh1[1]).addcmul_(source[:, 2], sh1[2])
                target.mul_(weight)
            else:
                target = out[:, offset:offset + 3 * size].unflatten(1, (3, size))
                if kind == "scalar_sh1":
                    weighted = source * weight
                    for m in range(3):
                        torch.mul(weighted, sh1[m], out=target[:, m])
                elif kind == "vector_sh0":
                    torch.mul(source, (weight * sh0).unsqueeze(1), out=target)
                else:  # cross product v x sh1, then the weight
                    for m in range(3):
                        a, b = (m + 1) % 3, (m + 2) % 3
                        torch.mul(source[:, a], sh1[b], out=target[:, m])
                        target[:, m].addcmul_(source[:, b], sh1[a], value=-1.0)
                    target.mul_(weight.unsqueeze(1))
        return out

    def forward(self, h, edge_source, edge_target, edge_sh, edge_scalars):
        messages = self.messages(h, edge_source, edge_sh, edge_scalars)
        aggregated = messages.new_zeros(h.shape[0], messages.shape[1])
        aggregated.index_add_(0, edge_target, messages)
        pre_gate = torch.addmm(self.pre_gate_bias, aggregated, self.mix_weight) \
            + h @ self.self_weight
        out = self.gate(pre_gate)
        return h + out if self.residual else out


def fuse_for_inference(net: nn.Module) -> int:
    """Replace every InteractionBlock inside ``net`` that fusion handles by its
    :class:`FusedInteraction` (in place; for sampling only). Returns how many were fused."""
    fused = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InteractionBlock):
                try:
                    replacement = FusedInteraction(child)
                except ValueError:
                    continue
                setattr(module, name, replacement.to(_device(child)))
                fused += 1
    return fused


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


__all__ = ["FusedInteraction", "dense_linear", "fuse_for_inference"]
