"""The verdicts the notebooks record, and the results schema :mod:`fdu.report` reads.

Each notebook measures; the functions here turn its measurements into the verdicts (booleans,
counts, paired comparisons) it saves under ``results["verdict"]``. :data:`SCHEMA` lists, per
notebook, the result keys and verdict keys that ``fdu.report`` reads: :func:`fdu.results.save_results`
refuses a results dict that lacks one, so a renamed key fails where it is written, and the notebook
tests build the report from the quick-mode results.
"""
from __future__ import annotations

from collections.abc import Sequence

NB02 = "02_gradient_magnitudes"
NB03 = "03_local_convergence"
NB04 = "04_toy2d_unlearning"
NB05 = "05_digits_unlearning"
NB06 = "06_stable_diffusion_unlearning"
NB08 = "08_flow_matching_and_model_families"
NB07 = "07_baselines_and_sequential_erasure"

#: notebook -> (top-level result keys, verdict keys) that the report reads; a key ending in "?"
#: is read only when present (it depends on which losses a run includes)
SCHEMA = {
    NB02: (("steps_to_tol", "outliers", "outliers_adam", "weight_autograd_vs_sympy_max_rel_err",
            "weight_through_loss_vs_autograd_max_rel_err", "alpha_weight_is_derived_exponential"),
           ("ordering_raw", "ordering_normalised", "hellinger_not_faster_than_mse_matched_lr",
            "hellinger_more_robust_to_outliers", "hellinger_faster_than_mse_adam_from",
            "hellinger_more_robust_to_outliers_adam")),
    NB03: (("per_divergence", "kappa", "max_relative_gap_predicted_measured"),
           ("hellinger_fastest_linear_critic", "js_faster_than_kl_registry_activation",
            "js_faster_than_kl_unit_activation_slope", "hellinger_fastest_quadratic_critic",
            "closed_form_ordering_reversed")),
    NB04: (("near_anchor", "anchors", "batch_size", "frontier_adam", "frontier_sgd"),
           ("hellinger_vs_mse_best_drift_when_erased_adam", "hellinger_vs_mse_best_drift_when_erased_sgd",
            "lrs_erasing_with_at_most_twice_the_least_damage_adam",
            "lrs_erasing_with_at_most_twice_the_least_damage_sgd", "chi2_more_damage_than_mse",
            "chi2_erases_more_than_mse", "variational_hellinger_best_preservation?",
            "variational_hellinger_weaker_erasure_than_closed?",
            "near_preserves_better_than_empty_closed", "superclass_preserves_better_than_empty_closed",
            "variational_bias_shrinks_with_batch", "variational_spread_shrinks_with_batch")),
    NB05: (("matched_erasure", "best_erased", "matched_budget", "anchors", "batch_size", "seeds",
            "epsilon_units"),
           ("hellinger_vs_mse_matched_erasure", "hellinger_vs_mse_best_erased",
            "hellinger_vs_mse_first_erased_seeds", "hellinger_vs_mse_best_erased_seeds",
            "chi2_vs_mse_budget", "variational_hellinger_budget?", "anchors_closed",
            "anchors_variational", "variational_bias_shrinks_with_batch",
            "variational_spread_shrinks_with_batch")),
    NB06: (("comparisons",), ()),
    NB07: (("methods", "sequence"), ("baselines", "sequential")),
    NB08: (("derivation", "monte_carlo", "parameterisations", "families", "comparisons"),
           ("hellinger_vs_mse_first_erased", "erased_by")),
}


def missing_keys(notebook: str, results: dict) -> list:
    """The keys of :data:`SCHEMA` that ``results`` lacks (``verdict.<key>`` for verdicts)."""
    if notebook not in SCHEMA:
        return []
    top, verdict = SCHEMA[notebook]
    missing = [k for k in top if k not in results]
    if verdict:
        v = results.get("verdict", {})
        missing += [f"verdict.{k}" for k in verdict if not k.endswith("?") and k not in v]
    return missing


