"""Where conformers come from: the diffusion model (on a resolved device) or RDKit's ETKDG.

Randomness is per molecule: the molecule accounted as line L draws from a generator seeded
with (seed, L), so a resumed run writes the same conformers as an uninterrupted one, whatever
the batch size, and ``conformer.generate`` gives the same conformers as a file run with the
molecule on the same line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from conformer.data import keys
from conformer.data.batching import copies_batch
from conformer.data.features import FeaturizationError, featurize_mol
from conformer.diffusion.guidance import GuidanceSettings, StereoGuidance, StereoTargets
from conformer.errors import UserInputError
from conformer.generation.inputs import MoleculeError


def resolve_device(spec: str | torch.device, option: str = "--device") -> torch.device:
    """The torch device ``spec`` names, checked to be present; ``"auto"``: CUDA when
    ``torch.cuda.is_available()``, else the CPU.

    A device that is not there (an unknown type, CUDA on a CPU-only torch or without a GPU,
    an index past the last GPU) raises UserInputError naming ``option`` and the reason.
    """
    text = str(spec).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserInputError(f"{option} {text}: not a torch device "
                             "(use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = (f"this torch ({torch.__version__}) is built without CUDA"
                      if torch.version.cuda is None else "no CUDA GPU is visible")
            raise UserInputError(f"{option} {text}: {reason}; use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserInputError(f"{option} {text}: only {count} CUDA device(s) here "
                                 f"(cuda:0 to cuda:{count - 1})")
        return device
    if device.type == "meta":
        raise UserInputError(f"{option} {text}: the meta device holds no values; "
                             "use cpu, cuda or auto")
    try:  # another backend (mps, xpu, ...): present when a tensor can live there
        torch.empty(0, device=device)
    except Exception as error:  # noqa: BLE001 - torch raises various types per backend
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserInputError(f"{option} {text}: not available ({first_line})") from None
    return device


@dataclass(eq=False, repr=False)
class ConformerModel:
    """A loaded diffusion model, reusable across ``conformer.generate(..., model=...)`` calls.

    net: the denoiser (eval mode, on ``device``); diffusion: its EDM sampler; meta: the model
    file without its weights (format, model_spec, diffusion_settings, training, ...); path:
    the file it was read from.
    """

    net: torch.nn.Module
    diffusion: object
    meta: dict
    device: torch.device
    path: Path

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "auto",
             option: str = "--device", fused: bool = True) -> ConformerModel:
        """Read a model file or training checkpoint (None: the bundled model) onto ``device``
        (``"auto"``, ``"cpu"``, ``"cuda:1"``, ...; see :func:`resolve_device`).

        fused: swap the interaction blocks for their sampling form
        (``conformer.nn.inference.fuse_for_inference``: the same function to float rounding,
        about twice as fast on a CPU); False keeps e3nn's modules."""
        from conformer.model_io import BUNDLED_MODEL, load_model

        resolved = resolve_device(device, option)
        net, diffusion, meta = load_model(path, resolved)
        if fused:
            from conformer.nn.inference import fuse_for_inference

            fuse_for_inference(net)
        return cls(net, diffusion, meta, resolved, Path(path) if path else BUNDLED_MODEL)

    @property
    def hydrogens(self) -> str:
        """``"explicit"`` (hydrogens diffused) or ``"implicit"`` (heavy atoms only; RDKit
        places the hydrogens): the model file's ``model_spec["hydrogens"]``."""
        from conformer.model_io import hydrogen_mode

        return hydrogen_mode(self.meta)

    def __repr__(self) -> str:
        spec = self.meta.get("model_spec", {})
        return (f"ConformerModel({self.path.name}, preset={spec.get('preset')!r}, "
                f"mode={spec.get('mode')!r}, hydrogens={self.hydrogens!r}, "
                f"device={str(self.device)!r})")


