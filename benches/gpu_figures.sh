#!/bin/bash
# Issue 22's GPU figures in one prepared run on a one-GPU machine whose python3 has PyTorch
# with CUDA (no Rust toolchain there): burn's wgpu backend beside PyTorch CUDA on the same GPU,
# for `bench train` (small and nnunet) and `bench predict --size 256` (f32 and f16: PyTorch under
# autocast). The CPU figures are left
# out (they take minutes on a server's CPU and are measured on the 2-core machine).
# `gpu_figures.sh spirv`: the same benchmarks (burn's side) with the SPIR-V build (below).
# `gpu_figures.sh profile` instead profiles burn's wgpu training step (small): kernel launches
# per step (cubecl's execution log over 20 and 220 timed steps, the difference over 200) and
# each kernel's time, run one at a time (cubecl's "medium" profile), and steps per second with
# 8, 128 and 1024 kernels per GPU submission (cubecl's default: 32), ~6 min.
#
# Carried in .dev/ (ignored by git): the release binary, stripped and xz-compressed
# (mriloop.xz), and the Debian packages of the Vulkan loader and glvnd (libvulkan1, libglvnd0,
# libglx0, libgl1, libegl1, libopengl0, libgles2: NVIDIA's Vulkan driver lives in its GLX library,
# which cannot create an instance without glvnd), and optionally gpu_caches.tgz (the kernel
# caches an earlier run saved). Run from the repository root; logs go to $OUT (default
# /tmp/gpu_figures). To prepare .dev on the (Debian, x86-64) build machine:
#   cargo build --release && mkdir -p .dev && strip -o /tmp/mriloop target/release/mriloop
#   xz -9e -c /tmp/mriloop > .dev/mriloop.xz     # ~36 MB: the repository and .dev travel together
#   (cd .dev && apt-get download libvulkan1 libglvnd0 libglx0 libgl1 libegl1 libopengl0 libgles2)
#   # for `spirv`, a second build, carried in a later call in place of mriloop.xz (both
#   # together outgrow what a device call carries, 64 MiB):
#   cargo build --release --features spirv --target-dir target/spirv
#   strip -o /tmp/mriloop-spirv target/spirv/release/mriloop
#   xz -9e -c /tmp/mriloop-spirv > .dev/mriloop-spirv.xz
set -u
out=${OUT:-/tmp/gpu_figures}
mkdir -p "$out"
for deb in .dev/*.deb; do dpkg -x "$deb" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd
# The binary finds benches/reference at the path it was built in.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
if [ -f .dev/gpu_caches.tgz ]; then # kernel caches of an earlier run (see the end)
    tar xzf .dev/gpu_caches.tgz target/environment
    mkdir -p "$HOME" && tar xzf .dev/gpu_caches.tgz -C "$HOME" .cache
fi
# `gpu_figures.sh spirv` runs the build with cubecl's SPIR-V compiler (`--features spirv`,
# .dev/mriloop-spirv.xz) instead: tensor cores (cooperative matrices) for half-precision
# products, which WGSL cannot reach.
binary=.dev/mriloop.xz
[ "${1:-}" = spirv ] && binary=.dev/mriloop-spirv.xz
xz -dc $binary >/tmp/mriloop && chmod +x /tmp/mriloop
export RUST_BACKTRACE=0 XDG_RUNTIME_DIR=/tmp
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$out/gpu.log"
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))' | tee -a "$out/gpu.log"
m=/tmp/mriloop
# Stop early (with the Vulkan loader's errors) if wgpu finds no GPU.
if VK_LOADER_DEBUG=error,warn $m bench predict --size 32 --backends wgpu 2>&1 | tee "$out/vulkan.log" |
    grep -q "wgpu skipped"; then
    cat "$out/vulkan.log"
    exit 1
fi
# H200 SXM: 67 TFLOP/s of plain f32 arithmetic (datasheet); PyTorch's convolutions use TF32.
peak=67
run() { # NAME SECONDS ARGS...: one benchmark, its log kept even if it is stopped.
    local name=$1 limit=$2
    shift 2
    echo "== $name: mriloop $*" | tee "$out/$name.log"
    local t0=$SECONDS
    timeout "$limit" "$m" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$out/$name.log"
}
# Each kernel burn launches in a training step of the small network, logged by cubecl (a
# cubecl.toml in the working directory, removed after): how many a step, and their times.
profile_log() { # LEVEL FILE: cubecl's profiling log at LEVEL into FILE
    printf '[profiling.logger]\nlevel = "%s"\nfile = "%s"\nappend = false\n' "$1" "$2" >cubecl.toml
}
if [ "${1:-}" = profile ]; then
    # A first run fills the kernel caches: a run that still tunes launches extra kernels in its
    # setup, which would skew the difference below (seen on lavapipe: 400 instead of 445).
    run warm_caches 150 bench train --config small --backends wgpu --repeats 5 --rounds 1
    for steps in 20 220; do
        profile_log minimal "$out/launches_$steps.log"
        run launches_$steps 150 bench train --config small --backends wgpu --repeats $steps --rounds 1
    done
    profile_log medium "$out/kernel_times.log"
    run kernel_times 150 bench train --config small --backends wgpu --repeats 40 --rounds 1
    rm -f cubecl.toml
    # Kernels per GPU submission (cubecl's default 32): if the step is bound by the host's
    # recording and submitting, fewer submissions show here.
    for tasks in 8 128 1024; do
        CUBECL_WGPU_MAX_TASKS=$tasks run tasks_$tasks 60 bench train --config small \
            --backends wgpu --repeats 200 --rounds 1
    done
    a=$(grep -c '^Executing' "$out/launches_20.log")
    b=$(grep -c '^Executing' "$out/launches_220.log")
    echo "launches per step: $(((b - a) / 200)) ($a and $b in all)" | tee "$out/launches.txt"
    # The same, step by step: the launches from one loss kernel to the next (how many steps had
    # each count), which a run's setup cannot skew.
    grep -n 'LossPartials' "$out/launches_220.log" | cut -d: -f1 |
        awk 'NR > 1 { print $1 - prev } { prev = $1 }' | sort -n | uniq -c |
        sed 's/^/steps with launches: /' | tee -a "$out/launches.txt"
    tail -n 3000 "$out/launches_220.log" | sed 's/_[0-9a-f]\{6,\}$//' | sort | uniq -c |
        sort -rn | tee -a "$out/launches.txt"
    # Kernel time by kernel over the last 10 steps' launches (units as cubecl prints them).
    tail -n $(((b - a) / 20)) "$out/kernel_times.log" | awk -F'|' '{
        t = $2; gsub(/ /, "", t); v = t + 0
        if (t ~ /ns$/) v /= 1000; else if (t ~ /µs$/) v += 0; else if (t ~ /ms$/) v *= 1000; else if (t ~ /s$/) v *= 1e6
        name = $3 (NF > 3 ? "|" $4 : ""); gsub(/_[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]+ *$/, "", name); gsub(/^ +| +$/, "", name)
        us[name] += v; n[name]++; total += v }
        END { for (k in us) printf "%10.0f us %6d  %s\n", us[k], n[k], k; printf "%10.0f us total\n", total }' |
        sort -rn | tee "$out/kernel_times.txt"
    gzip -f "$out"/launches_*.log "$out/kernel_times.log"
    exit 0
fi
if [ "${1:-}" = spirv ]; then
    # burn's side only (PyTorch's figures are the default run's, on the same GPU): the same
    # benchmarks, within 500 s.
    run spirv_train_small 130 bench train --config small --backends wgpu --repeats 200 \
        --rounds 1 --precision f32,f16 --peak-tflops $peak
    run spirv_predict_256 130 bench predict --size 256 --backends wgpu --precision f32,f16
    run spirv_train_nnunet 240 bench train --config nnunet --backends wgpu --repeats 10 \
        --rounds 1 --precision f32,f16 --peak-tflops $peak
    echo "==== summary (SPIR-V build)"
    grep -h "^bench:\|^note:\|^== .*exit\|^error" "$out"/spirv_*.log
    exit 0
fi
# At most 500 s of benchmarks (130 + 130 + 100 + 140), so the whole run, setup included, fits a
# 560 s device call.
run train_small 130 bench train --config small --backends wgpu,torch_cuda --repeats 200 --rounds 2 \
    --peak-tflops $peak
run predict_256 130 bench predict --size 256 --backends wgpu,torch_cuda --precision f32,f16
run train_small_f16 100 bench train --config small --backends wgpu,torch_cuda --precision f16 \
    --repeats 100 --rounds 1
run train_nnunet 140 bench train --config nnunet --backends wgpu,torch_cuda --repeats 10 \
    --rounds 1 --peak-tflops $peak
# The kernel caches, to carry to the next machine (.dev/gpu_caches.tgz) so its first steps do
# not compile and tune for minutes.
tar czf "$out/gpu_caches.tgz" target/environment -C "$HOME" .cache 2>/dev/null
echo "==== summary"
grep -h "^bench:\|^note:\|^== .*exit\|^error" "$out"/train_*.log "$out"/predict_256.log