def batch_size_verdict(estimates: dict, batch_sizes: Sequence[int]) -> dict:
    """Whether the critic's estimate gets less biased and less spread as the batch grows, for every
    divergence (``estimates`` from :func:`fdu.unlearn.critic_estimates_by_batch_size`): "shrinks"
    means smaller at each larger batch size (a curve that dips and rises again does not shrink)."""
    sizes = [str(b) for b in batch_sizes]

    def shrinks(values):
        return all(later < earlier for earlier, later in zip(values, values[1:]))

    return {"variational_bias_shrinks_with_batch": all(
                shrinks([abs(r[s]["relative_bias"]) for s in sizes]) for r in estimates.values()),
            "variational_spread_shrinks_with_batch": all(shrinks([r[s]["std"] for s in sizes])
                                                         for r in estimates.values())}


def gradient_magnitudes(results: dict, starts: Sequence[float]) -> dict:
    """Notebook 02: the ordering of the weights, and what it does to convergence and outliers."""
    def iterations(table, name, d):
        value = table[name][d]
        return value if isinstance(value, int) else float("inf")  # never reached, or diverged

    matched, adam = results["steps_to_tol"]["matched lr"], results["steps_to_tol"]["adam"]
    h_not_faster = all(not isinstance(matched["squared_hellinger"][d], int) or
                       not isinstance(matched["kl"][d], int) or
                       matched["squared_hellinger"][d] >= matched["kl"][d] for d in map(str, starts))
    # under Adam: the starts from which Hellinger reaches the tolerance strictly before MSE
    h_faster_adam = [float(d) for d in starts
                     if iterations(adam, "squared_hellinger", str(d)) < iterations(adam, "kl", str(d))]

    def robust(out):
        end = {name: out[name]["final_distance_to_inlier_mean"] for name in ("squared_hellinger", "kl")}
        return bool(end["squared_hellinger"] < end["kl"])

    return {"ordering_raw": results["ordering_raw_holds"], "ordering_normalised": results["ordering_normalised_holds"],
            "hellinger_not_faster_than_mse_matched_lr": h_not_faster,
            "hellinger_more_robust_to_outliers": robust(results["outliers"]),
            "hellinger_faster_than_mse_adam_from": h_faster_adam,
            "hellinger_more_robust_to_outliers_adam": robust(results["outliers_adam"])}


def local_convergence(results: dict) -> dict:
    """Notebook 03: which divergence's game converges fastest, and the closed forms' order."""
    pd, quad = results["per_divergence"], results["quadratic_critic"]
    rate = {n: pd[n]["predicted_rate"] for n in pd}
    v = {"hellinger_fastest_linear_critic": rate["squared_hellinger"] == min(rate.values()),
         "js_faster_than_kl_registry_activation": rate["jensen_shannon"] < rate["kl"],
         "js_faster_than_kl_unit_activation_slope": results["js_rate_with_unit_activation_slope"] < rate["kl"],
         "hellinger_fastest_quadratic_critic":
             min(quad, key=lambda n: quad[n]["predicted_rate"]) == "squared_hellinger",
         "closed_form_ordering_reversed": pd["pearson_chi2"]["closed_form_predicted_rate"]
             < pd["kl"]["closed_form_predicted_rate"] < pd["squared_hellinger"]["closed_form_predicted_rate"]}
    return {k: bool(x) for k, x in v.items()}


