#!/bin/bash
# Issue 22's GPU figures in one prepared run on a one-GPU machine whose python3 has PyTorch
# with CUDA (no Rust toolchain there): burn's wgpu backend beside PyTorch CUDA on the same GPU,
# for `bench train` (small and nnunet) and `bench predict --size 256`. The CPU figures are left
# out (they take minutes on a server's CPU and are measured on the 2-core machine).
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
xz -dc .dev/mriloop.xz >/tmp/mriloop && chmod +x /tmp/mriloop
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
run train_small 150 bench train --config small --backends wgpu,torch_cuda --repeats 200 --rounds 2 \
    --peak-tflops $peak
run predict_256 100 bench predict --size 256 --backends wgpu,torch_cuda
run train_small_f16 100 bench train --config small --backends wgpu,torch_cuda --precision f16 \
    --repeats 100 --rounds 1
run train_nnunet 150 bench train --config nnunet --backends wgpu,torch_cuda --repeats 10 \
    --rounds 1 --peak-tflops $peak
# The kernel caches, to carry to the next machine (.dev/gpu_caches.tgz) so its first steps do
# not compile and tune for minutes.
tar czf "$out/gpu_caches.tgz" target/environment -C "$HOME" .cache 2>/dev/null
echo "==== summary"
grep -h "^bench:\|^note:\|^== .*exit\|^error" "$out"/train_*.log "$out"/predict_256.log
