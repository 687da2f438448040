"""The command line: ``python -m fdu unlearn | evaluate | mini-sd | mini-flow | tiny-pipeline | divergences``.

Examples::

    python -m fdu mini-sd runs/mini                             # the trained mini Stable Diffusion + CLIP
    python -m fdu unlearn --model runs/mini/pipeline --target "van gogh" --anchor painting \\
        --divergence squared_hellinger --steps 200 --lr 1e-3 --output runs/mini-vangogh
    python -m fdu evaluate --model runs/mini/pipeline --unlearned runs/mini-vangogh --concept "van gogh" \\
        --clip-model runs/mini/clip --eval-prompts runs/mini/eval

    python -m fdu mini-flow runs/mini-flow                      # the trained mini flow-matching model (SD3)
    python -m fdu tiny-pipeline runs/tiny                       # a CPU-sized pipeline, random weights
    python -m fdu tiny-pipeline runs/tiny-flux --family flux    # ... of SDXL, SD3 or FLUX
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

from .sd.families import FAMILIES


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, (), argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _unlearn_parser(sub):
    from .options import add_arguments
    from .sd.train import ANCHOR_IMAGES, ERASE, RunConfig

    p = sub.add_parser(
        "unlearn", help="erase a concept from a Stable Diffusion pipeline",
        description="Erase a concept from a text-to-image pipeline (SD 1.x/2.x, SDXL, SD3, FLUX) with any "
                    "f-divergence: the "
                    "trained model's output for the target prompt is pulled towards the original model's "
                    "output for the anchor prompt, on images the original model draws for the anchor. "
                    "Every option is a field of fdu.sd.train.RunConfig (the loop's of fdu.unlearn.UnlearnConfig).",
        formatter_class=_Formatter)
    add_arguments(p, RunConfig, group_order=(ERASE, "the loss", "training", ANCHOR_IMAGES))
    return p


def _evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="CLIP score, CLIP accuracy and KID of an unlearned model against the base",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the base (original) pipeline: hub id or folder")
    p.add_argument("--unlearned", required=True, help="the output folder of `unlearn` (or its pipeline folder)")
    p.add_argument("--concept", required=True, help='the erased concept, e.g. "van gogh"')
    p.add_argument("--retained", nargs="*", default=None,
                   help="retained concepts (default: the shipped hard negatives)")
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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (they are for bugs; a user error is one line)")
    sub = parser.add_subparsers(dest="command", required=True)
    _unlearn_parser(sub)
    _evaluate_parser(sub)
    t = sub.add_parser("tiny-pipeline", help="write a tiny pipeline of a model family (random weights) and a tiny CLIP")
    t.add_argument("folder")
    t.add_argument("--family", default="sd", choices=list(FAMILIES),
                   help="sd: StableDiffusionPipeline (SD 1.x/2.x); sdxl: StableDiffusionXLPipeline; sd3: "
                        "StableDiffusion3Pipeline (MMDiT, flow matching, two CLIP + a T5); flux: FluxPipeline")
    t.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"],
                   help="sd only (SD3 and FLUX predict a flow velocity)")
    t.add_argument("--sample-size", type=int, default=None,
                   help="latent size (sd: images 8x larger, default 8; the other families: 2x, default 16)")
    t.add_argument("--seed", type=int, default=0)
    for name, what, description, train_help, shipped in (
            ("mini-sd", "the trained mini Stable Diffusion",
             "Write DIR/pipeline (a StableDiffusionPipeline trained on fdu's procedural world of shapes, colours and "
             "painters' styles), DIR/clip (its CLIP) and DIR/eval (evaluation prompts + concepts.json), from the "
             "weights shipped with fdu; --train rebuilds them from scratch instead.",
             "retrain everything from scratch (about 35-45 minutes on a 2-core CPU", "mini"),
            ("mini-flow", "the trained mini flow-matching model (SD3 format)",
             "Write DIR/pipeline (a StableDiffusion3Pipeline, flow matching, trained on fdu's procedural world), "
             "DIR/clip (the mini CLIP) and DIR/eval, from the weights shipped with fdu; --train rebuilds the "
             "transformer from scratch instead.",
             "retrain the transformer from scratch (about 35 minutes on one CPU core", "mini_flow")):
        m = sub.add_parser(name, help=f"write {what}, its CLIP and prompt files to a folder", description=description)
        m.add_argument("folder")
        m.add_argument("--train", action="store_true",
                       help=train_help + "; resumable: rerun the same command after an interruption)")
        m.add_argument("--ship", action="store_true",
                       help=f"with --train: then copy the result into the package (fdu/sd/data/{shipped}, fp16) with "
                            "a manifest of the recipe, the build time and the measured quality")
        m.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("divergences", help="list the divergences")
    return parser


def _unlearn(args):
    from .options import from_args
    from .sd.train import RunConfig, run

    cfg = from_args(RunConfig, args)
    summary = run(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        out = Path(args.output)
        concepts = [cfg.target] if isinstance(cfg.target, str) else list(cfg.target)
        named = " + ".join(repr(c) for c in concepts) + ("" if len(concepts) == 1 else
                                                         " (jointly)" if cfg.joint else " (one after another)")
        if cfg.method == "uce":
            print(f"\nerased {named} → anchor {cfg.anchor!r} with UCE's closed-form edit (λ {cfg.uce_lambda:g}, "
                  f"{len(cfg.preserve)} preserved prompt(s)): {summary['trained_parameters']:,} cross-attention "
                  f"K/V parameters in {summary['seconds']['train']:.1f} s")
        else:
            method = {"ca": "", "esd": f", ESD (η {cfg.guidance:g})"}[cfg.method]
            print(f"\nerased {named} → anchor {cfg.anchor!r} with {cfg.divergence}{method}"
                  f"{' (variational)' if cfg.variational else ''}: {cfg.steps} steps on {summary['processes']} "
                  f"process(es), {summary['trained_parameters']:,} trained parameters ({cfg.group}), "
                  f"{summary['anchor_images']} anchor images; final loss {summary['final_loss']:.4g}; "
                  f"{summary['seconds']['train']:.1f} s training")
        print(f"  weights:  {out / 'unlearned.safetensors'}")
        cls = json.loads((out / "pipeline" / "model_index.json").read_text()).get("_class_name", "the pipeline's class")
        print(f"  pipeline: {out / 'pipeline'}  ({cls}.from_pretrained loads it)")
        print(f"  resume:   add --resume; evaluate: python -m fdu evaluate --model {args.model} "
              f"--unlearned {out} --concept {concepts[0]!r}")


def _evaluate(args):
    from .paths import writable_folder
    from .sd.evaluate import check_evaluation, evaluate, save_report, table_markdown
    from .sd.pipeline import load_pipeline

    check_evaluation(steps=args.steps, guidance=args.guidance, size=args.size)
    folder = Path(args.unlearned)
    report_path = Path(args.output) if args.output else folder / "eval.json"
    if report_path.is_dir():
        raise ValueError(f"--output {report_path} is a folder: name the JSON report, e.g. {report_path / 'eval.json'}")
    writable_folder(report_path.parent, "the folder of the report")  # before any image is drawn
    pipe_dir = folder / "pipeline" if (folder / "pipeline" / "model_index.json").is_file() else folder
    base = load_pipeline(args.model, progress=not args.quiet)
    unlearned = load_pipeline(str(pipe_dir), progress=not args.quiet)
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
    out = save_report(report, report_path)
    print(table_markdown(report))
    print(f"\nreport: {out} (and {out.with_suffix('.md')})")


def main(argv=None) -> int:
    """Run one command; a user error (bad input, a missing or damaged file, a run that diverged)
    prints one line and returns 2, an interruption returns 130; anything else is a bug and raises."""
    args = build_parser().parse_args(argv)
    import torch

    from .errors import NonFiniteError

    try:
        if args.command == "unlearn":
            _unlearn(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "tiny-pipeline":
            from .sd.pipeline import build_tiny_clip, build_tiny_pipeline
            from .sd.tiny import build_tiny_family_pipeline

            if args.family == "sd":
                build_tiny_pipeline(args.folder, seed=args.seed, prediction_type=args.prediction_type,
                                    sample_size=args.sample_size or 8)
            elif args.prediction_type != "epsilon":
                raise ValueError(f"--prediction-type is for --family sd; {args.family} predicts "
                                 + ("ε (the tiny SDXL)" if args.family == "sdxl" else "a flow velocity"))
            else:
                build_tiny_family_pipeline(args.folder, family=args.family, seed=args.seed,
                                           sample_size=args.sample_size or 16)
            build_tiny_clip(Path(args.folder) / "clip", seed=args.seed)
            print(f"wrote a tiny {args.family} pipeline to {args.folder} (random weights: its images are noise) "
                  f"and a tiny CLIP to {Path(args.folder) / 'clip'}")
        elif args.command in ("mini-sd", "mini-flow"):
            from .sd import mini, mini_flow

            module, what = ((mini, "the mini Stable Diffusion") if args.command == "mini-sd" else
                            (mini_flow, "the mini flow-matching model"))
            if args.ship and not args.train:
                raise ValueError("--ship copies a fresh build into the package: use it with --train")
            if args.train:
                folder = module.train(args.folder, progress=not args.quiet)
                if args.ship:
                    module.ship(folder, extra=json.loads((folder / "manifest.json").read_text()))
                    print("shipped to", module.SHIPPED, "; measured:", json.dumps(module.measure_shipped()))
            else:
                folder = module.write(args.folder)
            print(f"wrote {what} to {folder / 'pipeline'}, the mini CLIP to {folder / 'clip'} and evaluation "
                  f"prompts to {folder / 'eval'}")
        elif args.command == "divergences":
            from .divergences import DIVERGENCES

            for name, d in DIVERGENCES.items():
                print(f"{name:20s} {getattr(d, 'description', '')}")
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted" + ("; rerun the same command with --resume to continue from the last checkpoint"
                               if args.command == "unlearn" else ""), file=sys.stderr)
        return 130
    except (ValueError, OSError, NonFiniteError, torch.OutOfMemoryError) as err:
        # ValueError: bad input, damaged checkpoints, mismatched resumes; OSError: missing models and
        # files, permissions, a full disk; NonFiniteError: a diverged run (nothing non-finite written)
        if args.debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


def _one_line(err: BaseException) -> str:
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return ("out of GPU memory: lower --batch-size (raise --gradient-accumulation-steps to keep the "
                "effective batch), train fewer parameters (--params kv), or use --mixed-precision bf16")
    if isinstance(err, OSError) and err.filename and err.strerror:  # e.g. "Permission denied: runs/x"
        return f"{err.strerror}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
