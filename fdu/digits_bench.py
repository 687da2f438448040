"""The digits unlearning benchmark (notebook 05): every loss, anchors, learning rates, step checkpoints.

The paper's evidence is a table on Stable Diffusion (erased / retained CLIP accuracy, KID). Here the
judge classifier of :mod:`fdu.digits` plays CLIP's role:

* **erased accuracy** (lower: more erased): the share of samples for the target's prompts that the
  judge classifies as the target; **erased-as-anchor**: the share classified as the near anchor's
  digit; **held-out erased accuracy**: the same for paraphrases never used in unlearning;
* **retained accuracy** (higher: better kept): the other nine digits' prompts classified as
  themselves;
* **KID** (lower: better kept): kernel inception distance, in the judge's features, between the other
  digits' samples now and the base model's (independent noise, so an untouched model scores about 0);
* **drift** (lower: better kept): E||v_now(x_t, c) - v_orig(x_t, c)||^2 over the other digits'
  prompts, on noisy real images of those digits: sampling-free and fine-grained.

Accuracies carry Wilson 95% intervals over samples; tables average over targets and seeds with a
t-interval. A loss runs over a learning-rate grid and is measured at several step checkpoints, so it
can be compared with another at a *matched erasure level* (the first checkpoint where erased accuracy
falls to a threshold, at the learning rate with the least damage) and at a *matched budget* (one
learning rate, one number of steps): at a fixed budget every loss saturates on this data.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import digits
from .losses import LossSpec
from .metrics import mean_ci, wilson

CLOSED = [LossSpec("KL = MSE", "kl"), LossSpec("squared Hellinger", "squared_hellinger"),
          LossSpec("Pearson χ²", "pearson_chi2"), LossSpec("Jensen–Shannon (quadrature)", "jensen_shannon"),
          LossSpec("α = 0.1", "alpha", 0.1), LossSpec("α = 1.5", "alpha", 1.5)]
VARIATIONAL = [LossSpec(f"variational {n}", d, variational=True) for n, d in
               [("KL", "kl"), ("reverse KL", "reverse_kl"), ("Hellinger", "squared_hellinger"),
                ("JS", "jensen_shannon"), ("χ²", "pearson_chi2"), ("TV", "total_variation")]]


ACCURACIES = ("erased_accuracy", "erased_as_anchor", "retained_accuracy", "held_out_erased_accuracy")


def _mean_ci(name: str, values) -> dict:
    return mean_ci(values, bounds=(0.0, 1.0) if name in ACCURACIES else None)


@dataclass
class Bench:
    """The base model, its scheduler and the judge, with fixed sampling seeds: measures any model.

    ``n_target`` samples for the target's prompts (and as many for its held-out paraphrases),
    ``n_per_digit`` for each retained digit (a multiple of the number of templates), DDIM with
    ``inference_steps`` steps and classifier-free guidance ``guidance``.
    """

    model: digits.Model
    scheduler: object
    judge: digits.Judge
    n_target: int = 64
    n_per_digit: int = 24
    inference_steps: int = 10
    guidance: float = 2.0
    anchor_pool: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.n_per_digit % len(digits.TEMPLATES):
            raise ValueError(f"n_per_digit must be a multiple of {len(digits.TEMPLATES)} (the templates), "
                             f"got {self.n_per_digit}")
        self._base_retained = {}
        self._pools = {}
        self._before = {}
        x, y, _, _ = digits.load()
        self._real = (x, y)

    def _sample(self, model, prompts, n, seed):
        return digits.sample(model, self.scheduler, prompts, n, guidance=self.guidance,
                             inference_steps=self.inference_steps, seed=seed)

    def _retained(self, model, target, seed):
        others = [d for d in range(10) if d != target]
        prompts = [p for d in others for p in digits.prompts_for(d)]
        k = len(digits.TEMPLATES)
        labels = torch.tensor([others[(i % len(prompts)) // k] for i in range(self.n_per_digit * 9)])
        return self._sample(model, prompts, self.n_per_digit * 9, seed), labels

    def base_retained(self, target: int) -> torch.Tensor:
        """The base model's samples of the retained prompts, with other noise than :meth:`measure`'s."""
        if target not in self._base_retained:
            self._base_retained[target] = self._retained(self.model, target, self.seed + 7919)[0]
        return self._base_retained[target]

    def pool(self, target: int, anchor: str) -> torch.Tensor:
        """The base model's samples for the anchor prompts (the anchor x0 of every run), shared."""
        key = (target, anchor)
        if key not in self._pools:
            self._pools[key] = digits.sample(self.model, self.scheduler, digits.anchor_prompts(anchor, target),
                                             self.anchor_pool, guidance=self.guidance, seed=self.seed + 1)
        return self._pools[key]

    def measure(self, model, target: int, *, task=None, held_out: bool = True) -> dict:
        """Erased / erased-as-anchor / held-out erased accuracy, retained accuracy (per digit), KID
        against the base model and, given the run's ``task`` (for the frozen reference), drift."""
        near = digits.NEAR[target]
        x = self._sample(model, digits.prompts_for(target), self.n_target, self.seed + 100)
        pred = self.judge.predict(x)
        n = len(pred)
        out = {"erased_accuracy": wilson(int((pred == target).sum()), n),
               "erased_as_anchor": wilson(int((pred == near).sum()), n)}
        if held_out:
            xh = self._sample(model, digits.prompts_for(target, digits.HELD_OUT_TEMPLATES), self.n_target,
                              self.seed + 200)
            out["held_out_erased_accuracy"] = wilson(int((self.judge.predict(xh) == target).sum()), n)
        xr, labels = self._retained(model, target, self.seed + 300)
        ok = self.judge.predict(xr) == labels
        out["retained_accuracy"] = wilson(int(ok.sum()), len(ok))
        out["retained_per_digit"] = {int(d): float(ok[labels == d].float().mean()) for d in labels.unique()}
        out["kid"] = digits.kid(self.judge, self.base_retained(target), xr, subset_size=100, subsets=20,
                                seed=self.seed)
        if task is not None:
            out["drift"] = self.drift(task, target)
        return out

    @torch.no_grad()
    def drift(self, task, target: int, n: int = 256) -> float:
        """E||v_now - v_orig||^2 (summed over pixels) over the retained digits' prompts, x_t from their
        real training images at uniform t; the same draws for every call."""
        from .unlearn import frozen_output

        x, y = self._real
        gen = torch.Generator().manual_seed(self.seed + 400)
        keep = torch.nonzero(y != target).squeeze(1)
        idx = keep[torch.randint(len(keep), (n,), generator=gen)]
        x0 = x[idx]
        k = torch.randint(len(digits.TEMPLATES), (n,), generator=gen)
        prompts = [digits.prompts_for(int(y[i]))[int(j)] for i, j in zip(idx, k)]
        t = torch.randint(0, int(self.scheduler.config.num_train_timesteps), (n,), generator=gen)
        x_t = self.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
        now = task.forward(task.model, x_t, t, prompts)
        return float((now - frozen_output(task, x_t, t, prompts)).pow(2).flatten(1).sum(1).mean())

    def before(self, target: int) -> dict:
        """The base model's measures for a target (step 0 of every run)."""
        if target not in self._before:
            self._before[target] = {**self.measure(self.model, target), "drift": 0.0}
        return self._before[target]


