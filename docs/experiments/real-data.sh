#!/bin/sh
# Real-data check (issue 8): fetches Debian's mricron-data package (the Colin27 T1 template and
# the AAL parcellation on its grid) into a temporary folder — nothing of it is committed — cuts
# the axial slices through the caudate into a 2D project and runs the plan on it.
set -e
cd "$(dirname "$0")/../.."
cargo build --release
M=target/release/mriloop
W=${MRILOOP_EXPERIMENTS:-/tmp/mriloop-experiments}
mkdir -p "$W/deb"
(cd "$W/deb" && apt-get download mricron-data)
dpkg -x "$W"/deb/mricron-data_*.deb "$W/mricron"
T="$W/mricron/usr/share/mricron/templates"
rm -rf "$W/real-caudate-2d"
$M slices --image "$T/ch2.nii.gz" --labels "$T/aal.nii.gz" --keep 71:caudate_L,72:caudate_R \
    --min-voxels 20 --out "$W/real-caudate-2d"
$M experiment "$W/real-caudate-2d" --plan docs/experiments/plans/real-caudate-2d.json \
    --out docs/experiments/real-caudate-2d
