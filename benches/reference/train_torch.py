"""PyTorch reference for `mriloop bench train`: the same multi-task residual U-Net (3D, residual
blocks conv-instance norm-ReLU x2 with a 1x1x1 skip where channels change, strided-conv down,
transposed-conv up, skip concatenation, classification head on the bottleneck), the same loss
(soft Dice over foreground labels + voxel cross-entropy + 0.5 x class cross-entropy) and Adam,
timed for the same number of steps on random data. With --precision f16 or bf16: automatic mixed
precision (torch.autocast around forward and loss; in f16 the GradScaler), as mriloop's
mixed-precision steps (f32 weights and optimiser). Each step's loss is read as mriloop's `fit`
reads it, once the next step is queued (on CUDA a non-blocking copy to pinned memory and an
event, waited for one step later), so that on a GPU the host queues a step while the device
runs the one before; --read-now reads it at once (`loss.item()` each step, as nnU-Net's loop).

Usage: python3 train_torch.py --device cpu|cuda --patch 32 --batch 2 --base 8 --depth 3 --steps 5
       --threads 2 [--precision f32|f16|bf16] [--read-now]
Prints one line: `torch_train_steps_per_s = V`.
"""
import argparse
import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.n1 = nn.InstanceNorm3d(cout, affine=True)
        self.c2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.n2 = nn.InstanceNorm3d(cout, affine=True)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = F.relu(self.n1(self.c1(x)))
        h = self.n2(self.c2(h))
        return F.relu(h + (self.skip(x) if self.skip is not None else x))


class Net(nn.Module):
    def __init__(self, cin, labels, classes, base=8, depth=3):
        super().__init__()
        ch = [base << l for l in range(depth + 1)]
        self.stem = Res(cin, ch[0])
        self.downs = nn.ModuleList(nn.Conv3d(ch[l - 1], ch[l], 3, stride=2, padding=1) for l in range(1, depth + 1))
        self.encs = nn.ModuleList(Res(ch[l], ch[l]) for l in range(1, depth + 1))
        self.ups = nn.ModuleList(nn.ConvTranspose3d(ch[l], ch[l - 1], 2, stride=2) for l in range(depth, 0, -1))
        self.decs = nn.ModuleList(Res(2 * ch[l - 1], ch[l - 1]) for l in range(depth, 0, -1))
        self.seg = nn.Conv3d(ch[0], labels, 1)
        self.drop = nn.Dropout(0.2)
        self.cls = nn.Linear(ch[depth], classes)

    def forward(self, x):
        h = self.stem(x)
        skips = []
        for down, enc in zip(self.downs, self.encs):
            skips.append(h)
            h = enc(F.relu(down(h)))
        bottleneck = h
        for up, dec in zip(self.ups, self.decs):
            h = dec(torch.cat([up(h), skips.pop()], 1))
        pooled = F.adaptive_avg_pool3d(bottleneck, 1).flatten(1)
        return self.seg(h), self.cls(self.drop(pooled))


def loss_fn(seg, cls, mask, y):
    k = seg.shape[1]
    probs = seg.softmax(1)
    onehot = F.one_hot(mask, k).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return (1 - dice[1:].mean()) + F.cross_entropy(seg, mask) + 0.5 * F.cross_entropy(cls, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--precision", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--read-now", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(1)
    net = Net(a.channels, 3, 2, base=a.base, depth=a.depth).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    p = a.patch
    x = torch.randn(a.batch, a.channels, p, p, p, device=dev)
    mask = torch.randint(0, 3, (a.batch, p, p, p), device=dev)
    y = torch.randint(0, 2, (a.batch,), device=dev)

    half = {"f16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
    scaler = torch.amp.GradScaler(dev.type) if a.precision == "f16" else None

    def autocast():
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=half)

    def step():
        opt.zero_grad()
        with autocast():
            seg, cls = net(x)
            loss = loss_fn(seg.float(), cls.float(), mask, y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return read_later(loss)

    def read_later(loss):
        """A function that returns the step's loss, its copy to the host queued now."""
        if dev.type != "cuda" or a.read_now:
            value = loss.item()
            return lambda: value
        host = torch.empty((), dtype=loss.dtype, pin_memory=True)
        host.copy_(loss.detach(), non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return lambda: (copied.synchronize(), host.item())[1]

    def steps(count, pending):
        """`count` steps, each waiting for the loss of the step before; the last one's read."""
        for _ in range(count):
            queued = step()
            if pending is not None:
                pending()
            pending = queued
        return pending

    # Warm-up as mriloop's bench: 3 steps (Adam's first differs), on a GPU at least 3 s.
    t = time.perf_counter()
    done = 0
    pending = None
    while done < 3 or (dev.type == "cuda" and time.perf_counter() - t < 3.0):
        pending = steps(1, pending)
        done += 1
    pending()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    steps(a.steps, None)()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"torch_train_steps_per_s = {a.steps / (time.perf_counter() - t):.4f}")


if __name__ == "__main__":
    main()