def run(bench: Bench, target: int, anchor: str, spec: LossSpec, *, lr: float, steps: int,
        checkpoints: Sequence[int], batch_size: int = 64, sigma: float = 1.0,
        normalization: str = "sum", critic_lr: float = 1e-3, critic_warmup: int = 20,
        critic_hidden: int = 128, seed: int = 0, train: str = "kv", units: str = "output") -> dict:
    """Unlearn ``target`` towards ``anchor`` with one loss on a copy of the base model, measuring at
    each step in ``checkpoints`` (the base model's measures stand for step 0). Returns
    {"spec", "lr", "target", "anchor", "seed", "curve": [{"step", ...measures}], "failed", "model"}.
    A run whose loss overflows is recorded with its message and the checkpoints it reached."""
    from .critics import MLPCritic
    from .unlearn import UnlearnConfig, unlearn

    checkpoints = sorted(int(c) for c in checkpoints if 0 < int(c) <= steps)
    if not checkpoints or checkpoints[-1] != steps:
        checkpoints.append(steps)
    task = digits.unlearning_task(copy.deepcopy(bench.model), bench.scheduler, target, anchor, seed=seed,
                                  train=train, pool=bench.pool(target, anchor))
    curve = [{"step": 0, **bench.before(target)}]

    def callback(step, t):
        if step in checkpoints:
            curve.append({"step": step, **bench.measure(t.model, target, task=t, held_out=step == steps)})
        return {}

    torch.manual_seed(seed)
    critic = MLPCritic(64, hidden=critic_hidden, context_dim=64) if spec.variational else None
    cfg = UnlearnConfig(divergence=spec.divergence, alpha=spec.alpha, variational=spec.variational,
                        steps=steps, batch_size=batch_size, lr=lr, sigma=sigma, normalization=normalization,
                        units=units,
                        critic_lr=critic_lr, critic_warmup=critic_warmup if spec.variational else 0,
                        log_every=math.gcd(*checkpoints), seed=seed, progress=False)
    out = {"spec": spec, "lr": lr, "target": target, "anchor": anchor, "seed": seed, "curve": curve,
           "failed": None, "model": task.model}
    try:
        unlearn(task, cfg, critic=critic, callback=callback)
    except FloatingPointError as err:  # NonFiniteLossError: recorded, not hidden
        out["failed"] = str(err).split(";")[0]
    return out


