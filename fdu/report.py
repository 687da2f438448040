"""Build ``paper/REPRODUCTION.md`` from the notebooks' results JSONs (``python -m fdu.report``).

One row per claim of the paper (Novello et al., ICML 2026; ``paper/REFERENCES.md``): the paper's
statement and where we read it, our measured result, the scale at which we measured it, and a
status. Nothing here is typed by hand that a notebook measured: a row
whose notebook has not run says so.
"""
from __future__ import annotations

from pathlib import Path

from .metrics import format_ci
from .paths import REPO_ROOT, report_results_dir
from .results import load_results
from .verdicts import NB02, NB03, NB04, NB05, NB06, NB07, NB08

NB01 = "01_f_divergences_between_gaussians"
NOTEBOOKS = (NB01, NB02, NB03, NB04, NB05, NB06, NB07, NB08)

# (number, the paper's statement (its source: see paper/REFERENCES.md), who measures it)
CLAIMS = [
    (1, "MSE is the KL instance: with equal-covariance Gaussian reverse steps KL = ω_t‖Δε‖², so the "
        "Concept-Ablation loss is KL-DMU (source: v2 abstract)", NB01),
    (2, "α-family closed forms D_α = [1 − exp(−α(1−α)δ²/2)]/(α(1−α)); Hellinger gives −exp(−δ²/8), "
        "Pearson gives exp(δ²); cost equals MSE "
        "(source: v2 abstract; the formula is our derivation, its constants the official code's)", NB01),
    (3, "Gradient ordering: per-sample weights Hellinger < MSE < χ² for non-trivial discrepancy (source: summary)",
     NB02),
    (4, "Headline: the Hellinger closed form consistently dominates MSE (SD 2.1 Van Gogh: erased CS "
        "0.624 vs 0.635, KID 0.027 vs 0.028) "
        "(source: v2 abstract; numbers from a summary)", "04/05/06 (toy, digits, mini-SD); SD needs a GPU"),
    (5, "P-DMU is the strong-erasure mode: lowest erased CA (0.1), retained CA 0.76 (source: summary)",
     "04/05/06 (toy, digits, mini-SD)"),
    (6, "Variational Hellinger: highest retained scores (CS 0.702, CA 0.88), weaker erasure, higher KID "
        "(0.051) (source: summary)", "04/05/06 (toy, digits, mini-SD)"),
    (7, "Baselines on SD 2.1 Van Gogh: ESD, DoCo, CAbl numbers (source: summary)", NB07),
    (8, "Nudity: H-DMU I2P 0.063, MMA 0.049 / 0.042 vs CAbl 0.120, 0.118, 0.141 (source: summary)", None),
    (9, "Sequential 10-artist erasure: the Hellinger variant gives lower KID on retained artists (source: summary)",
     NB07),
    (10, "Anchors: near and superclass anchors preserve unrelated concepts better (source: summary of v1)",
     "04/05/06 (toy, digits, mini-SD)"),
    (11, "Local convergence: JS and squared Hellinger converge faster (guided by f''(1)) (source: summary of v1)",
     NB03),
    (12, "Variational estimates depend on batch size; closed forms are exact for any batch "
         "(source: official README)",
     "04/05/06 (toy, digits, mini-SD)"),
    (13, "Same optimum for all f: f changes the path and aggressiveness, not the optimum "
         "(source: summary; our derivation)", NB01),
    (14, "Results carry over to SD 1.4, 1.5, XL, SD3 and FLUX (source: summary)", NB08),
]

NOT_CHECKABLE = ("not checkable here: needs Stable Diffusion weights and a GPU (no model hub on this "
                 "machine); the paper's numbers are quoted, not reproduced")


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def _claim1(R):
    r = R.get(NB01)
    if r is None:
        return None
    err = r["max_relative_error_vs_integration"]
    mse = r["official_match"]["mse"]
    ok = r["symbolic_closed_form_matches_registry"].get("kl") and max(err["kl"], err["reverse_kl"]) < 1e-9
    ok = ok and mse["max_grad_diff"] <= 1e-12 * mse["max_grad"]
    text = (f"sympy derives KL = δ²/2 from f(u) = u log u; it matches direct integration of E_Q[f(p/q)] "
            f"to {_fmt(err['kl'])} (reverse KL {_fmt(err['reverse_kl'])}, Jeffreys = δ² "
            f"{_fmt(err['jeffreys'])}) on δ² ∈ [1e-4, {r['_params']['delta2_max']:g}]; "
            f"`closed_form_loss('kl', omega=2)` equals the official MaskedMSE with max gradient "
            f"difference {_fmt(mse['max_grad_diff'])}")
    return text + _source(NB01), "exact (analytic + numerical)", "reproduced" if ok else "contradicted"


def _claim2(R):
    r = R.get(NB01)
    if r is None:
        return None
    err = r["max_relative_error_vs_integration"]
    alpha_errs = {k: v for k, v in err.items() if k.startswith("alpha")}
    om = r["official_match"]
    cases_ok = all(r["alpha_special_cases_match"].values())
    grads_ok = all(om[k]["max_grad_diff"] <= 1e-12 * om[k]["max_grad"] for k in ("hellinger", "pearson"))
    ok = cases_ok and grads_ok and max(alpha_errs.values()) < 1e-9
    text = (f"sympy derives D_α from f_α (Cressie–Read); its limits/special cases (α→1 KL, α→0 reverse "
            f"KL, α=½ 2×Hellinger, α=2 ½×Pearson) all match: {cases_ok}; max relative error against "
            f"integration for α ∈ {{{', '.join(k[6:-1] for k in alpha_errs)}}}: "
            f"{_fmt(max(alpha_errs.values()))}; H-DMU = ours(`squared_hellinger`, weight ½) − 1 and "
            f"P-DMU = ours(`pearson_chi2`) + 1 with gradient differences "
            f"{_fmt(om['hellinger']['max_grad_diff'])} and {_fmt(om['pearson']['max_grad_diff'])}; their cost next "
            "to MSE is measured by `make bench` (README). The "
            "paper's own α convention is not known to us")
    return text + _source(NB01), "exact (analytic + numerical)", "reproduced" if ok else "contradicted"


