"""PyTorch reference for `mriloop bench predict`: whole-volume sliding-window prediction of a
size^3 case with the network of train_torch.py (the same multi-task residual U-Net), the same
windows (window^3, step window * (1 - overlap), the last window flush with the far edge), the
same Gaussian weighting (sigma = window / 8, floored at 1e-3) and the same outputs (arg-max
labels and the foreground probability), --window-batch windows per forward pass (1: one at a
time, as nnU-Net's predictor), random weights and data; --precision f16|bf16 runs the network
under autocast (as nnU-Net's GPU predictor does), the sums in f32.

Usage: python3 predict_torch.py --device cpu|cuda --size 256 --window 32 --overlap 0.5 --threads 2
       [--window-batch 16] [--precision f32|f16|bf16]
Prints one line: `torch_predict_s = V` (seconds for the whole volume, after warm-up passes).
"""
import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_torch import Net  # noqa: E402


def starts(n, window, step):
    if n <= window:
        return [0]
    s = list(range(0, n - window + 1, max(step, 1)))
    if s[-1] != n - window:
        s.append(n - window)
    return s


def gaussian(window):
    c = (window - 1) / 2
    sigma = max(window / 8, 0.5)
    i = torch.arange(window, dtype=torch.float32)
    return torch.exp(-(((i - c) / sigma) ** 2) / 2).clamp(min=1e-3)


def predict(net, x, window, overlap, labels, window_batch=1):
    n = x.shape[-1]
    step = int(window * (1 - min(max(overlap, 0.0), 0.9)))
    g = gaussian(window).to(x.device)
    weight = g[:, None, None] * g[None, :, None] * g[None, None, :]
    acc = torch.zeros(labels, n, n, n, device=x.device)
    wsum = torch.zeros(n, n, n, device=x.device)
    s = starts(n, window, step)
    origins = [(z, y, x0) for z in s for y in s for x0 in s]
    for first in range(0, len(origins), max(window_batch, 1)):
        chunk = origins[first:first + max(window_batch, 1)]
        parts = [x[:, :, z:z + window, y:y + window, x0:x0 + window] for z, y, x0 in chunk]
        probs = net(torch.cat(parts))[0].softmax(1)
        for p, (z, y, x0) in zip(probs, chunk):
            acc[:, z:z + window, y:y + window, x0:x0 + window] += p * weight
            wsum[z:z + window, y:y + window, x0:x0 + window] += weight
    mean = acc / wsum
    return mean.argmax(0).to(torch.uint8), 1 - mean[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--window-batch", type=int, default=1)
    ap.add_argument("--precision", default="f32", choices=["f32", "f16", "bf16"])
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(1)
    labels = 3
    net = Net(a.channels, labels, 2, base=a.base).to(dev).eval()
    x = torch.randn(1, a.channels, a.size, a.size, a.size, device=dev)
    half = {"f16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
    autocast = (torch.autocast(dev.type, dtype=half) if half is not None
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        first = x[:, :, : a.window, : a.window, : a.window]
        net(first)  # warm-up: one window, and a full pass of stacked ones
        net(torch.cat([first] * max(a.window_batch, 1)))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        mask, fg = predict(net, x, a.window, a.overlap, labels, a.window_batch)
        mask.cpu()
        fg.cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    print(f"torch_predict_s = {time.perf_counter() - t:.4f}")


if __name__ == "__main__":
    main()
