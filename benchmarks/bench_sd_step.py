"""Step time and peak memory of one Stable Diffusion unlearning step: fdu's frozen reference (the
original values of the trained K/V tensors, swapped in) against the common approach (a full frozen copy
of the UNet). Prints a table; each measurement runs in its own process so peak memory is its own.

    python benchmarks/bench_sd_step.py                 # the tiny pipeline on the CPU (any machine)
    python benchmarks/bench_sd_step.py --sd1           # SD 1.x UNet architecture, random weights, 512 px
                                                       # (on a GPU; the speed does not depend on the weights)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(arch: str, reference: str, steps: int, batch: int, device: str, dtype: str) -> dict:
    import copy
    import resource

    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from fdu.layers import is_cross_attention_kv
    from fdu.unlearn import AnchorBatch, Task, UnlearnConfig, unlearn

    torch.manual_seed(0)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if arch == "sd1":  # the Stable Diffusion 1.x UNet (860M parameters), 64x64 latents = 512 px
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        size, text_dim = 64, 768
    else:
        from fdu.sd.pipeline import build_tiny_pipeline

        unet = build_tiny_pipeline(sample_size=8).unet
        size, text_dim = 8, unet.config.cross_attention_dim
    unet = unet.to(device, dt)
    for n, p in unet.named_parameters():
        p.requires_grad_(is_cross_attention_kv(n))
    states = {c: torch.randn(1, 77, text_dim, device=device, dtype=dt) for c in ("target", "anchor")}
    latents = torch.randn(64, 4, size, size, device=device, dtype=dt)

    def forward(m, x_t, t, c):
        return m(x_t, t.to(device), encoder_hidden_states=states[c].expand(x_t.shape[0], -1, -1)).sample

    def sample_anchor_x0(n, g):
        return AnchorBatch(latents[torch.randint(64, (n,), generator=g)], "target", "anchor")

    task = Task(model=unet, forward=forward, sample_anchor_x0=sample_anchor_x0,
                scheduler=DDPMScheduler(num_train_timesteps=1000))
    if reference == "full-copy":
        task.reference = copy.deepcopy(unet).requires_grad_(False)
    cfg = UnlearnConfig(divergence="squared_hellinger", steps=2, batch_size=batch, lr=1e-5, progress=False)
    unlearn(task, cfg)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    cfg.steps = steps
    unlearn(task, cfg)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    check = {group: finite_check_seconds(params, device) for group, params in
             (("kv", task.trained_parameters()), ("unet", list(unet.parameters())))}
    return {"arch": arch, "reference": reference, "seconds_per_step": seconds, "peak_mib": peak,
            "peak_kind": "GPU allocated" if device == "cuda" else "process RSS", "device": device,
            "dtype": dtype, "batch": batch, "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "finite_check_seconds": check}


def finite_check_seconds(params, device: str, repeats: int = 50) -> float:
    """Mean time of the loop's check that parameters are finite after an update
    (``fdu.checkpoints.all_finite``: one max-abs per tensor, one synchronisation)."""
    import torch

    from fdu.checkpoints import all_finite

    all_finite(params)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        assert all_finite(params)
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd1", action="store_true", help="the SD 1.x UNet at 512 px (needs a GPU to be quick)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = "sd1" if args.sd1 else "tiny"
    steps = args.steps or (10 if arch == "sd1" else 20)
    batch = args.batch or (2 if arch == "sd1" else 4)
    dtype = args.dtype or ("fp16" if device == "cuda" and arch == "sd1" else "fp32")
    if args.one:
        print(json.dumps(measure(arch, args.one, steps, batch, device, dtype)))
        return
    rows = []
    for reference in ("swapped", "full-copy"):
        cmd = [sys.executable, __file__, "--one", reference, "--steps", str(steps), "--batch", str(batch),
               "--dtype", dtype] + (["--sd1"] if args.sd1 else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    r = rows[0]
    print(f"{r['arch']} UNet ({r['unet_parameters']:,} parameters), training attn2 K/V, batch {batch}, "
          f"{dtype}, {device}, {steps} steps (mean over steps, after a 2-step warm-up)")
    print("| frozen reference | s / step | peak memory (MiB, " + r["peak_kind"] + ") |")
    print("|---|---|---|")
    for r in rows:
        name = "fdu: swapped K/V originals" if r["reference"] == "swapped" else "full frozen UNet copy"
        print(f"| {name} | {r['seconds_per_step']:.4f} | {r['peak_mib']:.0f} |")
    r = rows[0]
    kv, unet = r["finite_check_seconds"]["kv"], r["finite_check_seconds"]["unet"]
    print(f"\nthe finiteness check after each update (included in s / step above): {kv * 1e3:.3f} ms for the "
          f"trained K/V = {100 * kv / r['seconds_per_step']:.2f} % of a step; for every UNet parameter "
          f"(--params unet) {unet * 1e3:.3f} ms = {100 * unet / r['seconds_per_step']:.2f} % of this K/V step")


if __name__ == "__main__":
    main()