def _claim13(R):
    r = R.get(NB01)
    if r is None:
        return None
    slopes = r["min_slope_on_grid"]
    mins = r["minimiser_check"]
    ok = min(slopes.values()) > 0 and all(m["max_abs_grad"] == 0 and m["loss_nearby"] > 0
                                          for m in mins.values())
    text = (f"dD_f/dδ² = ½E_Q[r²f''(r)] > 0 (our derivation; checked against finite differences to "
            f"{_fmt(max(v['max_relative_error'] for v in r['slope_identity'].values()))}); the smallest "
            f"slope over δ² ∈ [1e-3, {r['_params']['delta2_max']:g}] for {len(slopes)} divergences is "
            f"{min(slopes.values()):.2g} > 0, and every closed-form loss ({len(mins)} tested, JS by "
            "quadrature and TV included) is 0 with a finite zero gradient at pred = target" + _source(NB01))
    game = R.get(NB03)
    if game is not None:
        final = {k: v["final_distance"] for k, v in game["per_divergence"].items()}
        ok = ok and max(final.values()) < 1e-8
        text += (f"; in the min-max game every f ({len(final)} simulated) has the same equilibrium Q = P, "
                 f"reached by GDA to a distance ≤ {_fmt(max(final.values()))}" + _source(NB03))
    return text, "exact, per sample (equal-covariance Gaussian steps); toy game", \
        "reproduced" if ok else "contradicted"


def _claim3(R):
    r = R.get(NB02)
    if r is None:
        return None
    par, out, v = r["_params"], r["outliers"], r["verdict"]
    steps, adam, adam_out = r["steps_to_tol"]["matched lr"], r["steps_to_tol"]["adam"], r["outliers_adam"]
    d0 = str(par["starts"][1]) if len(par["starts"]) > 1 else str(par["starts"][0])
    ok = v["ordering_raw"] and v["ordering_normalised"]
    text = (f"w_f = 2 dD_f/dδ² scales the MSE gradient per sample (our derivation); sympy = autograd to "
            f"{_fmt(max(r['weight_autograd_vs_sympy_max_rel_err'].values()))} and through "
            f"`closed_form_loss` to {_fmt(max(r['weight_through_loss_vs_autograd_max_rel_err'].values()))}; "
            f"w_α = exp(−α(1−α)δ²/2) derived: {r['alpha_weight_is_derived_exponential']}. On δ² ∈ "
            f"[1e-3, {par['delta2_max']:g}], Hellinger < MSE < χ² holds on the registry scale: "
            f"{v['ordering_raw']}, and after dividing each weight by f''(1) (the matched-learning-rate "
            f"control of the official LR confound): {v['ordering_normalised']}. The consequences differ: "
            f"with matched learning rates Hellinger is not faster than MSE on a single target "
            f"(iterations to {par['tol']:g} from δ₀ = {d0}: {steps['squared_hellinger'][d0]} vs "
            f"{steps['kl'][d0]}), but in a batch with {par['n_outliers']} far samples among "
            f"{par['n_inliers'] + par['n_outliers']} it ends "
            f"{out['squared_hellinger']['final_distance_to_inlier_mean']:.2g} "
            f"from the inliers' mean against MSE's {out['kl']['final_distance_to_inlier_mean']:.2g}; χ² "
            f"{'diverges' if out['pearson_chi2']['diverged'] else 'converges'} there at σ = {par['sigma']:g}. "
            "Under plain gradient descent these are effects of the learning rate as much as of f; under Adam "
            f"(the official optimiser, lr {par.get('adam_lr', float('nan')):g}), which cancels constant gradient "
            "factors, Hellinger reaches the tolerance before MSE from "
            f"{len(v['hellinger_faster_than_mse_adam_from'])} of {len(par['starts'])} starts (iterations from δ₀ = "
            + ", ".join(f"{d:g}: {adam['squared_hellinger'][str(d)]} vs {adam['kl'][str(d)]}" for d in par["starts"])
            + "), and the outlier batch ends where plain descent ended "
            f"(Hellinger {adam_out['squared_hellinger']['final_distance_to_inlier_mean']:.2g} vs MSE "
            f"{adam_out['kl']['final_distance_to_inlier_mean']:.2g}; χ² "
            f"{'diverges' if adam_out['pearson_chi2']['diverged'] else 'stays finite'})" + _source(NB02))
    return text, "toy (closed-form losses, R^d)", "reproduced" if ok else "contradicted"


