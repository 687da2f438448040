"""The command line: ``python -m fdu unlearn | evaluate | mini-sd | tiny-pipeline | divergences``.

Examples::

    python -m fdu mini-sd runs/mini                             # the trained mini Stable Diffusion + CLIP
    python -m fdu unlearn --model runs/mini/pipeline --target "van gogh" --anchor painting \\
        --divergence squared_hellinger --steps 200 --lr 1e-3 --output runs/mini-vangogh
    python -m fdu evaluate --model runs/mini/pipeline --unlearned runs/mini-vangogh --concept "van gogh" \\
        --clip-model runs/mini/clip --eval-prompts runs/mini/eval

    python -m fdu tiny-pipeline runs/tiny                       # a CPU-sized pipeline, random weights
    python -m fdu unlearn --model runs/tiny --target "van gogh" --anchor painting \\
        --concept-type style --divergence hellinger --steps 4 --output runs/vangogh
    python -m fdu unlearn --model CompVis/stable-diffusion-v1-4 --target "van gogh" --anchor painting \\
        --divergence hellinger --steps 500 --output runs/vangogh_H        # on a GPU
    accelerate launch -m fdu unlearn ...                         # several GPUs (or --cpu processes)
    python -m fdu evaluate --model CompVis/stable-diffusion-v1-4 --unlearned runs/vangogh_H \\
        --concept "van gogh" --output runs/vangogh_H/eval.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _unlearn_parser(sub):
    p = sub.add_parser(
        "unlearn", help="erase a concept from a Stable Diffusion pipeline",
        description="Erase a concept from a Stable Diffusion 1.x/2.x pipeline with any f-divergence: the "
                    "trained model's output for the target prompt is pulled towards the original model's "
                    "output for the anchor prompt, on images the original model draws for the anchor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to erase")
    g.add_argument("--model", required=True, help="hub id or local pipeline folder (offline: a folder or the hub cache)")
    g.add_argument("--target", required=True, help='the concept to erase, e.g. "van gogh"')
    g.add_argument("--anchor", required=True,
                   help='what to map it to: the superclass ("painting"), a near concept ("salvador dali"), or "" (the empty prompt)')
    g.add_argument("--concept-type", default="style", choices=["style", "object", "nudity"],
                   help="how target prompts are built from captions (paper.md §4.2)")
    g.add_argument("--superclass", default=None,
                   help="class word of the captions (default: painting for style, people for nudity, the anchor for object)")
    g.add_argument("--captions", default=None,
                   help="a text file of anchor captions, one per line (default: the model folder's own "
                        "captions/<superclass>.txt if it has one, as the mini model does, else the shipped captions)")
    g.add_argument("--output", required=True, help="folder for checkpoints, unlearned weights, pipeline and summary")
    g = p.add_argument_group("the loss")
    g.add_argument("--divergence", default="kl", help="kl (= MSE), squared_hellinger, pearson_chi2, jensen_shannon, "
                   "alpha (with --alpha), reverse_kl, total_variation, ... (`python -m fdu divergences`)")
    g.add_argument("--alpha", type=float, default=None, help="for --divergence alpha")
    g.add_argument("--variational", action="store_true", help="min-max form with a patch critic instead of the closed form")
    g.add_argument("--sigma", type=float, default=1.0, help="temperature of the closed forms")
    g.add_argument("--normalization", default="mean", choices=["mean", "sum"],
                   help="mean: the official per-position mean; sum: the exact squared distance")
    g.add_argument("--mask-border", type=int, default=1,
                   help="latent pixels at each edge left out of the closed-form loss (official: 1; 0: none)")
    g.add_argument("--critic-lr", type=float, default=1e-4)
    g.add_argument("--critic-warmup", type=int, default=0, help="steps where only the critic trains")
    g = p.add_argument_group("training")
    g.add_argument("--params", default="kv", choices=["kv", "attention", "unet", "embedding"],
                   help="what to train: cross-attention K/V (official), all attention, the full UNet, the token embedding")
    g.add_argument("--steps", type=int, default=500, help="optimiser steps")
    g.add_argument("--batch-size", type=int, default=2, help="per process and micro-batch")
    g.add_argument("--gradient-accumulation-steps", type=int, default=2)
    g.add_argument("--lr", type=float, default=2.8e-4, help="Adam learning rate (official: 2.8e-4 on one GPU)")
    g.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("anchor images")
    g.add_argument("--max-anchor-images", type=int, default=1000,
                   help="at most this many (a run generates no more than steps x batch x accumulation x processes)")
    g.add_argument("--anchor-steps", type=int, default=25, help="sampler steps per anchor image")
    g.add_argument("--anchor-guidance", type=float, default=6.0)
    g.add_argument("--anchor-batch-size", type=int, default=4, help="anchor images drawn per pipeline call")
    g.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    g.add_argument("--no-hflip", action="store_true", help="do not flip half the anchor latents")
    g.add_argument("--cache-dir", default=None, help="where anchor images are cached (default: OUTPUT/anchors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="CLIP score, CLIP accuracy and KID of an unlearned model against the base",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the base (original) pipeline: hub id or folder")
    p.add_argument("--unlearned", required=True, help="the output folder of `unlearn` (or its pipeline folder)")
    p.add_argument("--concept", required=True, help='the erased concept, e.g. "van gogh"')
    p.add_argument("--retained", nargs="*", default=None, help="retained concepts (default: the shipped hard negatives)")
    p.add_argument("--concept-type", default=None, choices=["style", "object", "nudity"],
                   help="default: from the concepts.json of --eval-prompts, else style")
    p.add_argument("--superclass", default=None,
                   help="the anchor text of CLIP accuracy (default: from concepts.json, else painting)")
    p.add_argument("--eval-prompts", "--prompts-dir", dest="eval_prompts", default=None,
                   help="a folder of <concept>.txt prompt files and a concepts.json (retained concepts, "
                        "superclass, type), e.g. DIR/eval of `mini-sd DIR` (default: the shipped ones)")
    p.add_argument("--clip-model", default="openai/clip-vit-base-patch32")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON report (a .md table beside it); default: UNLEARNED/eval.json")
    p.add_argument("--quiet", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fdu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _unlearn_parser(sub)
    _evaluate_parser(sub)
    t = sub.add_parser("tiny-pipeline", help="write a tiny Stable Diffusion pipeline (random weights) and a tiny CLIP")
    t.add_argument("folder")
    t.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    t.add_argument("--sample-size", type=int, default=8, help="latent size (images are 8x larger)")
    t.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("mini-sd", help="write the trained mini Stable Diffusion, its CLIP and prompt files to a folder",
                       description="Write DIR/pipeline (a StableDiffusionPipeline trained on fdu's procedural "
                                   "world of shapes, colours and painters' styles), DIR/clip (its CLIP) and "
                                   "DIR/eval (evaluation prompts + concepts.json), from the weights shipped "
                                   "with fdu; --train rebuilds them from scratch instead.")
    m.add_argument("folder")
    m.add_argument("--train", action="store_true",
                   help="retrain everything from scratch (about 35-45 minutes on a 2-core CPU; resumable: "
                        "rerun the same command after an interruption)")
    m.add_argument("--ship", action="store_true",
                   help="with --train: then copy the result into the package (fdu/sd/data/mini, fp16) with a "
                        "manifest of the recipe, the build time and the measured quality")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("divergences", help="list the divergences")
    return parser


def _unlearn(args):
    from .sd.train import RunConfig, run

    cfg = RunConfig(model=args.model, target=args.target, anchor=args.anchor, output=args.output,
                    concept_type=args.concept_type, superclass=args.superclass, captions=args.captions,
                    divergence=args.divergence, alpha=args.alpha, variational=args.variational,
                    group=args.params, steps=args.steps, batch_size=args.batch_size,
                    gradient_accumulation_steps=args.gradient_accumulation_steps, lr=args.lr,
                    critic_lr=args.critic_lr, critic_warmup=args.critic_warmup, sigma=args.sigma,
                    normalization=args.normalization, max_anchor_images=args.max_anchor_images,
                    anchor_steps=args.anchor_steps, anchor_guidance=args.anchor_guidance,
                    anchor_batch_size=args.anchor_batch_size,
                    resolution=args.resolution, hflip=not args.no_hflip, mask_border=args.mask_border, mixed_precision=args.mixed_precision,
                    checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                    cache_dir=args.cache_dir, progress=not args.quiet)
    summary = run(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        out = Path(args.output)
        print(f"\nerased {args.target!r} → anchor {args.anchor!r} with {args.divergence}"
              f"{' (variational)' if args.variational else ''}: {args.steps} steps on {summary['processes']} "
              f"process(es), {summary['trained_parameters']:,} trained parameters ({args.params}), "
              f"{summary['anchor_images']} anchor images; final loss {summary['final_loss']:.4g}; "
              f"{summary['seconds']['train']:.1f} s training")
        print(f"  weights:  {out / 'unlearned.safetensors'}")
        print(f"  pipeline: {out / 'pipeline'}  (StableDiffusionPipeline.from_pretrained loads it)")
        print(f"  resume:   add --resume; evaluate: python -m fdu evaluate --model {args.model} "
              f"--unlearned {out} --concept {args.target!r}")


def _evaluate(args):
    from .sd.evaluate import evaluate, save_report, table_markdown
    from .sd.pipeline import load_pipeline

    folder = Path(args.unlearned)
    pipe_dir = folder / "pipeline" if (folder / "pipeline" / "model_index.json").is_file() else folder
    base, unlearned = load_pipeline(args.model), load_pipeline(str(pipe_dir))
    prompts, info, retained = None, {}, args.retained
    if args.eval_prompts:
        from .sd.prompts import eval_concepts, eval_prompts

        prompt_dir = Path(args.eval_prompts)
        if not prompt_dir.is_dir():
            raise FileNotFoundError(f"--eval-prompts {prompt_dir} is not a prompt_dir of prompt files")
        if (prompt_dir / "concepts.json").is_file():
            concepts = eval_concepts(prompt_dir)
            if args.concept not in concepts and retained is None:
                raise ValueError(f"{args.concept!r} is not in {prompt_dir / 'concepts.json'}; its concepts: "
                                 f"{', '.join(concepts)} (or pass --retained)")
            info = concepts.get(args.concept, {})
        retained = retained if retained is not None else info.get("retained", [])
        prompts = {c: eval_prompts(c, prompt_dir) for c in [args.concept, *retained]}
    concept_type = args.concept_type or info.get("concept_type", "style")
    superclass = args.superclass or info.get("superclass", "painting")
    report = evaluate(base, unlearned, args.concept, clip_model=args.clip_model, retained=retained,
                      prompts=prompts, concept_type=concept_type, superclass=superclass,
                      steps=args.steps, guidance=args.guidance, seed=args.seed, size=args.size,
                      progress=not args.quiet)
    out = save_report(report, args.output or (folder / "eval.json"))
    print(table_markdown(report))
    print(f"\nreport: {out} (and {out.with_suffix('.md')})")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .sd.pipeline import ModelNotAvailableError

    try:
        if args.command == "unlearn":
            _unlearn(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "tiny-pipeline":
            from .sd.pipeline import build_tiny_clip, build_tiny_pipeline

            build_tiny_pipeline(args.folder, seed=args.seed, prediction_type=args.prediction_type,
                                sample_size=args.sample_size)
            build_tiny_clip(Path(args.folder) / "clip", seed=args.seed)
            print(f"wrote a tiny pipeline to {args.folder} (random weights: its images are noise) and a "
                  f"tiny CLIP to {Path(args.folder) / 'clip'}")
        elif args.command == "mini-sd":
            from .sd import mini

            if args.ship and not args.train:
                raise ValueError("--ship copies a fresh build into the package: use it with --train")
            if args.train:
                folder = mini.train(args.folder, progress=not args.quiet)
                if args.ship:
                    mini.ship(folder, extra=json.loads((folder / "manifest.json").read_text()))
                    print("shipped to", mini.SHIPPED, "; measured:", json.dumps(mini.measure_shipped()))
            else:
                folder = mini.write(args.folder)
            print(f"wrote the mini Stable Diffusion to {folder / 'pipeline'}, its CLIP to {folder / 'clip'} and "
                  f"evaluation prompts to {folder / 'eval'}")
        elif args.command == "divergences":
            from .divergences import DIVERGENCES

            for name, d in DIVERGENCES.items():
                print(f"{name:20s} {getattr(d, 'description', '')}")
    except (ValueError, FileNotFoundError, FileExistsError, ModelNotAvailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
