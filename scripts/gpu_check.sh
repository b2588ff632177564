#!/usr/bin/env bash
# Everything that needs a GPU, in one run: the tests marked `gpu` (train with mixed precision,
# generate and evaluate on CUDA), the throughput benchmark (training molecules/s and sampling
# conformers/s of the shipped recipe against a plain e3nn 'uvu' network, one process), and a
# time-limited training run; writes OUT/gpu.md (default docs/results/gpu.md) with the figures.
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR] [--python PY] [--cache DIR]
#                        [--train-minutes M] [--bench-seconds S] [--batch-molecules N]
#
#   --dry-run          the same steps on the CPU at toy sizes (seconds), into a temporary folder
#                      unless --out is given; the test suite runs this
#   --out DIR          where gpu.md, the JSON figures and the logs go (default docs/results,
#                      dry run: a new temporary folder)
#   --python PY        interpreter with the package installed (default .venv/bin/python if
#                      present, else python3)
#   --cache DIR        prepared records (`conformer prepare` output) for the training run;
#                      default: build-geom + prepare of the first --build-molecules SMILES of
#                      data/train_smiles/train_druglike.smi (dry run: tests/fixtures/geom_mini)
#   --build-molecules N  molecules built when no --cache is given (default 400)
#   --train-minutes M  wall-clock limit of the training run (default 10; dry run 0.3)
#   --bench-seconds S  timed seconds per throughput measurement (default 10; dry run 0.3)
#   --batch-molecules N molecules per batch in the benchmark (default 512; dry run 2)
#
# On this project's lent GPU machine rdkit is not installed: carry wheels as the device tool's
# README explains (rdkit, e3nn, lightning and their pure-Python needs), prepare the cache on the
# CPU machine and carry it, then run `bash scripts/gpu_check.sh --cache CACHE`.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
OUT=""
PY=""
CACHE=""
BUILD_MOLECULES=400
TRAIN_MINUTES=""
BENCH_SECONDS=""
BATCH_MOLECULES=""
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --python) PY="$2"; shift ;;
        --cache) CACHE="$2"; shift ;;
        --build-molecules) BUILD_MOLECULES="$2"; shift ;;
        --train-minutes) TRAIN_MINUTES="$2"; shift ;;
        --bench-seconds) BENCH_SECONDS="$2"; shift ;;
        --batch-molecules) BATCH_MOLECULES="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=${WANDB_MODE:-disabled}
export PYTHONUNBUFFERED=1

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    ACCELERATOR=cpu
    PRECISION=32-true
    OUT=${OUT:-$(mktemp -d)}
    TRAIN_MINUTES=${TRAIN_MINUTES:-0.3}
    BENCH_SECONDS=${BENCH_SECONDS:-0.3}
    BATCH_MOLECULES=${BATCH_MOLECULES:-2}
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False);" \
             "use --dry-run on a machine without a GPU" >&2
        exit 2
    fi
    DEVICE=cuda
    ACCELERATOR=gpu
    PRECISION=bf16-mixed
    OUT=${OUT:-docs/results}
    TRAIN_MINUTES=${TRAIN_MINUTES:-10}
    BENCH_SECONDS=${BENCH_SECONDS:-10}
    BATCH_MOLECULES=${BATCH_MOLECULES:-512}
fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "gpu_check: device $DEVICE, out $OUT, python $PY"

# 1. the tests marked gpu, on this device
echo "== 1/3 tests marked gpu"
set +e
CONFORMER_TEST_DEVICE=$DEVICE "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider \
    2>&1 | tee "$OUT/gpu_tests.log"
TESTS_RC=${PIPESTATUS[0]}
set -e

# 2. throughput of the shipped recipe against a plain e3nn network, one process
echo "== 2/3 throughput"
"$PY" benchmarks/bench_throughput.py --device "$DEVICE" --seconds "$BENCH_SECONDS" \
    --batch-molecules "$BATCH_MOLECULES" --json "$OUT/gpu_throughput.json"
if [ "$PRECISION" != 32-true ]; then
    "$PY" benchmarks/bench_throughput.py --device "$DEVICE" --seconds "$BENCH_SECONDS" \
        --batch-molecules "$BATCH_MOLECULES" --precision "$PRECISION" \
        --json "$OUT/gpu_throughput_mixed.json"
fi

# 3. a time-limited training run of the bundled recipe on this device
echo "== 3/3 training run ($TRAIN_MINUTES min)"
if [ -z "$CACHE" ]; then
    CACHE=$WORK/cache
    if [ "$DRY_RUN" = 1 ]; then
        GEOM=tests/fixtures/geom_mini
    else
        GEOM=$WORK/geom
        head -n "$BUILD_MOLECULES" data/train_smiles/train_druglike.smi > "$WORK/train.smi"
        "$PY" -m conformer.cli build-geom "$WORK/train.smi" --out "$GEOM" --confs 12 --seed 1 \
            --workers "$(nproc)"
    fi
    "$PY" -m conformer.cli prepare "$GEOM" --split "$GEOM/split.npy" --out "$CACHE" \
        --workers "$(nproc)" --allow-split-subset
