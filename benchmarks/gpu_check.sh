#!/usr/bin/env bash
# The GPU check: what this project cannot measure on its 2-core CPU machine, in one run of at most
# ~8 minutes on one GPU. Prints one table:
#   1. the unlearning step of the SD 1.x UNet architecture (860M parameters, random weights) at
#      512 px in fp16: fdu's frozen reference (the original K/V values swapped in) against a full
#      frozen copy of the UNet -- seconds per step and peak GPU memory;
#   2. 20 steps of `python -m fdu unlearn` on a random-weight SD 1.x-architecture pipeline (UNet,
#      VAE and a CLIP-L-sized text encoder built from configs: nothing is downloaded), fp16, through
#      `accelerate launch`, with anchor generation at 512 px.
# Random weights: the speed and memory do not depend on them; nothing here says anything is erased.
#
#   bash benchmarks/gpu_check.sh            # after `make install` (uses .venv if present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this check needs one')"
echo "== step benchmark (SD 1.x UNet, 512 px, fp16)" >&2
for ref in swapped full-copy; do
  "$PY" benchmarks/bench_sd_step.py --sd1 --dtype fp16 --steps 10 --batch 2 --one "$ref" | tail -n 1 > "$WORK/step-$ref.json"
done
echo "== a random-weight SD 1.x pipeline" >&2
"$PY" -c "from fdu.sd.pipeline import build_sd1_pipeline; build_sd1_pipeline('$WORK/sd1')"
echo "== python -m fdu unlearn, 20 steps, fp16, accelerate launch" >&2
start=$(date +%s.%N)
"$PY" -m accelerate.commands.launch --num_processes 1 --mixed_precision fp16 -m fdu unlearn \
  --model "$WORK/sd1" --target "van gogh" --anchor painting --divergence squared_hellinger \
  --steps 20 --batch-size 2 --gradient-accumulation-steps 1 --mixed-precision fp16 \
  --max-anchor-images 8 --anchor-steps 10 --anchor-batch-size 4 --resolution 512 \
  --checkpoint-every 10 --output "$WORK/run" --quiet > "$WORK/cli.log" 2>&1 || { cat "$WORK/cli.log"; exit 1; }
end=$(date +%s.%N)
"$PY" - "$WORK" "$start" "$end" <<'PYEOF'
import json, sys
from pathlib import Path
work, start, end = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
import torch
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
print("| what | s / step | peak GPU memory (MiB) | wall (s) |")
print("|---|---|---|---|")
for ref, name in [("swapped", "step, fdu reference (swapped K/V), batch 2"), ("full-copy", "step, full frozen UNet copy, batch 2")]:
    r = json.loads((work / f"step-{ref}.json").read_text())
    print(f"| {name} | {r['seconds_per_step']:.4f} | {r['peak_mib']:.0f} | |")
s = json.loads((work / "run" / "summary.json").read_text())
steps = s["config"]["steps"]
print(f"| `python -m fdu unlearn`, {steps} steps, fp16, accelerate (batch 2) | {s['seconds']['train'] / steps:.4f} | "
      f"{s.get('peak_gpu_mib', float('nan')):.0f} | {end - start:.0f} (setup {s['seconds']['setup']:.0f}) |")
PYEOF