def toy2d(results: dict, *, closed, variational, threshold: float, near_anchor: str,
          superclass_anchor: str, batch_sizes: Sequence[int]) -> dict:
    """Notebook 04: claims 4, 5, 6, 10 and 12 on the 2-D toy. ``closed`` / ``variational``: the
    LossSpecs run (the first three closed ones are KL, squared Hellinger and Pearson χ²)."""
    from .toy2d import least_damage_when_erased, robust_learning_rates

    near = results["near_anchor"]

    def val(label, key):
        return near[label][key]["value"] if key != "drift" else near[label]["drift"]

    kl, hel, chi = closed[0].label, closed[1].label, closed[2].label
    v = {}
    for opt in ["adam", "sgd"]:
        fr = results[f"frontier_{opt}"]
        v[f"hellinger_vs_mse_best_drift_when_erased_{opt}"] = {
            n: least_damage_when_erased(fr[lab], threshold) for n, lab in [("hellinger", hel), ("mse", kl)]}
        v[f"lrs_erasing_with_at_most_twice_the_least_damage_{opt}"] = {
            n: robust_learning_rates(fr[lab], threshold) for n, lab in [("hellinger", hel), ("mse", kl)]}
    v["chi2_more_damage_than_mse"] = val(chi, "drift") > val(kl, "drift")
    v["chi2_erases_more_than_mse"] = val(chi, "in_target") < val(kl, "in_target")
    var_h = [s.label for s in variational if s.divergence == "squared_hellinger"]
    if var_h:
        vh = var_h[0]
        others = [lab for lab in near if "failed" not in near[lab] and lab != vh]
        v["variational_hellinger_best_preservation"] = all(val(vh, "preservation") <= val(lab, "preservation")
                                                           for lab in others)
        v["variational_hellinger_weaker_erasure_than_closed"] = all(
            val(vh, "in_target") >= val(s.label, "in_target") for s in closed if "failed" not in near[s.label])
    pres = {a: {lab: r["preservation"]["value"] for lab, r in per.items() if "failed" not in r}
            for a, per in results["anchors"].items()}
    for fam, labels in [("closed", [s.label for s in closed]), ("variational", [s.label for s in variational])]:
        labels = [lab for lab in labels if lab in pres[""]]
        for name, a in [("near", near_anchor), ("superclass", superclass_anchor)]:
            better = sum(pres[a][lab] < pres[""][lab] for lab in labels)
            v[f"{name}_preserves_better_than_empty_{fam}"] = f"{better} of {len(labels)}"
    v.update(batch_size_verdict(results["batch_size"], batch_sizes))
    return v


def digits(*, matched: dict, best: dict, seeds_first: dict, seeds_best: dict, budget: dict,
           anchors: dict, estimates: dict, specs, anchor_specs, batch_sizes: Sequence[int]) -> dict:
    """Notebook 05: the paired comparisons at matched erasure (first and best erased checkpoint,
    one seed and over seeds; the dicts of :func:`fdu.digits_bench.matched_erasure`, with their
    points), χ² and variational Hellinger at the matched budget, the anchors, and the critic's
    batch-size dependence."""
    from . import digits_bench as B

    def cmp(m):
        return B.compare_at_matched_erasure(m, "squared Hellinger", "KL = MSE")

    v = {"hellinger_vs_mse_matched_erasure": cmp(matched), "hellinger_vs_mse_best_erased": cmp(best),
         "hellinger_vs_mse_first_erased_seeds": cmp(seeds_first),
         "hellinger_vs_mse_best_erased_seeds": cmp(seeds_best),
         "chi2_vs_mse_budget": B.chi2_verdict(budget, "Pearson χ²", "KL = MSE")}
    if any(s.label == "variational Hellinger" for s in specs):
        v["variational_hellinger_budget"] = B.variational_hellinger_verdict(budget, "variational Hellinger")
    v["anchors_closed"] = B.anchor_verdict(anchors, [s.label for s in specs if not s.variational])
    v["anchors_variational"] = B.anchor_verdict(anchors, [s.label for s in anchor_specs if s.variational])
    v.update(batch_size_verdict(estimates, batch_sizes))
    return v


def digits_units(*, matched: dict, best: dict, budget: dict) -> dict:
    """Notebook 05, claims 4 and 5 again with another δ² (e.g. ε-equivalent units): Hellinger against
    MSE at the first and the best erased checkpoint, χ² against MSE at the matched budget."""
    from . import digits_bench as B

    return {"hellinger_vs_mse_matched_erasure": B.compare_at_matched_erasure(matched, "squared Hellinger", "KL = MSE"),
            "hellinger_vs_mse_best_erased": B.compare_at_matched_erasure(best, "squared Hellinger", "KL = MSE"),
            "chi2_vs_mse_budget": B.chi2_verdict(budget, "Pearson χ²", "KL = MSE")}