def grid(bench: Bench, specs, targets, anchors, lrs, seeds, *, steps: int, checkpoints, progress: bool = True,
         keep_models: bool = False, **kwargs) -> list:
    """:func:`run` over the product of specs x targets x anchors x learning rates x seeds (a tqdm bar).
    Models are dropped unless ``keep_models``."""
    from itertools import product

    from tqdm.auto import tqdm

    jobs = list(product(specs, targets, anchors, lrs, seeds))
    runs = []
    for spec, target, anchor, lr, seed in tqdm(jobs, disable=not progress, desc="digits benchmark"):
        r = run(bench, target, anchor, spec, lr=lr, steps=steps, checkpoints=checkpoints, seed=seed, **kwargs)
        if not keep_models:
            r.pop("model")
        runs.append(r)
    return runs


# --- summaries ----------------------------------------------------------------------------------------

def _v(point, key):
    value = point[key]
    return value["value"] if isinstance(value, dict) and "value" in value else value


def flat(point: dict) -> dict:
    """A curve point's scalar measures (values of intervals; KID mean)."""
    out = {k: _v(point, k) for k in ("erased_accuracy", "erased_as_anchor", "retained_accuracy", "drift")}
    out["kid"] = point["kid"]["mean"]
    if "step" in point:
        out["step"] = point["step"]
    if "held_out_erased_accuracy" in point:
        out["held_out_erased_accuracy"] = _v(point, "held_out_erased_accuracy")
    return out


def first_erased(r: dict, threshold: float) -> dict | None:
    """The first checkpoint of a run (after step 0) whose erased accuracy is at most ``threshold``."""
    for p in r["curve"][1:]:
        if _v(p, "erased_accuracy") <= threshold:
            return flat(p)
    return None


def erased_points(r: dict, threshold: float) -> list:
    """Every checkpoint of a run (after step 0) whose erased accuracy is at most ``threshold``."""
    return [flat(p) for p in r["curve"][1:] if _v(p, "erased_accuracy") <= threshold]


def matched_erasure(runs: list, threshold: float, damage: str = "drift", mode: str = "first") -> dict:
    """Per loss label: for each (target, anchor, seed), one point among the learning rates' checkpoints
    that erase to ``threshold`` — ``mode="first"``: each learning rate's first such checkpoint (the
    damage at the moment of erasure), ``"best"``: any such checkpoint (the best the loss reaches on its
    frontier) — the one with the least ``damage``; then means with t-intervals over those replicates,
    how many replicates erased, and the chosen learning rates and steps."""
    if mode not in ("first", "best"):
        raise ValueError(f"mode must be 'first' or 'best', got {mode!r}")
    groups: dict = {}
    for r in runs:
        groups.setdefault(r["spec"].label, {}).setdefault((r["target"], r["anchor"], r["seed"]), []).append(r)
    out = {}
    for label, reps in groups.items():
        chosen, total = [], 0
        for key, rs in sorted(reps.items()):
            total += 1
            if mode == "first":
                pts = [(r["lr"], first_erased(r, threshold)) for r in rs]
                pts = [(lr, p) for lr, p in pts if p is not None]
            else:
                pts = [(r["lr"], p) for r in rs for p in erased_points(r, threshold)]
            if pts:
                lr, p = min(pts, key=lambda lp: (lp[1][damage], lp[1]["step"]))
                chosen.append({"target": key[0], "anchor": key[1], "seed": key[2], "lr": lr, **p})
        entry = {"erased": f"{len(chosen)} of {total}", "points": chosen}
        if chosen:
            for m in ("erased_accuracy", "retained_accuracy", "kid", "drift", "step"):
                entry[m] = _mean_ci(m, [c[m] for c in chosen])
        out[label] = entry
    return out