def _claim11(R):
    r = R.get(NB03)
    if r is None:
        return None
    par, pd, v, k = r["_params"], r["per_divergence"], r["verdict"], r["kappa"]
    rates = ", ".join(f"{n} {pd[n]['predicted_rate']:.3f}" for n in pd)
    gap = r["max_relative_gap_predicted_measured"]
    text = (f"Our reconstruction (not the paper's theorem, which we do not have): Gaussian P, Q_θ, "
            f"{par['critic']} critic, GDA with η = {par['eta']:g}. The Jacobian (sympy = autograd) gives "
            f"predicted rates per step {rates}; simulations match to {_fmt(gap)}. The rate depends on f "
            f"through κ = g'(v*)/f''(1), which rescaling f does not change (KL {k['kl']:g}, Hellinger "
            f"{k['squared_hellinger']:g}, JS {k['jensen_shannon']:g} with the f-GAN activation, Pearson "
            f"{k['pearson_chi2']:g}), and the effective step ηg'. Squared Hellinger is fastest: "
            f"{v['hellinger_fastest_linear_critic']}; JS is faster than KL only if its activation has slope "
            f"1 at equilibrium ({v['js_faster_than_kl_unit_activation_slope']}; with the f-GAN activation: "
            f"{v['js_faster_than_kl_registry_activation']}); with a quadratic critic at the same η Hellinger "
            f"is fastest: {v['hellinger_fastest_quadratic_critic']} (its stiffer critic block is unstable "
            f"there); for the closed-form losses under gradient descent the order reverses (χ² < KL < "
            f"Hellinger in rate): {v['closed_form_ordering_reversed']}" + _source(NB03))
    full = v["hellinger_fastest_linear_critic"] and v["js_faster_than_kl_registry_activation"]
    some = v["hellinger_fastest_linear_critic"] or v["js_faster_than_kl_unit_activation_slope"]
    status = ("reproduced" if full else
              "partly reproduced: holds for Hellinger with a linear critic and for JS only with a "
              "unit-slope activation; not for every critic or step size" if some else "contradicted")
    return text, "toy (1-D Gaussian game, exact expectations)", status


SD_NOTE = "; the paper's Stable Diffusion numbers are not checkable here (no GPU, no SD weights)"


def _toy(R):
    r = R.get(NB04)
    return None if r is None else (r, r["verdict"], r["_params"])


_ci = format_ci


def _claim4(R):
    got = _toy(R)
    if got is None:
        return None
    r, v, par = got
    parts, verdicts = [], []
    for opt in ("adam", "sgd"):
        pair = v[f"hellinger_vs_mse_best_drift_when_erased_{opt}"]
        h, m = pair["hellinger"], pair["mse"]
        if h is None or m is None:
            parts.append(f"{opt.upper()}: not both erased on the learning-rate grid")
            verdicts.append("inconclusive")
            continue
        ratio = h / m
        verdicts.append("Hellinger better" if ratio < 0.9 else "MSE better" if ratio > 1.1 else
                        "no clear difference")
        robust = v[f"lrs_erasing_with_at_most_twice_the_least_damage_{opt}"]
        parts.append(f"{opt.upper()}: least damage among runs that erased, Hellinger {h:.3g} vs "
                     f"MSE {m:.3g} (ratio {ratio:.2f}); learning rates that erase with at most twice "
                     f"that damage: Hellinger {robust['hellinger']}, MSE {robust['mse']}")
    near = r["near_anchor"]
    text = (f"2-D toy, target '{par['target']}' → anchor '{par['near_anchor']}', erasure–preservation "
            f"frontier over a learning-rate grid ({len(par['adam_lrs'])} Adam, {len(par['sgd_lrs'])} "
            f"SGD rates, {par['steps']} steps): " + "; ".join(parts) + ". At one learning rate: "
            f"damage (energy distance) Hellinger {_ci(near['squared Hellinger']['preservation'])} vs "
            f"MSE {_ci(near['KL = MSE']['preservation'])}" + _source(NB04) + SD_NOTE)
    sgd = v["lrs_erasing_with_at_most_twice_the_least_damage_sgd"]
    wider = sgd["hellinger"] > sgd["mse"]
    status = "toy: " + ("reproduced" if verdicts[0] == "Hellinger better" else
                        f"not reproduced at the best learning rate ({verdicts[0]} with Adam, "
                        f"{verdicts[1]} with SGD)" + ("; with SGD Hellinger tolerates more learning "
                                                      "rates" if wider else "")) + \
        "; SD: not checkable here"
    return text, "toy (2-D, 6 concepts)", status


def _claim5(R):
    got = _toy(R)
    if got is None:
        return None
    r, v, par = got
    near = r["near_anchor"]
    chi, kl = near["Pearson χ²"], near["KL = MSE"]
    text = (f"At lr {par['lr_closed']:g} (Adam): share of target samples left in its region χ² "
            f"{_ci(chi['in_target'])} vs MSE {_ci(kl['in_target'])}; steps to erase {chi['steps_to_erase']} "
            f"vs {kl['steps_to_erase']}; damage to the other concepts (output drift) {chi['drift']:.3g} vs "
            f"{kl['drift']:.3g}" + _source(NB04) + SD_NOTE)
    more_damage, more_erasure = v["chi2_more_damage_than_mse"], v["chi2_erases_more_than_mse"]
    status = ("toy: reproduced" if more_damage and more_erasure else
              "toy: partly (more damage to retained concepts, not stronger erasure)" if more_damage else
              "toy: partly (stronger erasure, not more damage)" if more_erasure else
              "toy: not reproduced") + "; SD: not checkable here"
    return text, "toy (2-D, 6 concepts)", status


def _claim6(R):
    got = _toy(R)
    if got is None:
        return None
    r, v, par = got
    if "variational_hellinger_best_preservation" not in v:
        return None
    vh = r["near_anchor"]["variational Hellinger"]
    text = (f"Variational Hellinger (conditional critic on the reverse-step draws, lr "
            f"{par['lr_variational']:g}): damage {_ci(vh['preservation'])}, target share left "
            f"{_ci(vh['in_target'])}; best preservation of all losses: "
            f"{v['variational_hellinger_best_preservation']}; weaker erasure than every closed form: "
            f"{v['variational_hellinger_weaker_erasure_than_closed']}" + _source(NB04) + SD_NOTE)
    a, b = v["variational_hellinger_best_preservation"], v["variational_hellinger_weaker_erasure_than_closed"]
    status = ("toy: reproduced" if a and b else "toy: partly" if a or b else "toy: not reproduced") + \
        "; SD: not checkable here"
    return text, "toy (2-D, 6 concepts)", status


