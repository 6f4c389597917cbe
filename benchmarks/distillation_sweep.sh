#!/usr/bin/env bash
# The KD settings sweep of benchmarks/DISTILL_RESULTS.md: every row runs the same recipe
# (prune 70 % → recover → 4-bit QAT) with a different leading distill stage, 3 seeds,
# at the 4+4+2 and 8+8+4 epoch budgets. Writes sweep_<budget>.json to $1 (default .).
# Ran on 16 cores with --jobs 8; on 2 cores pass JOBS=1 (about 30 min).
set -euo pipefail
out=${1:-.}
V=(--variant 'a1T1={alpha: 1.0, temperature: 1}' --variant 'a1T2={alpha: 1.0, temperature: 2}' --variant 'a1T4={alpha: 1.0, temperature: 4}' --variant 'a1T8={alpha: 1.0, temperature: 8}'
 --variant 'a09T2={alpha: 0.9, temperature: 2}' --variant 'a09T8={alpha: 0.9, temperature: 8}' --variant 'a05T4={alpha: 0.5, temperature: 4}'
 --variant 'ph_resp={alpha: 0.9, temperature: 4, schedule: {kind: phases}}'
 --variant 'ph_T2={alpha: 0.9, temperature: 2, feature_weight: 1, schedule: {kind: phases}}'
 --variant 'ph_a1={alpha: 1.0, temperature: 4, feature_weight: 1, schedule: {kind: phases}}'
 --variant 'ph_f5={alpha: 0.9, temperature: 4, feature_weight: 5, schedule: {kind: phases}}'
 --variant 'ph_featall={alpha: 0.9, temperature: 4, feature_weight: 1, feature_layers: [features.1, features.3, features.5, "classifier.1:input"], schedule: {kind: phases}}'
 --variant 'ph_featall5={alpha: 0.9, temperature: 4, feature_weight: 5, feature_layers: [features.1, features.3, features.5, "classifier.1:input"], schedule: {kind: phases}}'
 --variant 'featall_const={alpha: 0.9, temperature: 4, feature_weight: 1, feature_layers: [features.1, features.3, features.5, "classifier.1:input"]}'
 --variant 'ph_att={alpha: 0.9, temperature: 4, feature_weight: 1, attention_weight: 50, schedule: {kind: phases}}'
 --variant 'ph_con={alpha: 0.9, temperature: 4, feature_weight: 1, contrastive_weight: 0.5, schedule: {kind: phases}}'
 --variant 'ph_long={alpha: 0.9, temperature: 4, feature_weight: 1, schedule: {kind: phases, early_until: 4, late_from: 10}}'
 --variant 'lin={alpha: 0.9, temperature: 4, feature_weight: 1, schedule: {kind: linear, start: 0.3, end: 1.5, ramp_epochs: 8}}')
for b in "4 4 2" "8 8 4"; do
  set -- $b
  python benchmarks/distillation.py --json --jobs "${JOBS:-8}" --prune-epochs "$1" --recover-epochs "$2" --qat-epochs "$3" \
    --variants no_kd response+phases "${V[@]}" > "$out/sweep_$1_$2_$3.json"
done