def at_budget(runs: list, lr: float, step: int) -> dict:
    """Per loss label: the measures at one learning rate and one checkpoint, averaged (t-interval) over
    targets, anchors and seeds in ``runs``; failed runs are counted, not averaged."""
    groups: dict = {}
    for r in runs:
        if r["lr"] == lr:
            groups.setdefault(r["spec"].label, []).append(r)
    out = {}
    for label, rs in groups.items():
        pts = [flat(p) for r in rs for p in r["curve"] if p["step"] == step]
        entry = {"runs": len(rs), "failed": sum(1 for r in rs if r["failed"]), "lr": lr, "step": step}
        for m in ("erased_accuracy", "erased_as_anchor", "retained_accuracy", "kid", "drift"):
            if pts:
                entry[m] = _mean_ci(m, [p[m] for p in pts])
        out[label] = entry
    return out


def per_target(runs: list, lr: float, budget_step: int, final_step: int) -> dict:
    """loss label -> anchor -> target -> {"lr", "failed", "at_budget", "final"}: the flat measures of each
    run at ``lr`` at the budget step and at its last step (None where a failed run stopped earlier)."""
    out: dict = {}
    for r in runs:
        if r["lr"] != lr:
            continue
        pts = {p["step"]: flat(p) for p in r["curve"]}
        out.setdefault(r["spec"].label, {}).setdefault(r["anchor"], {})[str(r["target"])] = {
            "lr": r["lr"], "failed": r["failed"], "at_budget": pts.get(budget_step), "final": pts.get(final_step)}
    return out


def curves(runs: list, lr: float) -> dict:
    """Per loss label: step -> mean erased accuracy, retained accuracy, KID and drift over the runs at
    ``lr`` (targets, anchors, seeds), for accuracy-vs-step plots."""
    out: dict = {}
    for r in runs:
        if r["lr"] != lr:
            continue
        for p in r["curve"]:
            out.setdefault(r["spec"].label, {}).setdefault(p["step"], []).append(flat(p))
    return {label: {s: {m: sum(p[m] for p in ps) / len(ps) for m in ("erased_accuracy", "retained_accuracy",
                                                                       "kid", "drift")}
                    for s, ps in sorted(steps_.items())} for label, steps_ in out.items()}


def frontier_points(runs: list) -> dict:
    """Per loss label: every (learning rate, checkpoint) as one point, averaged over targets, anchors
    and seeds: (erased accuracy, drift, KID, lr, step)."""
    acc: dict = {}
    for r in runs:
        for p in r["curve"][1:]:
            acc.setdefault(r["spec"].label, {}).setdefault((r["lr"], p["step"]), []).append(flat(p))
    return {label: [{"lr": lr, "step": s, **{m: sum(p[m] for p in ps) / len(ps)
                                               for m in ("erased_accuracy", "retained_accuracy", "kid", "drift")}}
                     for (lr, s), ps in sorted(pts.items())] for label, pts in acc.items()}


def pareto(points: list, x: str = "erased_accuracy", y: str = "drift") -> list:
    """The lower-left envelope of points (lower x and lower y are better), sorted by x."""
    best, out = math.inf, []
    for p in sorted(points, key=lambda p: (p[x], p[y])):
        if p[y] < best:
            out.append(p)
            best = p[y]
    return out