def _claim10(R):
    got = _toy(R)
    if got is None:
        return None
    r, v, par = got
    an = r["anchors"]
    rows = []
    for label in an[""]:
        if "failed" in an[""][label]:
            continue
        rows.append(f"{label}: " + ", ".join(f"'{a}' {an[a][label]['preservation']['value']:.3f}"
                                             for a in an if "failed" not in an[a][label]))
    counts = {k: v[k] for k in v if "preserves_better_than_empty" in k}
    text = ("Damage to the other concepts (energy distance) by anchor — " + "; ".join(rows) +
            ". Losses for which the anchor preserves better than the empty prompt: " +
            ", ".join(f"{k.replace('_preserves_better_than_empty_', ' anchor, ')}: {c}"
                      for k, c in counts.items()) + _source(NB04))

    def frac(key):
        k, n = (int(x) for x in counts[key].split(" of "))
        return k / n if n else 0.0

    closed = min(frac("near_preserves_better_than_empty_closed"),
                 frac("superclass_preserves_better_than_empty_closed"))
    allf = min(frac(k) for k in counts)
    status = ("toy: reproduced" if allf == 1 else
              "toy: reproduced for the closed forms, not for every variational loss" if closed == 1
              else "toy: partly" if closed > 0 else "toy: not reproduced")
    return text, "toy (2-D, 6 concepts)", status


def _claim12(R):
    got = _toy(R)
    if got is None:
        return None
    r, v, par = got
    bs = par["batch_sizes"]
    rows = []
    for div, d in r["batch_size"].items():
        rows.append(f"{div}: exact {d['exact']:.3f}, critic estimate " + ", ".join(
            f"{d[str(b)]['mean']:.3f}±{d[str(b)]['std']:.3f} (b={b})" for b in bs))
    text = ("A fresh critic trained 200 steps per batch size on the original model — " + "; ".join(rows) +
            f". Bias shrinks with the batch: {v['variational_bias_shrinks_with_batch']}; spread shrinks: "
            f"{v['variational_spread_shrinks_with_batch']}; the closed form is exact per sample at any "
            "batch size" + _source(NB04))
    ok = v["variational_bias_shrinks_with_batch"] and v["variational_spread_shrinks_with_batch"]
    some = v["variational_bias_shrinks_with_batch"] or v["variational_spread_shrinks_with_batch"]
    return text, "toy (2-D)", "toy: reproduced" if ok else "toy: partly" if some else "toy: not reproduced"


# --- digits scale (notebook 05) ------------------------------------------------------------------------

def _digits(R):
    r = R.get(NB05)
    return None if r is None else (r, r["verdict"], r["_params"])


def _dscale(par) -> str:
    return (f"digits 8×8, targets {par['targets']} → near anchors, Adam lr grid {par['lrs']}, "
            f"{par['steps']} steps, σ = {par['sigma']:g}")


def _d4(R):
    got = _digits(R)
    if got is None:
        return None
    r, v, par = got
    parts = []
    verdicts = {}
    seeds = len(par.get("extra_seeds", [])) + 1
    for key, what in (("hellinger_vs_mse_matched_erasure", "at the first erased checkpoint"),
                      ("hellinger_vs_mse_best_erased", "at the best erased checkpoint (the frontier's lowest point)"),
                      ("hellinger_vs_mse_first_erased_seeds",
                       f"with {seeds} seeds per target at lr {par['budget_lr']:g}, first erased checkpoint"),
                      ("hellinger_vs_mse_best_erased_seeds",
                       f"with {seeds} seeds per target at lr {par['budget_lr']:g}, best erased checkpoint")):
        c = v.get(key)
        if c is None:
            continue
        verdicts[key] = c["verdict"]
        if c["verdict"] == "inconclusive":
            parts.append(f"{what}: not both erased")
            continue
        parts.append(f"{what}: drift Hellinger {c['mean_drift_a']:.3g} vs MSE {c['mean_drift_b']:.3g} (ratio "
                     f"{c['drift_ratio']:.2f}; Hellinger lower in {c['a_lower_drift']} of {c['pairs']} pairs), "
                     f"KID {c['mean_kid_a']:.3g} vs {c['mean_kid_b']:.3g} (lower in {c['a_lower_kid']})")
    text = (f"Digits ({_dscale(par)}), δ² of the model's v outputs (what the loop compares, as the official "
            f"code compares outputs), matched erasure (erased accuracy ≤ {par['threshold']:g}, least drift "
            "over the learning rates) " + "; ".join(parts))
    # the seeded comparison (more pairs) decides where it exists
    first = verdicts.get("hellinger_vs_mse_first_erased_seeds",
                         verdicts.get("hellinger_vs_mse_matched_erasure", "inconclusive"))
    best = verdicts.get("hellinger_vs_mse_best_erased_seeds",
                        verdicts.get("hellinger_vs_mse_best_erased", "inconclusive"))
    status = _hellinger_status(first, best)
    eps = r["epsilon_units"]["verdict"]
    e_first, e_best = (eps[k]["verdict"] for k in ("hellinger_vs_mse_matched_erasure", "hellinger_vs_mse_best_erased"))
    e_parts = [f"{what}: " + ("not both erased" if c["verdict"] == "inconclusive" else
                              f"drift Hellinger {c['mean_drift_a']:.3g} vs MSE {c['mean_drift_b']:.3g} "
                              f"(lower in {c['a_lower_drift']} of {c['pairs']} pairs)")
               for what, c in (("first erased", eps["hellinger_vs_mse_matched_erasure"]),
                               ("best erased", eps["hellinger_vs_mse_best_erased"]))]
    text += (". With ε-equivalent δ² (Δε = √ᾱ_t Δv; one seed): " + "; ".join(e_parts) + _source(NB05))
    return text, _both(status, _hellinger_status(e_first, e_best))


