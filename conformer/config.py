"""The training configuration: typed dataclasses are the schema, YAML files fill them in.

One YAML file per benchmark row lives in ``configs/experiment/``. A file may name a ``base``
file (a path relative to itself) whose settings it extends; then dotted command-line overrides
(``optim.lr=3e-4 model.overrides.num_layers=4``) are applied, each value parsed as YAML. Unknown
keys are errors that name the key and the file, so a typo never silently trains the default.

The resolved config (``to_dict``) is what every checkpoint stores. ``conformer train`` takes its
own options from :class:`TrainCommandSettings` and lists every config key with its default
(:func:`config_keys_help`) in its ``--help``, so each default is written once, here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conformer.cli_settings import default_of, option
from conformer.diffusion import DIFFUSION_KINDS
from conformer.diffusion.edm import EDMSettings
from conformer.diffusion.flow import FlowSettings
from conformer.errors import UserInputError

# how a model treats hydrogens: diffused with the heavy atoms, or placed by RDKit afterwards
HYDROGEN_MODES = ("explicit", "implicit")
# the diffusion section's schema is the settings class its ``kind`` names (absent: edm)
DiffusionConfig = EDMSettings | FlowSettings


@dataclass
class DataConfig:
    """Where the prepared records are and how batches are formed.

    cache_dir: the ``conformer prepare`` output folder (``open_prepared(cache_dir, dataset, split)``).
    max_atoms_per_batch: batches are packed up to this many atoms (the atoms the network sees:
    hydrogens included when ``hydrogens`` is explicit, heavy atoms only when implicit).
    max_molecules: use only the first N molecules of each split (0 = all); for smoke runs.
    hydrogens: ``explicit`` diffuses every atom; ``implicit`` diffuses heavy atoms only (the
    records' hydrogens, their bonds and coordinates are dropped when a batch is built, so one
    prepared cache serves both) and generation places the hydrogens with RDKit. Recorded in
    the model file (``model_spec["hydrogens"]``).
    """

    cache_dir: str = "cache/prepared"
    dataset: str = "drugs"
    train_split: str = "train"
    val_split: str = "val"
    max_atoms_per_batch: int = 1500
    max_molecules: int = 0
    num_workers: int = 0
    hydrogens: str = "explicit"

    def __post_init__(self) -> None:
        if self.hydrogens not in HYDROGEN_MODES:
            raise ValueError(f"hydrogens {self.hydrogens!r}: choose "
                             f"{' or '.join(HYDROGEN_MODES)}")


@dataclass
class ModelConfig:
    """The denoiser: ``conformer.nn.build_denoiser(preset, mode, **overrides)``.

    init_from: a training checkpoint (``.ckpt``, its EMA weights) or a model file whose
    weights start a new run (fine-tuning: fresh optimiser, schedule and step count); the
    network it holds must be the one ``preset``/``mode``/``overrides`` build. Ignored when a
    run is resumed (``--resume`` takes everything from ``last.ckpt``).
    init_grow: ``init_from``'s network may be this one with inputs or read-outs added
    (chirality_features, cip_rank_edges, cip_rank_out_edges, parity_readout, bond_hops): the
    run starts computing exactly what that network computed, new weights at zero and RECM
    branches afresh (``conformer.nn.grow``).
    """

    preset: str = "small"
    mode: str = "recm"
    overrides: dict = field(default_factory=dict)
    init_from: str | None = None
    init_grow: bool = False


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``.

    volume_loss_weight: weight of an auxiliary hinge added to the denoising loss (EDM only;
        0 = off): over every R/S centre with three CIP-ranked neighbours,
        ``mean(relu(volume_loss_margin - sign(V_clean) V_denoised))``, V the normalised signed
        volume of the centre and its neighbours of CIP rank 1-3 (in [-1, 1]), in the training
        conformer and in the network's denoised estimate of it. It asks the estimate to keep
        each labelled centre's handedness; with the label as an even input only a
        reflection-breaking model (RECM's reflection branch) can (``reproduce chirality``
        uses the same hinge, weight 30). Needs records with CIP neighbour ranks.
    volume_loss_margin: the hinge's margin (in units of the normalised volume).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    volume_loss_weight: float = 0.0
    volume_loss_margin: float = 0.3


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings. Multi-node = ``num_nodes``/``devices``/``strategy``
    (Lightning detects SLURM by itself; see ``configs/slurm/``)."""

    max_steps: int = 20000
    max_epochs: int = -1
    max_time: str | None = None  # wall-clock limit "DD:HH:MM:SS" (a checkpoint is written)
    # stop (and write last.ckpt) once the training process has used this many CPU seconds
    # (time.process_time(), all threads); null = no limit. Fixed-budget comparisons on a shared
    # machine: wall time would count the other jobs' load.
    max_cpu_seconds: float | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    val_check_interval: Any = 1.0
    check_val_every_n_epoch: Any = 1
    limit_val_batches: Any = 1.0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 500
    accumulate_grad_batches: int = 1
    deterministic: bool = False


