"""Cost of the closed-form losses next to plain MSE (forward + backward). Prints numbers.

    .venv/bin/python benchmarks/bench_losses.py [--batch 8] [--sizes 64 128] [--repeats 200]

The setting of issue 2: a batch of 8 latents of shape 4 x 64 x 64 (Stable Diffusion 1.x at 512 px),
and 4 x 128 x 128 (SDXL at 1024 px), float32, on the CPU. The extra cost over MSE is a fixed
per-call amount (input checks, and for quadrature a 128-node rule per *sample*), not per element.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fdu.losses import closed_form_loss


def time_it(fn, repeats):
    for _ in range(10):  # warm-up
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    for size in args.sizes:
        run_size(args.batch, size, args.repeats)


def run_size(batch, size, repeats):
    torch.manual_seed(0)
    shape = (batch, 4, size, size)
    target = torch.randn(shape)
    pred = (target + 0.1 * torch.randn(shape)).requires_grad_(True)

    def step(loss_fn):
        def run():
            pred.grad = None
            loss_fn().backward()
        return run

    cases = {
        "plain MSE (F.mse_loss)": lambda: F.mse_loss(pred, target),
        "kl (fdu, = MSE)": lambda: closed_form_loss(pred, target, "kl"),
        "squared_hellinger": lambda: closed_form_loss(pred, target, "squared_hellinger"),
        "pearson_chi2": lambda: closed_form_loss(pred, target, "pearson_chi2"),
        "jensen_shannon (quadrature)": lambda: closed_form_loss(pred, target, "jensen_shannon"),
        "alpha=0.3": lambda: closed_form_loss(pred, target, "alpha", alpha=0.3),
    }
    print(f"forward+backward on {shape} float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {repeats}")
    base = None
    for name, fn in cases.items():
        t = time_it(step(fn), repeats)
        base = base or t
        print(f"  {name:30s} {t * 1e3:8.3f} ms   {t / base:5.2f} x MSE   (+{(t - base) * 1e3:.3f} ms)")


if __name__ == "__main__":
    main()
