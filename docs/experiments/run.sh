#!/bin/sh
# Reproduces the reports in docs/experiments/: builds each phantom project, then runs its plan.
# Usage: docs/experiments/run.sh [multi-task|multi-sequence|tiny-structure|4d|colin27-tiny-structure|
#        colin27-tiny-structure-planned|colin27-multi-task|colin27-multi-sequence|colin27-4d|all]
# Deterministic from the seeds below and in the plans (same machine and backend: same numbers),
# except the plans with a time budget ("minutes"), whose step counts follow the machine's speed.
set -e
cd "$(dirname "$0")/../.."
cargo build --release
M=target/release/mriloop
W=${MRILOOP_EXPERIMENTS:-/tmp/mriloop-experiments}
which=${1:-all}
run() { # name, phantom flags...
    name=$1; shift
    if [ "$which" = all ] || [ "$which" = "$name" ]; then
        rm -rf "$W/$name"
        $M phantom --out "$W/$name" "$@"
        $M experiment "$W/$name" --plan "docs/experiments/plans/$name.json" \
            --out "docs/experiments/$name"
    fi
}
run multi-task --cases 24 --seed 11 --grid 32
run multi-sequence --cases 24 --seed 12 --grid 32 --sequence-specific-lesions
run tiny-structure --cases 24 --seed 13 --grid 40 --voxel-mm 0.7
run 4d --cases 24 --seed 14 --form 4d --grid 24 --frames 100
run colin27-tiny-structure --cases 40 --seed 21 --grid 40 --voxel-mm 0.7 --anatomy colin27
run colin27-tiny-structure-planned --cases 40 --seed 21 --grid 40 --voxel-mm 0.7 --anatomy colin27
# The cross-template test set: MNI152-derived subjects every colin27-multi-task run is also
# tested on (the plan's also_test).
if [ "$which" = all ] || [ "$which" = colin27-multi-task ]; then
    rm -rf "$W/colin27-multi-task-mni152"
    $M phantom --out "$W/colin27-multi-task-mni152" --anatomy mni152 --cases 20 --seed 24 \
        --grid 40 --voxel-mm 1
fi
run colin27-multi-task --cases 40 --seed 23 --grid 40 --voxel-mm 1 --anatomy colin27
run colin27-multi-sequence --cases 40 --seed 22 --grid 40 --voxel-mm 1 --anatomy colin27 \
    --sequence-specific-lesions
run colin27-4d --cases 40 --seed 25 --form 4d --grid 48 --frames 60 --anatomy colin27