@dataclass
class LoggingConfig:
    """CSV is always written; wandb runs offline unless WANDB_MODE says otherwise."""

    run_dir: str = "runs"
    wandb: bool = True
    wandb_project: str = "conformer"
    progress_bar: bool = True


@dataclass
class ExperimentConfig:
    """One training run. ``name`` names the run folder ``<logging.run_dir>/<name>``."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=EDMSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_path(self) -> Path:
        return Path(self.logging.run_dir) / self.name


@dataclass
class TrainCommandSettings:
    """The options of ``conformer train`` (the run itself is an :class:`ExperimentConfig`,
    read from ``config`` with ``overrides`` applied)."""

    config: str = option(help="experiment YAML, e.g. configs/experiment/drugs_recm.yaml",
                         metavar="YAML")
    resume: bool = option(False, help="continue the interrupted run from "
                                      "RUN_DIR/NAME/checkpoints/last.ckpt")
    export_to: str | None = option(None, metavar="MODEL.pt",
                                   help="after training, write the exported EMA model (for "
                                        "`conformer generate --ckpt`) to this file")
    print_config: bool = option(False, help="print the resolved config as JSON and exit "
                                            "without training")
    overrides: list[str] = field(default_factory=list)  # the positional KEY=VALUE arguments


def _default_text(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, dict) else str(value)


def config_keys_help() -> str:
    """Every config key (dotted) with its default, section by section, read from the
    dataclasses: the reference ``conformer train --help`` prints."""
    hints = typing.get_type_hints(ExperimentConfig)
    lines = ["config keys (YAML sections, or KEY=VALUE overrides) and their defaults:"]
    for top in dataclasses.fields(ExperimentConfig):
        section = hints[top.name]
        if top.name == "diffusion":
            lines.append("  diffusion: the generative process; diffusion.kind = edm (default) or "
                         "flow selects the keys below")
            for kind, (settings_class, _) in DIFFUSION_KINDS.items():
                lines.extend(f"    diffusion.{f.name} = {_default_text(default_of(f))}"
                             + (f"  [{kind}]" if f.name != "kind" else "")
                             for f in dataclasses.fields(settings_class)
                             if f.name != "kind" or kind == "edm")
            continue
        if not dataclasses.is_dataclass(section):
            lines.append(f"  {top.name} = {_default_text(default_of(top))}")
            continue
        summary = " ".join((section.__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"  {top.name}: {summary}")
        lines.extend(f"    {top.name}.{f.name} = {_default_text(default_of(f))}"
                     for f in dataclasses.fields(section))
    return "\n".join(lines)


def _diffusion_kind_of(section) -> str:
    return section.get("kind", "edm") if isinstance(section, dict) else "edm"


def _deep_merge(base: dict, update: dict, top: bool = True) -> dict:
    """``update`` merged into ``base``. A top-level ``diffusion`` section whose ``kind``
    differs from the base's replaces it: EDM keys mean nothing to flow matching."""
    merged = dict(base)
    for key, value in update.items():
        if (top and key == "diffusion" and isinstance(value, dict) and "kind" in value
                and _diffusion_kind_of(value) != _diffusion_kind_of(merged.get(key))):
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, top=False)
        else:
            merged[key] = value
    return merged


def _read_yaml_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise UserInputError(f"config {path}: 'base' files form a cycle")
    if not path.is_file():
        raise UserInputError(f"config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserInputError(f"config {path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise UserInputError(f"config {path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    return _deep_merge(_read_yaml_with_bases(path.parent / base, (*seen, path)), data)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserInputError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=3e-4", "trainer.devices=2"]`` -> nested dict, values parsed as YAML."""
    data: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise UserInputError(f"override {item!r}: value is not valid YAML ({error})") from error
        _set_dotted(data, key, value)
    return data


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserInputError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if hint == DiffusionConfig:
            kind = _diffusion_kind_of(value)
            if kind not in DIFFUSION_KINDS:
                raise UserInputError(f"{where}: {name}.kind {kind!r}: choose one of "
                                     f"{', '.join(DIFFUSION_KINDS)}")
            hint = DIFFUSION_KINDS[kind][0]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}: {name}" if ":" not in where
                                  else f"{where}.{name}")
        else:
            kwargs[name] = _check_type(hint, value, f"{where}: {name}" if ":" not in where
                                       else f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as error:  # a settings class's own validation (e.g. an unknown solver)
        raise UserInputError(f"{where}: {error}") from error


def _check_type(hint, value, where: str):
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool, dict):
        if hint is int and isinstance(value, bool):
            raise UserInputError(f"{where}: expected int, got {value!r}")
        if not isinstance(value, hint):
            raise UserInputError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def config_from_dict(data: dict, where: str = "config") -> ExperimentConfig:
    """An ``ExperimentConfig`` from a nested dict (unknown keys and wrong types are errors)."""
    return _build(ExperimentConfig, data, where)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read ``path`` (with its ``base`` chain), apply dotted ``overrides``, validate."""
    data = _read_yaml_with_bases(Path(path)) if path else {}
    data = _deep_merge(data, parse_overrides(list(overrides)))
    return config_from_dict(data, where=str(path) if path else "config")