def by_anchor(runs: list, step: int) -> dict:
    """loss label -> anchor -> mean drift, KID, erased and retained accuracy at ``step`` (over targets
    and seeds; a failed run's missing checkpoint is left out)."""
    acc: dict = {}
    for r in runs:
        for p in r["curve"]:
            if p["step"] == step:
                acc.setdefault(r["spec"].label, {}).setdefault(r["anchor"], []).append(flat(p))
    return {label: {a: {m: _mean_ci(m, [p[m] for p in ps]) for m in ("erased_accuracy", "retained_accuracy",
                                                                   "kid", "drift")}
                    for a, ps in per.items()} for label, per in acc.items()}


# --- verdicts on the paper's claims (digits scale) ----------------------------------------------------

def _paired(matched: dict, a: str, b: str, measure: str):
    """Replicates where both losses erased: (a's values, b's values)."""
    pa = {(p["target"], p["anchor"], p["seed"]): p[measure] for p in matched.get(a, {}).get("points", [])}
    pb = {(p["target"], p["anchor"], p["seed"]): p[measure] for p in matched.get(b, {}).get("points", [])}
    keys = sorted(set(pa) & set(pb))
    return [pa[k] for k in keys], [pb[k] for k in keys]


def compare_at_matched_erasure(matched: dict, a: str, b: str) -> dict:
    """Is ``a`` less damaging than ``b`` when both have erased? Paired over replicates: how often
    a's drift (and KID) is lower, and the ratio of mean drifts. ``verdict``: "a better" when a is
    lower in every pair and the ratio < 0.9, "b better" symmetrically, else "no clear difference"
    ("inconclusive" without pairs)."""
    da, db = _paired(matched, a, b, "drift")
    ka, kb = _paired(matched, a, b, "kid")
    out = {"pairs": len(da), "a": a, "b": b}
    if not da:
        return {**out, "verdict": "inconclusive"}
    ratio = (sum(da) / len(da)) / max(sum(db) / len(db), 1e-12)
    wins = sum(x < y for x, y in zip(da, db))
    out.update(drift_ratio=ratio, a_lower_drift=wins, a_lower_kid=sum(x < y for x, y in zip(ka, kb)),
               mean_drift_a=sum(da) / len(da), mean_drift_b=sum(db) / len(db),
               mean_kid_a=sum(ka) / len(ka), mean_kid_b=sum(kb) / len(kb))
    out["verdict"] = ("a better" if wins == len(da) and ratio < 0.9 else
                      "b better" if wins == 0 and ratio > 1.1 else "no clear difference")
    return out


def _separated(x: dict, y: dict) -> int:
    """+1 if interval x lies above y, -1 if below, 0 if they overlap."""
    return 1 if x["low"] > y["high"] else -1 if x["high"] < y["low"] else 0


def chi2_verdict(budget: dict, chi2: str, mse: str) -> dict:
    """Claim 5 (χ² erases more and keeps less) at a matched budget, by non-overlapping intervals."""
    c, m = budget[chi2], budget[mse]
    if "erased_accuracy" not in c or "erased_accuracy" not in m:
        return {"erases_more": False, "more_damage": False, "failed_runs": c["failed"]}
    return {"erases_more": _separated(c["erased_accuracy"], m["erased_accuracy"]) < 0,
            "erases_less": _separated(c["erased_accuracy"], m["erased_accuracy"]) > 0,
            "more_damage": _separated(c["drift"], m["drift"]) > 0,
            "lower_retained_accuracy": _separated(c["retained_accuracy"], m["retained_accuracy"]) < 0,
            "failed_runs": c["failed"]}


def variational_hellinger_verdict(budget: dict, vh: str, closed_hellinger: str = "squared Hellinger") -> dict:
    """Claim 6 at a matched budget: does variational Hellinger keep the most (highest mean retained
    accuracy of all losses), erase less than closed-form Hellinger, and have a higher KID than it (the
    paper's table compares the two)?"""
    ok = {k: v for k, v in budget.items() if "retained_accuracy" in v}
    if vh not in ok or closed_hellinger not in ok:
        return {"best_retained": False, "weaker_erasure_than_closed_hellinger": False,
                "higher_kid_than_closed_hellinger": False}
    best = max(v["retained_accuracy"]["value"] for v in ok.values())
    a, b = ok[vh], ok[closed_hellinger]
    return {"best_retained": a["retained_accuracy"]["value"] >= best,
            "weaker_erasure_than_closed_hellinger": a["erased_accuracy"]["value"] > b["erased_accuracy"]["value"],
            "higher_kid_than_closed_hellinger": a["kid"]["value"] > b["kid"]["value"]}