class ModelSampler:
    """Conformers from a diffusion model: ``sample(features, count, generator) -> [count, N, 3]``.

    steps: sampler steps (None: the model's own); batch_size: conformers per network batch.
    relax_hydrogens: for a heavy-atom-only model, minimise the placed hydrogens with MMFF94
    (heavy atoms fixed). ``molecule_draws`` is the per-molecule entry point for either kind.
    """

    def __init__(self, model: ConformerModel, steps: int | None, batch_size: int,
                 relax_hydrogens: bool = False):
        self.model = model
        self.heavy_atoms_only = model.hydrogens == "implicit"
        self.relax_hydrogens = relax_hydrogens
        self.net, self.diffusion, self.meta = model.net, model.diffusion, model.meta
        self.device = model.device
        self.steps = steps
        self.batch_size = batch_size

    def featurize(self, mol: Chem.Mol) -> dict:
        try:
            return featurize_mol(mol)
        except FeaturizationError as error:
            raise MoleculeError(str(error)) from error

    def molecule_draws(self, mol: Chem.Mol, generator: torch.Generator,
                       targets: StereoTargets | None = None,
                       guidance: GuidanceSettings | None = None
                       ) -> Callable[[int], np.ndarray]:
        """``draw(count) -> [count, N, 3]`` (Angstrom, centred) for the explicit-H molecule
        ``mol`` [N atoms, in its order], every draw from ``generator``; ``targets`` are in
        ``mol``'s indices (``StereoChecker(mol).targets()``). For a heavy-atom-only model the
        network samples the heavy atoms (targets mapped to them) and RDKit places the
        hydrogens. Raises MoleculeError when the molecule cannot be featurised."""
        features = self.featurize(mol)
        if not self.heavy_atoms_only:
            return lambda count: self.sample(features, count, generator, targets, guidance)
        from conformer.generation.hydrogens import HeavyAtomPlan

        plan = HeavyAtomPlan(mol, features, relax=self.relax_hydrogens)
        heavy_targets = plan.targets(targets) if targets is not None else None

        def draw(count: int) -> np.ndarray:
            if plan.num_heavy == 1:  # one heavy atom: nothing to sample, only hydrogens
                heavy = np.zeros((count, 1, 3))
            else:
                heavy = self.sample(plan.features, count, generator, heavy_targets, guidance)
            positions = plan.place(heavy)
            return positions - positions.mean(axis=1, keepdims=True)

        return draw

    def sample(self, features: dict, count: int, generator: torch.Generator,
               targets: StereoTargets | None = None,
               guidance: GuidanceSettings | None = None) -> np.ndarray:
        """[count, N, 3] Angstrom, centred. With ``targets`` (the molecule's stereo, see
        ``StereoChecker.targets``) the sampler is guided towards it."""
        n = features[keys.ATOMIC_NUMBERS].shape[0]
        per_batch = max(1, self.batch_size)
        settings = self.diffusion.settings
        stochastic = settings.churn > 0 or settings.refine_steps > 0
        out = []
        for start in range(0, count, per_batch):
            copies = min(per_batch, count - start)
            batch = copies_batch(features, copies, self.device)
            starts, noise_generators = [], [] if stochastic else None
            for _ in range(copies):  # in conformer order, so batch size changes nothing
                starts.append(torch.randn(n, 3, generator=generator))
                if stochastic:  # the stochastic sampler's own stream for this conformer
                    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
                    noise_generators.append(torch.Generator().manual_seed(seed))
            x_init = torch.cat(starts)
            steer = None
            if targets is not None and not targets.empty:
                steer = StereoGuidance(targets.tile(copies, n), guidance, device=self.device)
            x = self.diffusion.sample(self.net, batch, steps=self.steps, x_init=x_init,
                                      noise_generators=noise_generators, guidance=steer)
            out.append(x.detach().cpu().double().numpy().reshape(copies, n, 3))
        return np.concatenate(out)


def rdkit_conformers(mol: Chem.Mol, count: int, method: str, seed: int) -> np.ndarray:
    """[C <= count, N, 3] Angstrom, centred, from ETKDG (``method`` etkdg or etkdg-mmff) on
    ``mol``'s atoms; MoleculeError when nothing could be embedded."""
    from conformer.baselines import generate_rdkit

    embedded = generate_rdkit(mol, count, method, seed)
    ids = [c.GetId() for c in embedded.GetConformers()]
    if not ids:
        raise MoleculeError(f"{method} could not embed the molecule")
    positions = np.stack([embedded.GetConformer(i).GetPositions() for i in ids])
    return positions - positions.mean(axis=1, keepdims=True)


def molecule_seed(seed: int, line_number: int) -> int:
    """The seed of the molecule accounted as ``line_number`` in a run with ``seed`` (never 0:
    ETKDG's seed 0 makes every conformer identical)."""
    return (seed * 1_000_003 + line_number * 7_919 + 17) % (2 ** 31 - 1) or 1
