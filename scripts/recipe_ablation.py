"""Recipe ablations at a fixed CPU-time budget (see conformer/experiments/ablation.py).

    python scripts/recipe_ablation.py --arms scripts/recipe_ablation_arms.yaml \
        --geom-dir /work/keep/ablation/geom --cache-dir /work/keep/ablation/cache \
        --out /work/keep/ablation/results --budget-minutes 20 [--only edm,flow] \
        [--validation-dir /work/keep/val_druglike_geom --validation-name druglike]

Arms run one after the other in this process (start one process per arm, each with --only,
to run them side by side). A finished arm (out/arms/<arm>.json) is not rerun; an interrupted
one resumes its training. out/table.md is rewritten from every finished arm at the end.
"""

from __future__ import annotations

import argparse
import sys

from conformer.errors import UserInputError
from conformer.experiments.ablation import (
    AblationSettings,
    read_arms,
    run_arm,
    select,
    write_table,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="scripts/recipe_ablation_arms.yaml", help="arms YAML")
    parser.add_argument("--only", default=None, help="comma-separated arm names (default: all)")
    parser.add_argument("--geom-dir", required=True, help="GEOM-layout build with split.npy")
    parser.add_argument("--cache-dir", required=True, help="its `conformer prepare` output")
    parser.add_argument("--out", required=True, help="results folder (resumable)")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="training CPU-minutes per arm (process CPU time)")
    parser.add_argument("--val-molecules", type=int, default=40,
                        help="first N molecules of the build's val split")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    parser.add_argument("--validation-dir", default=None,
                        help="another GEOM-layout build whose val split supplies the validation "
                             "molecules (default: --geom-dir's); needs --validation-name")
    parser.add_argument("--validation-name", default="",
                        help="name of that validation set: its samples, scores, rows and table "
                             "go to OUT/scored/NAME/, trained models are reused")
    parser.add_argument("--mmff", action="store_true",
                        help="score each arm's conformers after MMFF94 minimisation (generate's "
                             "default since session 10) instead of as drawn; use a "
                             "--validation-name of its own, the rows are not comparable")
    parser.add_argument("--table-only", action="store_true",
                        help="only rewrite out/table.md from the finished arms")
    args = parser.parse_args(argv)
    try:
        settings = AblationSettings(out=args.out, geom_dir=args.geom_dir,
                                    cache_dir=args.cache_dir,
                                    budget_cpu_minutes=args.budget_minutes,
                                    val_molecules=args.val_molecules, threads=args.threads,
                                    validation_dir=args.validation_dir,
                                    validation_name=args.validation_name, mmff=args.mmff)
        arms = read_arms(args.arms)
        if not args.table_only:
            for arm in select(arms, args.only):
                row = run_arm(arm, settings, arms)
                metrics = row["metrics"]
                print(f"{arm.name}: {row['training']['global_step']} steps, COV-R "
                      f"{100 * metrics['cov_r_mean']:.1f}%, MAT-R {metrics['mat_r_mean']:.3f} A",
                      flush=True)
        table = write_table(settings, arms)
        print(f"table: {table}" if table else "no finished arm yet")
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
