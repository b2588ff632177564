"""Training molecules/s and sampling conformers/s of the shipped recipe, against a plain e3nn
'uvu' network of the same depth, measured in one process on one device.

The shipped recipe is the bundled model's network (its ``model_spec``) and sampler (its
``diffusion_settings``: network evaluations per conformer as shipped). The baseline is a stack of
the same e3nn message-passing blocks (depthwise 'uvu' tensor products with the edge spherical
harmonics, radial MLP weights, gate) on the same radius graph, without RECM, bond edges,
the fine radial basis or the pairwise read-out: what a plain e3nn model of this size costs.
Molecules are 32 well-known drugs with explicit hydrogens (about GEOM-Drugs' size: the
average atom count is printed), embedded with RDKit and tiled to the batch size.

Sampling figures are the raw sampler (the shipped number of network evaluations, no stereo
guidance, no RDKit): the network's share of ``conformer generate``; benchmarks/bench_generate.py
times the whole command.

    python benchmarks/bench_throughput.py [--device auto] [--batch-molecules 256]
        [--seconds 10] [--ckpt MODEL.pt] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from e3nn import o3
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoiser import DRUG_SMILES, molecule_batch  # noqa: E402

from conformer.data import keys  # noqa: E402
from conformer.data.features import ATOM_FEATURE_CARDINALITIES  # noqa: E402
from conformer.diffusion import build_diffusion  # noqa: E402
from conformer.model_io import load_model  # noqa: E402
from conformer.nn import build_denoiser  # noqa: E402
from conformer.nn.denoiser import CategoricalEmbedding  # noqa: E402
from conformer.nn.graph import radius_graph  # noqa: E402
from conformer.nn.layers import GaussianRadialBasis, InteractionBlock, smooth_cutoff  # noqa: E402
from conformer.versions import environment_info  # noqa: E402

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "conformer" / "assets" / "model.pt"


class PlainUVUNetwork(nn.Module):
    """The baseline: atom embedding + noise level, ``num_layers`` e3nn 'uvu' interaction blocks
    on the radius graph, a linear read-out to one 1o vector per atom. Same call signature as
    the denoiser: ``net(batch, noise_conditioning [B]) -> [N, 3]``."""

    def __init__(self, num_layers: int, scalar_channels: int, hidden_irreps: o3.Irreps,
                 lmax: int, cutoff: float, num_radial: int, radial_hidden: int,
                 avg_num_neighbors: float):
        super().__init__()
        self.cutoff = cutoff
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.embedding = CategoricalEmbedding(ATOM_FEATURE_CARDINALITIES, scalar_channels)
        self.noise = nn.Linear(1, scalar_channels)
        self.radial_basis = GaussianRadialBasis(cutoff, num_radial)
        irreps = o3.Irreps(f"{scalar_channels}x0e")
        blocks = []
        for _ in range(num_layers):
            block = InteractionBlock(irreps, hidden_irreps, self.irreps_sh, num_radial,
                                     radial_hidden, avg_num_neighbors)
            blocks.append(block)
            irreps = block.irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.head = o3.Linear(irreps, "1x1o")

    def forward(self, batch, noise_conditioning: torch.Tensor) -> torch.Tensor:
        pos, graph = batch[keys.POS], batch[keys.BATCH]
        source, target = radius_graph(pos, graph, int(batch[keys.NUM_GRAPHS]), self.cutoff)
        vectors = pos[source] - pos[target]
        length = vectors.norm(dim=-1)
        envelope = smooth_cutoff(length, self.cutoff).unsqueeze(-1)
        radial = self.radial_basis(length) * envelope
        sh = o3.spherical_harmonics(self.irreps_sh, vectors, normalize=True,
                                    normalization="component") * envelope
        noise = self.noise(noise_conditioning.to(pos.dtype).unsqueeze(-1))
        h = self.embedding(batch[keys.ATOM_FEATURES]).to(pos.dtype) + noise[graph]
        for block in self.blocks:
            h = block(h, source, target, sh, radial)
        return self.head(h)


def plain_network_like(net) -> PlainUVUNetwork:
    c = net.config
    return PlainUVUNetwork(c.num_layers, c.scalar_channels, c.hidden_irreps(), c.lmax, c.cutoff,
                           c.num_radial, c.radial_hidden, c.avg_num_neighbors)


def tiled_batch(base_smiles, count: int, device):
    """``count`` molecules (the base list repeated), collated and moved to ``device``."""
    smiles = [base_smiles[i % len(base_smiles)] for i in range(count)]
    batch = molecule_batch(smiles)
    return batch.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, items_per_call: int, seconds: float, device: torch.device,
         min_calls: int = 2) -> tuple[float, int]:
    """(items per second, calls timed): one untimed warm-up call (kernel selection, e3nn code
    generation), then calls until ``seconds`` have passed (at least ``min_calls``)."""
    step()
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        step()
        calls += 1
    synchronize(device)
    return items_per_call * calls / (time.perf_counter() - started), calls


def training_rate(net, diffusion, batch, seconds, device, precision: str) -> tuple[float, int]:
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    generator = torch.Generator(device="cpu").manual_seed(0)
    recm = getattr(net, "recm", None)
    autocast = precision == "bf16-mixed" and device.type == "cuda"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = diffusion.loss(net, batch, generator=generator)
            if recm is not None:
                loss = loss + recm.regularization_loss()
        loss.backward()
        optimizer.step()
        if recm is not None:
            recm.after_optimizer_step(0.5)

    net.train()
    return rate(step, int(batch[keys.NUM_GRAPHS]), seconds, device)


def sampling_rate(net, diffusion, batch, seconds, device) -> tuple[float, int]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    net.eval()
    return rate(lambda: diffusion.sample(net, batch, generator=generator),
                int(batch[keys.NUM_GRAPHS]), seconds, device, min_calls=1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available in this torch build/machine")
    return device


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--ckpt", default=str(BUNDLED_MODEL),
                        help="model file whose network and sampler are measured (default: bundled)")
    parser.add_argument("--batch-molecules", type=int, default=256,
                        help="molecules per training batch and conformers per sampling batch")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="minimum timed seconds per measurement (after one warm-up call)")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"),
                        help="training precision (bf16-mixed only on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)

    model = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    spec, sampler_settings = model["model_spec"], model["diffusion_settings"]
    diffusion = build_diffusion(sampler_settings)  # edm or flow, by the file's kind
    # training runs the network as trained (RECM branches present); sampling runs the shipped
    # file as exported (absorbed branches dropped)
    trained = build_denoiser(spec["preset"], spec["mode"], **spec.get("overrides", {}))
    exported, _, _ = load_model(args.ckpt, device=device)
    plain = plain_network_like(trained).to(device)
    networks = {"shipped": (trained.to(device), exported), "plain_uvu": (plain, plain)}

    batch = tiled_batch(DRUG_SMILES, args.batch_molecules, device)
    atoms_per_molecule = batch[keys.POS].shape[0] / args.batch_molecules
    results: dict = {"device": str(device), "batch_molecules": args.batch_molecules,
                     "atoms_per_molecule": round(atoms_per_molecule, 1),
                     "network_evaluations_per_conformer": diffusion.num_evaluations(),
                     "precision": args.precision, "model_spec": spec,
                     "parameters": {k: sum(p.numel() for p in n[1].parameters())
                                    for k, n in networks.items()},
                     "rates": {}, "environment": environment_info()}
    for name, (net, sampling_net) in networks.items():
        train, train_calls = training_rate(net, diffusion, batch, args.seconds, device,
                                           args.precision)
        sample, sample_calls = sampling_rate(sampling_net, diffusion, batch, args.seconds, device)
        results["rates"][name] = {"train_molecules_per_s": round(train, 2),
                                  "train_steps_timed": train_calls,
                                  "sample_conformers_per_s": round(sample, 2),
                                  "sample_batches_timed": sample_calls}
    ours, plain = results["rates"]["shipped"], results["rates"]["plain_uvu"]
    results["ratio_shipped_over_plain"] = {
        "train": round(ours["train_molecules_per_s"] / plain["train_molecules_per_s"], 3),
        "sample": round(ours["sample_conformers_per_s"] / plain["sample_conformers_per_s"], 3)}

    print(f"device {device}, {args.batch_molecules} molecules/batch, "
          f"{atoms_per_molecule:.1f} atoms/molecule, {diffusion.num_evaluations()} network "
          f"evaluations/conformer, training precision {args.precision}")
    for name, r in results["rates"].items():
        print(f"  {name:10s} train {r['train_molecules_per_s']:10.1f} molecules/s   "
              f"sample {r['sample_conformers_per_s']:10.1f} conformers/s   "
              f"({results['parameters'][name]} parameters as sampled)")
    ratio = results["ratio_shipped_over_plain"]
    print(f"  ratio shipped/plain: train {ratio['train']:.3f}, sample {ratio['sample']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