fi
MAX_TIME=$("$PY" -c "import sys; s = round(float(sys.argv[1]) * 60); \
print(f'00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}')" "$TRAIN_MINUTES")
CONFIG=configs/bundled/small_recm.yaml
EXTRA=()
if [ "$DRY_RUN" = 1 ]; then
    # toy network and batch: the dry run checks the plumbing, not the figures
    CONFIG=configs/experiment/tiny.yaml
    EXTRA=(trainer.max_steps=1000000)
else
    EXTRA=(trainer.max_steps=10000000 data.max_atoms_per_batch=20000 data.num_workers=4)
fi
"$PY" -m conformer.cli train --config "$CONFIG" data.cache_dir="$CACHE" \
    trainer.accelerator=$ACCELERATOR trainer.devices=1 trainer.precision=$PRECISION \
    trainer.max_time="$MAX_TIME" name=gpu_check logging.run_dir="$WORK/runs" \
    logging.wandb=false logging.progress_bar=false "${EXTRA[@]}" 2>&1 | tee "$OUT/gpu_train.log"

"$PY" - "$OUT" "$WORK/runs/gpu_check" "$DEVICE" "$TESTS_RC" "$TRAIN_MINUTES" "$DRY_RUN" <<'EOF'
"""Collect the three steps' figures into OUT/gpu.md and OUT/gpu_check.json."""
import csv
import json
import sys
from pathlib import Path

out, run, device, tests_rc, minutes, dry = sys.argv[1:7]
out, run = Path(out), Path(run)
plain = json.loads((out / "gpu_throughput.json").read_text())
mixed_path = out / "gpu_throughput_mixed.json"
mixed = json.loads(mixed_path.read_text()) if mixed_path.exists() else None
measured = [plain] + ([mixed] if mixed else [])
rows = list(csv.DictReader(open(next(run.rglob("metrics.csv")))))
steps = [int(r["step"]) for r in rows if r.get("step")]
val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
train_rows = [r for r in rows if r.get("train/loss")]
summary = {"device": device, "dry_run": dry == "1", "gpu_tests_exit_code": int(tests_rc),
           "throughput_fp32": plain, "throughput_mixed": mixed,
           "training": {"minutes": float(minutes), "last_step": max(steps, default=0),
                        "last_train_loss": float(train_rows[-1]["train/loss"]) if train_rows else None,
                        "val_losses": val}}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
env = plain["environment"]
lines = ["# GPU check" + (" (dry run on the CPU: plumbing only, no figure here is a GPU figure)"
                          if dry == "1" else ""), "",
         f"Written by `scripts/gpu_check.sh`; device `{device}`; torch "
         f"{env['libraries'].get('torch')}; e3nn {env['libraries'].get('e3nn')}; code revision "
         f"{env.get('git_revision')}.", "",
         f"- Tests marked `gpu`: exit code {tests_rc} (log: gpu_tests.log).", "",
         "## Throughput (one process; benchmarks/bench_throughput.py)", "",
         f"{plain['batch_molecules']} molecules per batch, {plain['atoms_per_molecule']} atoms per "
         f"molecule (hydrogens included), {plain['network_evaluations_per_conformer']} network "
         "evaluations per conformer (the shipped sampler, raw: no guidance, no RDKit).", "",
         "| network | training precision | train molecules/s | sample conformers/s |",
         "|---|---|---|---|"]
for figures in measured:
    for name, r in figures["rates"].items():
        lines.append(f"| {name} | {figures['precision']} | {r['train_molecules_per_s']} | "
                     f"{r['sample_conformers_per_s']} |")
for figures in measured:
    ratio = figures["ratio_shipped_over_plain"]
    lines.append(f"\nRatio shipped / plain 'uvu' ({figures['precision']}): train {ratio['train']}, "
                 f"sample {ratio['sample']}.")
t = summary["training"]
lines += ["", f"## Training run ({t['minutes']} min wall-clock limit)", "",
          f"- Last step {t['last_step']}, last training loss {t['last_train_loss']}, "
          f"validation losses {[round(v, 4) for v in t['val_losses']]}.", ""]
(out / "gpu.md").write_text("\n".join(lines))
print("\n".join(lines))
EOF
if [ "$TESTS_RC" != 0 ]; then
    echo "gpu_check.sh: the tests marked gpu failed (exit $TESTS_RC): see $OUT/gpu_tests.log" >&2
    exit 1
fi
echo "gpu_check: wrote $OUT/gpu.md"
