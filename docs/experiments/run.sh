#!/bin/sh
# Reproduces the reports in docs/experiments/: builds each phantom project, then runs its plan.
# Usage: docs/experiments/run.sh [multi-task|multi-sequence|tiny-structure|4d|colin27-tiny-structure|colin27-tiny-structure-planned|all]
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
