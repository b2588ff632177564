#!/bin/bash
# The exact commands that produced the bundled model conformer/assets/model.pt (session 10):
# the wide heavy-atom recipe (configs/bundled/wide_recm_heavy.yaml, recm mode; hydrogens placed
# by RDKit at generation), 24,000 steps (steps 1-3: the bundled model of sessions 7-9), then
# 5,000 steps of fine-tuning with edges between atoms 2 and 3 bonds apart on a 2,500-molecule
# build (step 4: the ft_druglike_hops3 arm of docs/results/recipe_ablation.md), exported with
# the 5 + 20 sampler of sessions 7-9 (29 network evaluations; generate then polishes each
# sample with MMFF94).
# Every step resumes when the script is rerun.
#
#   GEOM_DIR   GEOM-layout folder built by `conformer build-geom` from
#              data/train_smiles/train_druglike.smi (default ../keep/bundled_geom)
#   CACHE      prepared records (default ../keep/bundled_cache)
#   RUNS       training runs (default ../keep/runs)
#   CONFIGS    which bundled configs to train (default "wide_recm_heavy", the shipped model;
#              small_recm_heavy is session 5's, small_recm and small_equivariant the older
#              explicit-hydrogen recipes)
#   EXTRA      extra dotted overrides for `conformer train`, e.g. "trainer.max_steps=2000"
#   THREADS    torch threads for training (default 1: as fast as 2 on a quiet 2-core machine,
#              and not slowed down by other work on the second core)
#   FT_GEOM, FT_CACHE  step 4's build and records (default ../keep/druglike_geom,
#              ../keep/druglike_cache)
#   BASE       step 4's starting model (default: step 3's export, RUNS/bundled_wide_recm_heavy/
#              model.pt; the same file as `git show 2f7c322:conformer/assets/model.pt`)
#
# Session 5: steps 1-2 on 2 workers (build 2,009 s, prepare ~25 s). Sessions 6-7 (the shipped
# wide model): step 3 on one thread, about 150 steps a minute, in three sittings resumed with
# --resume. Session 9: step 4 (the build about 17 minutes on one worker, training 1,807
# CPU-seconds on one thread), run by scripts/recipe_ablation.py --arms
# scripts/finetune_arms.yaml --only ft_druglike_hops3 (the same training as the command below;
# the harness also caps CPU time, which this run did not reach).
set -euo pipefail
cd "$(dirname "$0")/.."
GEOM_DIR=${GEOM_DIR:-../keep/bundled_geom}
CACHE=${CACHE:-../keep/bundled_cache}
RUNS=${RUNS:-../keep/runs}
CONFIGS=${CONFIGS:-"wide_recm_heavy"}
EXTRA=${EXTRA:-}
THREADS=${THREADS:-1}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-.}
export OMP_NUM_THREADS=$THREADS
export WANDB_MODE=${WANDB_MODE:-disabled}

# 1. the GEOM-layout folder: 4,912 molecules built, 9 failures listed in its failures.csv
#    (ETKDGv3, 12 embeddings, MMFF94, 6 kcal/mol window, 0.5 A de-duplication, seed 1)
$PY -m conformer.cli build-geom data/train_smiles/train_druglike.smi --out "$GEOM_DIR" \
    --confs 12 --seed 1 --workers 2 --no-progress
# 2. featurised records, split as build-geom wrote it (80/10/10)
$PY -m conformer.cli prepare "$GEOM_DIR" --split "$GEOM_DIR/split.npy" --out "$CACHE" \
    --workers 2 --no-progress
# 3. train, then export the EMA weights with the sampler chosen on validation molecules of our
#    own build (10 Heun steps with churn + 31 low-noise refinement steps = 50 network
#    evaluations; docs/results/recipe_ablation.md, the heavy_* sampler rows)
# session 7: 5 Heun steps + 20 refinements = 29 evaluations (recipe_ablation.md, sampler sweep);
# session 5's small model used 10 + 31 = 50
SAMPLER=${SAMPLER:-'{"sample_steps": 5, "churn": 10.0, "refine_steps": 20, "refine_sigma_max": 0.5, "refine_sigma_min": 0.02}'}
for CONFIG in $CONFIGS; do
    NAME=bundled_$CONFIG
    RESUME=""
    if [ -f "$RUNS/$NAME/checkpoints/last.ckpt" ]; then RESUME="--resume"; fi
    $PY -m conformer.cli train --config "configs/bundled/$CONFIG.yaml" $RESUME \
        data.cache_dir="$CACHE" logging.run_dir="$RUNS" $EXTRA
    OUT=$RUNS/$NAME/model.pt
    $PY -c "from conformer.model_io import export_checkpoint as e; import sys, json; \
print(e(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))['training'])" \
        "$RUNS/$NAME/checkpoints/last.ckpt" "$OUT" "$SAMPLER"
done
# 4. fine-tune the wide model (every RECM layer absorbed: exactly O(3)-equivariant) 5,000 steps
#    with hop edges (model.overrides.bond_hops=3) on 2,500 train_druglike molecules drawn with
#    seed 0, then export it with the same sampler as step 3 (5 Heun steps with churn 10 + 20
#    refinements; the fewer-step samplers of recipe_ablation.md's session-10 sweep lost
#    coverage or stereo on validation molecules)
BASE=${BASE:-$RUNS/bundled_wide_recm_heavy/model.pt}
FT_GEOM=${FT_GEOM:-../keep/druglike_geom}
FT_CACHE=${FT_CACHE:-../keep/druglike_cache}
FT_SMILES=$FT_GEOM.smi
if [ ! -f "$FT_SMILES" ]; then
    $PY -c "import random; lines = open('data/train_smiles/train_druglike.smi').readlines(); \
random.Random(0).shuffle(lines); open('$FT_SMILES', 'w').writelines(lines[:2500])"
fi
$PY -m conformer.cli build-geom "$FT_SMILES" --out "$FT_GEOM" --confs 12 --seed 1 --workers 2 \
    --no-progress
$PY -m conformer.cli prepare "$FT_GEOM" --split "$FT_GEOM/split.npy" --out "$FT_CACHE" \
    --workers 2 --no-progress
NAME=bundled_wide_recm_heavy_hops3
RESUME=""
if [ -f "$RUNS/$NAME/checkpoints/last.ckpt" ]; then RESUME="--resume"; fi
$PY -m conformer.cli train --config configs/bundled/wide_recm_heavy_moses.yaml $RESUME \
    name=$NAME model.init_from="$BASE" trainer.max_steps=5000 model.overrides.bond_hops=3 \
    data.cache_dir="$FT_CACHE" logging.run_dir="$RUNS" $EXTRA
$PY -c "from conformer.model_io import export_checkpoint as e; import sys, json; \
print(e(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))['training'])" \
    "$RUNS/$NAME/checkpoints/last.ckpt" conformer/assets/model.pt "$SAMPLER"
ls -la conformer/assets/
