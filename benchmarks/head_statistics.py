"""Time the head statistics of a convolutional head: shift correlations vs gathered taps.

Case (default): the SPEC's autoencoder head ``ConvTranspose2d(16 -> 1, 4, stride 2, padding 1)``
on features ``(32, 16, 14, 14)`` and targets ``(32, 1, 28, 28)``: ``p = 257``, 25088 rows
(``--width 64``: p = 1025; ``--conv``: a ``Conv2d(width -> 4, 3, padding 1)`` head instead).
Compared, in one run with interleaved repetitions so that all see the same machine load:

- ``statistics`` with ``method="correlation"`` (one correlation of the feature maps per tap
  shift, :mod:`slimtrain.linalg.correlation`), float64 and float32 accumulation;
- ``statistics`` with ``method="gather"`` (the taps of each phase gathered, one product per
  tap pair: the previous default);
- the explicit path: ``design`` (the zero-inserted ``unfold`` rows) then ``gram_statistics``;
- one forward and backward of the native head (gradient to the features), which is what a
  gradient step on this layer costs.

Usage: ``python benchmarks/head_statistics.py [--repeats N] [--threads T] [--batch N]
[--width C] [--stride S] [--conv] [--device cpu|cuda]``; prints medians in milliseconds and
the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from slimtrain.heads import head_adapter
from slimtrain.linalg.stats import gram_statistics


def _median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="input channels of the head")
    parser.add_argument("--stride", type=int, default=2, help="stride (kernel = 2 * stride)")
    parser.add_argument("--conv", action="store_true",
                        help="a Conv2d(width -> 4, 3, padding 1) head instead")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    s = args.stride
    head: nn.Module
    if args.conv:
        head = nn.Conv2d(args.width, 4, 3, padding=1)
        label = f"Conv2d({args.width} -> 4, 3, padding 1)"
    else:
        head = nn.ConvTranspose2d(args.width, 1, 2 * s, stride=s, padding=s // 2)
        label = f"ConvTranspose2d({args.width} -> 1, {2 * s}, stride {s}, padding {s // 2})"
    head = head.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.width, 14, 14, generator=gen).to(device)
    adapter = head_adapter(head)
    y = torch.randn(adapter.output_shape(head, x.shape), generator=gen).to(device)
    x_grad = x.clone().requires_grad_(True)

    def forward_backward() -> None:
        out = head(x_grad)
        (0.5 * (out - y).square().sum()).backward()

    fns: dict[str, Callable[[], object]] = {
        "statistics float64": lambda: adapter.statistics(head, x, y),
        "statistics float32": lambda: adapter.statistics(head, x, y, dtype=torch.float32),
        "gather float64": lambda: adapter.statistics(head, x, y, method="gather"),
        "gather float32": lambda: adapter.statistics(head, x, y, dtype=torch.float32,
                                                     method="gather"),
        "design + Gram float64": lambda: gram_statistics(
            *adapter.design(head, x, y), n_samples=args.batch
        ),
        "design + Gram float32": lambda: gram_statistics(
            *adapter.design(head, x, y), n_samples=args.batch, dtype=torch.float32
        ),
        "head forward+backward": forward_backward,
    }
    # the two paths agree (a benchmark of a wrong result is worthless)
    ref = gram_statistics(*adapter.design(head, x, y), n_samples=args.batch)
    for method in ("correlation", "gather"):
        fast = adapter.statistics(head, x, y, method=method)
        torch.testing.assert_close(fast.ztz, ref.ztz, rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(fast.ztc, ref.ztc, rtol=1e-10, atol=1e-8)

    ms = _median_ms(fns, args.repeats, device)
    p, rows = adapter.num_features(head), y.numel() // y.shape[1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, load "
        f"average {load:.2f}; {label} on {tuple(x.shape)}: p = {p}, rows = {rows}; median of "
        f"{args.repeats}"
    )
    base = ms["statistics float64"]
    for name, value in ms.items():
        print(f"  {name:<24} {value:9.2f} ms   x{value / base:6.2f} of statistics float64")


if __name__ == "__main__":
    main()
