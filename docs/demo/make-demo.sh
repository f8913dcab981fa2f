#!/bin/bash
# Rebuild the built-in demo project (assets/demo) from the Colin27 brain of Debian's mricron-data:
# twenty Colin27-derived training subjects; an automatic model and a promptable model trained on
# them with the planner's defaults and time budgets (the automatic one 25 minutes, then 25
# more); one more subject (seed 54: a patient with a white-matter lesion, an infarct and a
# tumour) with both models added to its project as versions v1 (active, it predicts the case)
# and v2 (the Prompt tool's).
# About 75 minutes on a 2-core CPU. Usage: docs/demo/make-demo.sh WORK_DIR [MRILOOP_BINARY]
set -euo pipefail
work=${1:?give a work folder}
bin=$(realpath "${2:-target/release/mriloop}")
repo=$(pwd)
mkdir -p "$work" && cd "$work"
anatomy=(--anatomy colin27 --grid 96 --voxel-mm 1.0)
"$bin" phantom --out train --cases 20 --seed 41 "${anatomy[@]}"
"$bin" train train --minutes 25 --out auto
"$bin" train train --promptable --resume auto/best --minutes 20 --out prompt
# The automatic model goes on from its last epoch: "best" is chosen by validation Dice plus class
# AUC, and on 4 validation cases the AUC's noise picked the second epoch of nine.
"$bin" train train --resume auto/last --minutes 25 --out auto2
"$bin" phantom --out demo --cases 1 --seed 54 "${anatomy[@]}"
"$bin" add-model demo --model auto2/last --activate
"$bin" add-model demo --model prompt/best
"$bin" predict demo --backend cpu
rm -f demo/cases/*/prediction.json
# The shipped folder keeps its README (attribution and licence).
find "$repo/assets/demo" -mindepth 1 ! -name README.md -delete
cp -r demo/. "$repo/assets/demo/"
echo "assets/demo rebuilt; list its files in src/project/demo.rs (DEMO_FILES)"
