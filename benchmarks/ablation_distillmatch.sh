#!/usr/bin/env bash
# DistillMatch ablations (distillation teacher, V2I-GAN pseudo-infrared): same init (distillmatch-v0.2), seed, data and schedule; one factor changes. About 30 min on a 2-core CPU.
# Usage: benchmarks/ablation_distillmatch.sh ../shared/data VALIDATION_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"; VAL="${2:?usage: ablation_distillmatch.sh DATA_DIR VALIDATION_DIR (from python -m dmreg.train.validation_pairs)}"
mkdir -p benchmarks/results/ablation
. .venv/bin/activate
common=(--init distillmatch-v0.2 --data "$DATA" --steps 120 --batch 4 --size 160 --lr 2e-4 --seed 5
        --simulate-prob 0.6 --save-every 60 --log-every 20 --threads 1)
python -m dmreg.train.train --out benchmarks/results/ablation/teacher-hand "${common[@]}" --teacher xfeat --pseudo-infrared hand > benchmarks/results/ablation/teacher-hand.log 2>&1 &
python -m dmreg.train.train --out benchmarks/results/ablation/noteacher-hand "${common[@]}" --teacher none --pseudo-infrared hand > benchmarks/results/ablation/noteacher-hand.log 2>&1
wait
python -m dmreg.train.train --out benchmarks/results/ablation/teacher-gan "${common[@]}" --teacher xfeat --pseudo-infrared gan > benchmarks/results/ablation/teacher-gan.log 2>&1 &
python -m dmreg.train.train --out benchmarks/results/ablation/teacher-mixed "${common[@]}" --teacher xfeat --pseudo-infrared mixed > benchmarks/results/ablation/teacher-mixed.log 2>&1
wait
for m in teacher-hand noteacher-hand teacher-gan teacher-mixed; do echo "distillmatch@benchmarks/results/ablation/$m"; done | paste -sd, > benchmarks/results/ablation/specs
OMP_NUM_THREADS=2 dmreg evaluate "$VAL" --filter shift --compare "$(cat benchmarks/results/ablation/specs)" --device cpu --json benchmarks/results/ablation/eval.json --overwrite > benchmarks/results/ablation/eval.log 2>&1