def _hellinger_status(first: str, best: str) -> str:
    """Claim 4's status from the paired verdicts at the first and at the best erased checkpoint."""
    if first == best == "a better":
        status = "reproduced"
    elif first == best == "b better":
        status = "contradicted (MSE less damaging)"
    elif best == "a better":
        status = ("partly (Hellinger reaches a less damaging erased point over the run, but does no less "
                  "damage at the moment of erasure)")
    elif first == "a better":
        status = "partly (less damage at the moment of erasure, not on the frontier)"
    elif "b better" in (first, best):
        status = "not reproduced (MSE less damaging by one measure)"
    elif first == best == "inconclusive":
        status = "inconclusive"
    else:
        status = "not reproduced (no clear difference)"
    return status


def _d5(R):
    got = _digits(R)
    if got is None:
        return None
    r, v, par = got
    c = v["chi2_vs_mse_budget"]
    b = r["matched_budget"]
    chi, kl = b.get("Pearson χ²", {}), b.get("KL = MSE", {})
    if "erased_accuracy" not in chi or "erased_accuracy" not in kl:
        return "Digits: χ² or MSE has no measure at the budget", "digits: inconclusive"
    text = (f"Digits at a matched budget (lr {par['budget_lr']:g}, {par['budget_step']} steps, "
            f"{len(par['targets'])} targets), δ² of the model's v outputs: erased accuracy χ² "
            f"{_ci(chi['erased_accuracy'])} vs MSE "
            f"{_ci(kl['erased_accuracy'])}; retained {_ci(chi['retained_accuracy'])} vs "
            f"{_ci(kl['retained_accuracy'])}; drift {_ci(chi['drift'])} vs {_ci(kl['drift'])}; runs stopped "
            f"by overflow: {c['failed_runs']}")
    eps = r["epsilon_units"]
    e_chi, e_kl = eps["matched_budget"].get("Pearson χ²", {}), eps["matched_budget"].get("KL = MSE", {})
    if "erased_accuracy" in e_chi and "erased_accuracy" in e_kl:
        text += (f". With ε-equivalent δ² (Δε = √ᾱ_t Δv): erased accuracy χ² {_ci(e_chi['erased_accuracy'])} vs MSE "
                 f"{_ci(e_kl['erased_accuracy'])}; drift {_ci(e_chi['drift'])} vs {_ci(e_kl['drift'])}")
    share = r.get("gradient_share_by_timestep", {})
    if "Pearson χ²" in share.get("output", {}) and "Pearson χ²" in share.get("epsilon", {}):
        half = {u: sum(share[u]["Pearson χ²"]["share"][:len(share[u]["Pearson χ²"]["share"]) // 2])
                for u in ("output", "epsilon")}
        text += (f". χ²'s gradient at the start of unlearning lies {half['output']:.0%} (v) and {half['epsilon']:.0%} "
                 "(ε-equivalent) in the less noisy half of the timesteps: the verdict does not rest on the "
                 "high-noise steps")
    text += _source(NB05)
    return text, _both(_chi2_status(c), _chi2_status(eps["verdict"]["chi2_vs_mse_budget"]))


def _both(v_status: str, eps_status: str) -> str:
    """The digits status of a claim measured with δ² of the v outputs and with ε-equivalent δ²."""
    if v_status == eps_status:
        return f"digits: {v_status} (with δ² of the v outputs and with ε-equivalent δ²)"
    return f"digits: {v_status} (v outputs); {eps_status} (ε-equivalent)"


def _chi2_status(c: dict) -> str:
    """Claim 5's status from :func:`fdu.digits_bench.chi2_verdict`."""
    return ("reproduced" if c["erases_more"] and c["more_damage"] else
            "contradicted (χ² erases less: with the summed per-sample δ² most samples get almost no weight)"
            if c.get("erases_less") else
            "partly (stronger erasure, not more damage)" if c["erases_more"] else
            "partly (more damage, not stronger erasure)" if c["more_damage"] else "not reproduced")


def _d6(R):
    got = _digits(R)
    if got is None or "variational_hellinger_budget" not in got[1]:
        return None
    r, v, par = got
    c = v["variational_hellinger_budget"]
    b = r["matched_budget"]
    vh, h = b.get("variational Hellinger", {}), b.get("squared Hellinger", {})
    if "retained_accuracy" not in vh or "retained_accuracy" not in h:
        return "Digits: no measure at the budget", "digits: inconclusive"
    text = (f"Digits at the budget (lr {par['budget_lr']:g}, {par['budget_step']} steps): variational vs "
            f"closed-form Hellinger, erased accuracy {_ci(vh['erased_accuracy'])} vs {_ci(h['erased_accuracy'])}, "
            f"retained {_ci(vh['retained_accuracy'])} vs {_ci(h['retained_accuracy'])}, KID "
            f"{_ci(vh['kid'])} vs {_ci(h['kid'])}; highest retained accuracy of all losses: "
            f"{c['best_retained']}" + _source(NB05))
    hits = sum(bool(c[k]) for k in ("best_retained", "weaker_erasure_than_closed_hellinger",
                                    "higher_kid_than_closed_hellinger"))
    return text, "digits: " + ("reproduced" if hits == 3 else "partly" if hits else "not reproduced")


def _d10(R):
    got = _digits(R)
    if got is None:
        return None
    r, v, par = got
    counts = {**{f"closed, {k}": x for k, x in v["anchors_closed"].items()},
              **{f"variational, {k}": x for k, x in v["anchors_variational"].items()}}
    text = (f"Digits (lr {par['budget_lr']:g}, {par['steps']} steps): losses whose drift on the other digits "
            "is lower than with the empty prompt — " +
            ", ".join(f"{k.replace('_less_drift_than_empty', ' anchor')}: {x}" for k, x in counts.items()) +
            _source(NB05))

    def frac(x):
        k, n = (int(y) for y in x.split(" of "))
        return k / n if n else 0.0
    closed = min(frac(x) for x in v["anchors_closed"].values())
    allf = min(frac(x) for x in counts.values())
    status = ("reproduced" if allf == 1 else "reproduced for the closed forms" if closed == 1 else
              "partly" if max(frac(x) for x in counts.values()) > 0.5 else "not reproduced")
    return text, "digits: " + status


def _d12(R):
    got = _digits(R)
    if got is None:
        return None
    r, v, par = got
    rows = [f"{div}: exact {d['exact']:.3f}, estimate " + ", ".join(
        f"{d[str(b)]['mean']:.3f}±{d[str(b)]['std']:.3f} (b={b})" for b in par["batch_sizes"])
        for div, d in r["batch_size"].items()]
    text = "Digits, an image critic trained 150 steps per batch size: " + "; ".join(rows) + _source(NB05)
    ok = v["variational_bias_shrinks_with_batch"] and v["variational_spread_shrinks_with_batch"]
    some = v["variational_bias_shrinks_with_batch"] or v["variational_spread_shrinks_with_batch"]
    return text, "digits: " + ("reproduced" if ok else "partly" if some else "not reproduced")


def _with_digits(toy_filler, digits_filler):
    """A row from the toy (notebook 04) and the digits (notebook 05), whichever have run; the digits
    status goes before the row's "SD: not checkable here"."""
    def filler(R):
        toy, dig = toy_filler(R), digits_filler(R)
        if toy is None and dig is None:
            return None
        if dig is None:
            return toy
        if toy is None:
            return dig[0], "digits (8×8)", dig[1]
        text, scale, status = toy
        head, sep, tail = status.partition("; SD:")
        return f"{text}. {dig[0]}", f"{scale}; digits (8×8)", f"{head}; {dig[1]}{sep}{tail}"
    return filler


# --- Stable Diffusion scale (notebook 06): the mini SD on a CPU, or a real model on a GPU -------------

def _sd(R):
    """(comparisons, parameters, scale name, is a real model) of notebook 06, or None."""
    r = R.get(NB06)
    if r is None or "comparisons" not in r:
        return None
    par = r["_params"]
    model = str(par.get("model_id", "mini"))
    real = model not in ("mini", "tiny")
    return r["comparisons"], par, (f"SD ({model})" if real else "mini-SD"), real


def _sd_claim(R, key: str):
    """(comparisons, parameters, scale name, is real, budget table, the verdict ``key``), or None."""
    got = _sd(R)
    if got is None or key not in got[0]["verdict"]:
        return None
    c = got[0]
    return (*got, c["budget"], c["verdict"][key])


def _sscale(c, par, name) -> str:
    return (f"{name} ('{par['target']}' → '{par['anchor']}', K/V, Adam lr {c['lr']:g}, {c['budget_step']} steps, "
            f"seeds {par['seeds']}, erased = CLIP accuracy ≤ {c['threshold']:g})")


def _s4(R):
    got = _sd(R)
    if got is None:
        return None
    c, par, name, real = got
    parts, v = [], c["verdict"]
    for key, what in (("hellinger_vs_mse_first_erased", "first erased checkpoint"),
                      ("hellinger_vs_mse_best_erased", "best erased checkpoint")):
        x = v[key]
        if x["verdict"] == "inconclusive":
            parts.append(f"{what}: not both erased")
            continue
        parts.append(f"{what}: drift Hellinger {x['mean_drift_a']:.3g} vs MSE {x['mean_drift_b']:.3g} (lower in "
                     f"{x['a_lower_drift']} of {x['pairs']} seeds), KID {x['mean_kid_a']:.3g} vs {x['mean_kid_b']:.3g} "
                     f"(lower in {x['a_lower_kid']})")
    text = _sscale(c, par, name) + ": " + "; ".join(parts) + _source(NB06)
    status = _hellinger_status(v["hellinger_vs_mse_first_erased"]["verdict"],
                               v["hellinger_vs_mse_best_erased"]["verdict"])
    return text, name, f"{name}: {status}", real


def _s5(R):
    got = _sd_claim(R, "chi2_vs_mse_budget")
    if got is None:
        return None
    c, par, name, real, b, x = got
    chi, kl = b["Pearson χ²"], b["KL = MSE"]
    if "erased_accuracy" not in chi or "erased_accuracy" not in kl:
        return f"{name}: χ² or MSE has no measure at the budget", name, f"{name}: inconclusive", real
    text = (_sscale(c, par, name) + f", at step {c['budget_step']}: erased CLIP accuracy χ² "
            f"{_ci(chi['erased_accuracy'])} "
            f"vs MSE {_ci(kl['erased_accuracy'])}; retained {_ci(chi['retained_accuracy'])} vs "
            f"{_ci(kl['retained_accuracy'])}; drift {_ci(chi['drift'])} vs {_ci(kl['drift'])}; runs stopped by "
            f"overflow: {x['failed_runs']}" + _source(NB06))
    status = ("reproduced" if x["erases_more"] and x["more_damage"] else
              "contradicted (χ² erases less)" if x.get("erases_less") else
              "partly (stronger erasure, not more damage)" if x["erases_more"] else
              "partly (more damage, not stronger erasure)" if x["more_damage"] else
              "not reproduced (no separated difference)")
    return text, name, f"{name}: {status}", real


def _s6(R):
    got = _sd_claim(R, "variational_hellinger_budget")
    if got is None:
        return None
    c, par, name, real, b, x = got
    vh, h = b.get("variational Hellinger", {}), b.get("squared Hellinger", {})
    if "retained_accuracy" not in vh or "retained_accuracy" not in h:
        return f"{name}: no measure at the budget", name, f"{name}: inconclusive", real
    text = (f"{name} (seed {par['seed']}, {c['budget_step']} steps, lr {c['lr']:g}): variational vs closed-form "
            f"Hellinger, erased CLIP accuracy {_ci(vh['erased_accuracy'])} vs {_ci(h['erased_accuracy'])}, retained "
            f"{_ci(vh['retained_accuracy'])} vs {_ci(h['retained_accuracy'])}, KID {_ci(vh['kid'])} vs "
            f"{_ci(h['kid'])}; "
            f"highest retained accuracy of all losses: {x['best_retained']}" + _source(NB06))
    hits = sum(bool(x[k]) for k in ("best_retained", "weaker_erasure_than_closed_hellinger",
                                    "higher_kid_than_closed_hellinger"))
    return text, name, f"{name}: " + ("reproduced" if hits == 3 else "partly" if hits else "not reproduced"), real


def _s10(R):
    got = _sd_claim(R, "anchors")
    if got is None:
        return None
    c, par, name, real, _, x = got
    drift = "; ".join(f"{label}: " + ", ".join(f"{a} {d['drift']['value']:.3g}" for a, d in per.items())
                      for label, per in c["anchors"].items() if len(per) > 1)
    text = (f"{name} ('{par['target']}'; superclass '{par['anchor']}', near '{par['near_anchor']}', empty; seed "
            f"{par['seed']}, {c['budget_step']} steps): drift on the retained artists — {drift}; losses whose drift is "
            f"lower than with the empty prompt: near {x['near_less_drift_than_empty']}, superclass "
            f"{x['superclass_less_drift_than_empty']}" + _source(NB06))
    fr = [int(k) / int(n) if int(n) else 0 for k, n in (y.split(" of ") for y in x.values())]
    status = "reproduced" if min(fr) == 1 else "partly" if max(fr) > 0.5 else "not reproduced"
    return text, name, f"{name}: {status}", real


def _with_sd(row_filler, sd_filler):
    """A row of the toy and digits scales with notebook 06's verdict added: the mini SD goes before
    "SD: not checkable here"; a real model's verdict replaces it."""
    def filler(R):
        row, sd = row_filler(R), sd_filler(R)
        if sd is None:
            return row
        sd_text, sd_scale, sd_status, real = sd
        text, scale, status = row or ("", "", "SD: not checkable here")
        head, sep, tail = status.partition("SD:")
        if not sep:
            status = f"{status}; {sd_status}"
        elif real:
            text = text.replace(SD_NOTE, "")
            status = f"{head}{sd_status}"
        else:
            status = f"{head}{sd_status}; {sep}{tail}"
        return (f"{text}. {sd_text}" if text else sd_text), (f"{scale}; {sd_scale}" if scale else sd_scale), status
    return filler


def _mini_scale(r) -> str:
    par = r["_params"]
    model = "mini-SD" if r.get("model") == "mini" else str(r.get("model"))
    return model, (f"{model} ({par['steps']} steps per run, Adam lr {par['lr']:g}, seed {par['seed']}, "
                   f"erased = CLIP accuracy ≤ {par['threshold']:g})")


def _claim7(R):
    r = R.get(NB07)
    if r is None:
        return None
    name, scale = _mini_scale(r)
    first, v = r["methods"]["first_erased"], r["verdict"]["baselines"]
    parts = []
    for label, e in first.items():
        parts.append(f"{label} erased at step {e['step']['value']:.0f}, drift {e['drift']['value']:.3g}, retained "
                     f"{e['retained_accuracy']['value']:.2f}, KID {e['kid']['value']:.3g}" if "drift" in e else
                     f"{label} not erased")
    text = (f"{scale}, 'van gogh' → 'painting' (ESD: the empty prompt, η {r['methods']['esd_guidance']:g}; UCE: one "
            f"closed-form edit, λ {r['methods']['uce_lambda']:g}, the retained artists preserved), at each method's "
            "first erased checkpoint: " + "; ".join(parts) + ". DoCo is not implemented (adversarial, with its own "
            "critic)" + _source(NB07) + "; the paper's Stable Diffusion numbers are not checkable here")
    margin = f"{v.get('margin', 0.1):.0%}"
    why = {"reproduced": f"every other method that erased drifts more than {margin} above H-DMU",
           "contradicted": f"{', '.join(v['less_damage_than_hellinger'])} erased with a drift more than {margin} "
                           "below H-DMU's",
           "inconclusive": "H-DMU, or every other method, did not erase",
           "not reproduced (no clear difference)": f"{', '.join(v.get('no_clear_difference', []))} within {margin} "
                                                   "of H-DMU's drift"}[v["status"]]
    return text, name, f"{name}: {v['status']} ({why}); SD: not checkable here"


def _claim9(R):
    r = R.get(NB07)
    if r is None:
        return None
    name, scale = _mini_scale(r)
    seq, v = r["sequence"], r["verdict"]["sequential"]
    curves = seq["curves"]
    kid = {d: ", ".join(f"{p['kid']['mean']:.3g}" for p in pts[1:]) for d, pts in curves.items()}
    left = {d: sum(a["value"] for a in pts[-1]["erased_accuracy"].values()) / len(pts[-1]["erased_accuracy"])
            for d, pts in curves.items()}
    text = (f"{scale}: {len(seq['sequence'])} artists erased one after another ({', '.join(seq['sequence'])}; each "
            f"run from the last one's weights), retained {', '.join(seq['retained'])}. Retained KID after each "
            f"artist, KL: {kid['kl']}; squared Hellinger: {kid['squared_hellinger']} (beyond KID's subset spread: "
            f"lower for Hellinger after {v['hellinger_lower_kid_stages']} of {v['stages']}, higher after "
            f"{v.get('hellinger_higher_kid_stages', 0)}); retained CLIP accuracy at the end "
            f"{v['retained_accuracy_final']['squared_hellinger']:.2f} vs {v['retained_accuracy_final']['kl']:.2f}; "
            f"mean CLIP accuracy of the erased artists at the end {left['squared_hellinger']:.2f} vs {left['kl']:.2f} "
            "(Hellinger vs KL; above 0 where a later erasure brought an earlier artist back)"
            + _source(NB07) + "; the paper's Stable Diffusion numbers are not checkable here")
    return text, name, f"{name}: {v['status']}; SD: not checkable here"


def _claim14(R):
    r = R.get(NB08)
    if r is None:
        return None
    par, d, mc = r["_params"], r["derivation"], r["monte_carlo"]
    model = "mini flow model" if r.get("model") == "mini-flow" else str(r.get("model"))
    steps_ok = all(d[k]["linear_in_v"] and d[k]["variance_free_of_model"] for k in ("posterior", "sde", "renoise"))
    fams = ", ".join(f"{f['family']} ({f['denoiser']}, kv: {'/'.join(f['kv_example'])})" for f in r["families"])
    v, erased = r["verdict"]["hellinger_vs_mse_first_erased"], r["verdict"]["erased_by"]
    text = (f"Flow matching (our derivation): the posterior, SDE and renoise reverse steps of a rectified flow are "
            f"Gaussian with a mean linear in the predicted velocity and a variance free of the model (sympy: "
            f"{steps_ok}), so δ² = c‖Δv‖²; Monte-Carlo divergences between the two sampled steps (diffusers' own "
            f"sampler for renoise) lie within 3 standard errors of the closed forms in {mc['within_3_se']} checks "
            f"({mc['draws']} draws each). One loop trains {fams}: tiny pipelines of each, built from configs, "
            f"train, checkpoint and resume in the tests. {model} (SD3 format, '{par['target']}' → '{par['anchor']}', "
            f"kv, Adam lr {par['lr']:g}, {par['steps']} steps, seeds {par['seeds']}, erased = CLIP accuracy ≤ "
            f"{par['threshold']:g}): erased by " + ", ".join(f"{k} {'yes' if x else 'no'}" for k, x in erased.items()))
    if v["verdict"] != "inconclusive":
        text += (f"; squared Hellinger vs KL at first erasure: drift ratio {v['drift_ratio']:.3g}, lower drift in "
                 f"{v['a_lower_drift']} of {v['pairs']} seeds, lower KID in {v['a_lower_kid']} ({v['verdict']})")
    true = r.get("true_delta2", {}).get("verdict", {}).get("hellinger_vs_mse_first_erased")
    if true and true["verdict"] != "inconclusive":
        text += (f". With the flow's own δ² (normalization reverse_step, seeds {r['true_delta2']['seeds']}): drift "
                 f"ratio {true['drift_ratio']:.3g}, Hellinger lower in {true['a_lower_drift']} of {true['pairs']} "
                 f"({true['verdict'].replace('a better', 'Hellinger better').replace('b better', 'KL better')})")
    text += _source(NB08)
    sd = R.get(NB06, {}).get("comparisons", {}).get("verdict", {}).get("hellinger_vs_mse_first_erased")
    name = "mini-flow" if r.get("model") == "mini-flow" else model
    if sd is None or v["verdict"] == "inconclusive":
        status = f"{name}: inconclusive (no matched erasure on both models)"
    else:
        text += f"; on the mini Stable Diffusion (ε-UNet, notebook 06): {sd['verdict']}"
        status = (f"{name}: the mini-SD ordering holds ({v['verdict']} on both)" if sd["verdict"] == v["verdict"] else
                  f"{name}: the mini-SD ordering does not hold ({v['verdict']} here, {sd['verdict']} on the mini SD)")
    if true and true["verdict"] in ("a better", "b better"):
        status += f"; with the flow's own δ²: {'Hellinger' if true['verdict'] == 'a better' else 'KL'} better"
    return text, f"exact (sampled steps); tiny pipelines; {name}", f"{status}; SD 1.x/XL/SD3/FLUX: not checkable here"


FILLERS = {1: _claim1, 14: _claim14,
           7: _claim7, 9: _claim9, 2: _claim2, 3: _claim3, 4: _with_sd(_with_digits(_claim4, _d4), _s4),
           5: _with_sd(_with_digits(_claim5, _d5), _s5), 6: _with_sd(_with_digits(_claim6, _d6), _s6),
           10: _with_sd(_with_digits(_claim10, _d10), _s10), 11: _claim11,
           12: _with_digits(_claim12, _d12), 13: _claim13}


def _source(notebook: str) -> str:
    return f" (`{notebook}.ipynb`, parameters in its JSON)"


def build(folder: Path | None = None) -> str:
    folder = folder or report_results_dir()
    loaded = {nb: load_results(nb, folder) for nb in NOTEBOOKS}
    R = {nb: dict(d["results"], _params=d["parameters"]) for nb, d in loaded.items() if d}
    lines = [
        "# Reproduction report",
        "",
        "Generated by `make paper` (`python -m fdu.report`) from `paper/results/*.json`, which the "
        "notebooks write; do not edit by hand. The claims are those of Novello et al., ICML 2026 "
        "(arXiv:2509.21167); after each, its source: the abstract, a summary of the paper (its numbers are "
        "to be checked against the paper), the official code or README, or our derivation "
        "(`paper/REFERENCES.md`).",
        "",
        "| # | the paper's claim | our result | scale | status |",
        "|---|---|---|---|---|",
    ]
    for number, claim, source in CLAIMS:
        filled = FILLERS[number](R) if number in FILLERS else None
        if filled is not None:
            result, scale, status = filled
        elif source is None:
            result, scale, status = "—", "Stable Diffusion", NOT_CHECKABLE
        else:
            result, scale, status = "—", "—", f"not yet measured (to come from notebook {source})"
        lines.append(f"| {number} | {claim} | {result} | {scale} | {status} |")
    lines += ["", "Figures: `figures/` (PNG and PDF), regenerated by `make figures`.", ""]
    return "\n".join(lines)


def main():
    out = REPO_ROOT / "paper" / "REPRODUCTION.md"
    out.write_text(build())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