def anchor_verdict(anchors: dict, labels: Sequence[str]) -> dict:
    """Claim 10: for how many losses the near / superclass anchor drifts less than the empty prompt."""
    labels = [lab for lab in labels if lab in anchors and "empty" in anchors[lab]]
    out = {}
    for a in ("near", "superclass"):
        have = [lab for lab in labels if a in anchors[lab]]
        less = sum(anchors[lab][a]["drift"]["value"] < anchors[lab]["empty"]["drift"]["value"] for lab in have)
        out[f"{a}_less_drift_than_empty"] = f"{less} of {len(have)}"
    return out


def describe_tables(matched: dict, best: dict, budget: dict, specs, *, threshold: float, budget_lr: float,
                    budget_step: int, mse: str = "KL = MSE", hellinger: str = "squared Hellinger") -> str:
    """The notebook's "what the tables say" paragraph, written from this run's three tables (so that the
    prose and the numbers cannot drift apart): which losses reached the threshold on every replicate, the
    closed forms' damage at the first and at the best erased checkpoint, Hellinger against MSE paired per
    replicate, and the variational losses against the closed forms."""
    def rng(values, fmt="{:.2f}"):
        values = sorted(values)
        if not values:
            return "–"
        lo, hi = fmt.format(values[0]), fmt.format(values[-1])
        return lo if lo == hi else f"{lo}–{hi}"

    closed = [s.label for s in specs if not s.variational]
    variational = [s.label for s in specs if s.variational]
    everywhere = [n for n in closed if matched[n]["erased"].split(" of ")[0] == matched[n]["erased"].split(" of ")[1]]
    partial = [f"{n} ({matched[n]['erased']})" for n in closed if n not in everywhere]
    out = [f"Closed forms that reach erased accuracy ≤ {threshold:g} on every replicate: "
           f"{', '.join(everywhere) or 'none'}" + (f"; on fewer: {', '.join(partial)}." if partial else ".")]
    if everywhere:
        first = [matched[n]["drift"]["value"] for n in everywhere]
        overlap = max(matched[n]["drift"]["low"] for n in everywhere) <= \
            min(matched[n]["drift"]["high"] for n in everywhere)
        out.append(f"At the first erased checkpoint their mean drift lies in {rng(first)}, with intervals that "
                   f"{'all overlap' if overlap else 'do not all overlap'}.")
        top = [n for n in everywhere if "drift" in best.get(n, {})]
        out.append("At the best erased checkpoint (the least drift over the run): "
                   + ", ".join(f"{n} {best[n]['drift']['value']:.2f}" for n in top) + ".")
    if hellinger in matched and mse in matched:
        for name, table in (("first", matched), ("best", best)):
            c = compare_at_matched_erasure(table, hellinger, mse)
            if c["pairs"]:
                out.append(f"Paired per replicate at the {name} erased checkpoint, {hellinger} has the lower drift "
                           f"in {c['a_lower_drift']} of {c['pairs']} (mean {c['mean_drift_a']:.2f} against "
                           f"{c['mean_drift_b']:.2f}) and the lower KID in {c['a_lower_kid']}.")
    var = [n for n in variational if "drift" in matched.get(n, {})]
    if var and everywhere:
        out.append(f"The variational losses that erased ({len(var)} of {len(variational)}) do so with drift "
                   f"{rng(matched[n]['drift']['value'] for n in var)} against the closed forms' "
                   f"{rng(matched[n]['drift']['value'] for n in everywhere)}, and retained accuracy "
                   f"{rng(matched[n]['retained_accuracy']['value'] for n in var)} against "
                   f"{rng(matched[n]['retained_accuracy']['value'] for n in everywhere)}.")
    at = [n for n in variational if "erased_accuracy" in budget.get(n, {})]
    at_closed = [n for n in closed if "erased_accuracy" in budget.get(n, {})]
    if at:
        out.append(f"At the matched budget (lr {budget_lr:g}, {budget_step} steps) their erased accuracy is "
                   f"{rng(budget[n]['erased_accuracy']['value'] for n in at)}, the closed forms' "
                   f"{rng(budget[n]['erased_accuracy']['value'] for n in at_closed)}.")
    return " ".join(out)