def baselines(first: dict, *, hellinger: str, others: Sequence[str], margin: float = 0.1) -> dict:
    """Claim 7 at matched erasure: ``first`` from :func:`fdu.digits_bench.matched_erasure` (each method's
    first erased checkpoint; a method without a "drift" entry did not erase). An erased method does less
    damage than ``hellinger`` when its drift on the retained concepts is below (1 − margin) times
    Hellinger's, more when above (1 + margin) times; within that, no clear difference. Status:
    "contradicted" when one does less, "reproduced" when every other erased method does more,
    "inconclusive" when Hellinger did not erase or nothing else did, else "not reproduced (no clear
    difference)"."""
    drift = {k: e["drift"]["value"] for k, e in first.items() if "drift" in e}
    erased = [k for k in others if k in drift]
    out = {"erased": erased, "drift": drift, "margin": margin, "less_damage_than_hellinger": [],
           "more_damage_than_hellinger": [], "no_clear_difference": []}
    if hellinger not in drift or not erased:
        return {**out, "status": "inconclusive"}
    h = drift[hellinger]
    out["less_damage_than_hellinger"] = [k for k in erased if drift[k] < (1 - margin) * h]
    out["more_damage_than_hellinger"] = [k for k in erased if drift[k] > (1 + margin) * h]
    out["no_clear_difference"] = [k for k in erased if (1 - margin) * h <= drift[k] <= (1 + margin) * h]
    status = ("contradicted" if out["less_damage_than_hellinger"] else
              "reproduced" if len(out["more_damage_than_hellinger"]) == len(erased) else
              "not reproduced (no clear difference)")
    return {**out, "status": status}


def sequential(curves: dict, *, hellinger: str = "squared_hellinger", mse: str = "kl") -> dict:
    """Claim 9: after each stage of a sequential erasure, the retained concepts' KID under Hellinger
    against MSE (``curves``: divergence -> points of :func:`fdu.sd.bench.sequence_curve`). A stage counts
    as lower (or higher) only when the two KIDs differ by more than the larger of their standard deviations
    over KID's subsets; else it is a tie. "reproduced": lower after the last stage and after most stages;
    "contradicted": higher on both counts; "not reproduced (no clear difference)": ties throughout;
    otherwise "partly"."""
    h, m = curves[hellinger][1:], curves[mse][1:]

    def compare(a, b):
        gap, noise = a["kid"]["mean"] - b["kid"]["mean"], max(a["kid"]["std"], b["kid"]["std"])
        return -1 if gap < -noise else 1 if gap > noise else 0

    signs = [compare(a, b) for a, b in zip(h, m)]
    lower, higher = signs.count(-1), signs.count(1)
    if signs[-1] == -1 and lower > len(signs) / 2:
        status = "reproduced"
    elif signs[-1] == 1 and higher > len(signs) / 2:
        status = "contradicted"
    elif lower == higher == 0:
        status = "not reproduced (no clear difference)"
    else:
        status = "partly"
    return {"status": status, "stages": len(signs), "hellinger_lower_kid_stages": lower,
            "hellinger_higher_kid_stages": higher, "ties": signs.count(0),
            "hellinger_lower_kid_final": signs[-1] == -1,
            "kid_final": {hellinger: h[-1]["kid"]["mean"], mse: m[-1]["kid"]["mean"]},
            "kid_std_final": {hellinger: h[-1]["kid"]["std"], mse: m[-1]["kid"]["std"]},
            "retained_accuracy_final": {hellinger: h[-1]["retained_accuracy"]["value"],
                                        mse: m[-1]["retained_accuracy"]["value"]}}
