"""The digits benchmark's summaries and verdicts (synthetic runs), and one real run (cached models)."""
import math

import pytest

from fdu import digits_bench as B
from fdu.losses import LossSpec
from fdu.metrics import mean_ci, wilson

KL, H, CHI = LossSpec("KL = MSE", "kl"), LossSpec("squared Hellinger", "squared_hellinger"), \
    LossSpec("Pearson χ²", "pearson_chi2")


def point(step, erased, drift, kid=0.01, retained=0.99):
    return {"step": step, "erased_accuracy": {"value": erased, "low": 0, "high": 1},
            "erased_as_anchor": {"value": 1 - erased, "low": 0, "high": 1},
            "retained_accuracy": {"value": retained, "low": 0, "high": 1}, "kid": {"mean": kid, "std": 0.0},
            "drift": drift}


def fake_run(spec, lr, target, curve, failed=None):
    return {"spec": spec, "lr": lr, "target": target, "anchor": "near", "seed": 0, "failed": failed,
            "curve": [point(0, 1.0, 0.0)] + [point(*c) for c in curve]}


def test_wilson_and_mean_ci():
    w = wilson(0, 50)
    assert w["value"] == 0 and w["low"] == 0 and 0.05 < w["high"] < 0.09  # rule of three: ~3/50
    w = wilson(25, 50)
    assert w["low"] < 0.5 < w["high"] and math.isclose(w["high"] - 0.5, 0.5 - w["low"], rel_tol=1e-9)
    m = mean_ci([1.0, 2.0, 3.0])
    assert m["value"] == 2.0 and math.isclose(m["high"] - 2.0, 4.303 * 1 / math.sqrt(3), rel_tol=1e-3)
    assert mean_ci([0.0, 1.0], bounds=(0, 1))["low"] == 0.0
    with pytest.raises(ValueError):
        mean_ci([])


def test_matched_erasure_picks_first_erased_checkpoint_with_least_drift():
    runs = [fake_run(KL, 1e-3, 3, [(10, 0.5, 1.0), (25, 0.05, 2.0), (50, 0.0, 3.0)]),
            fake_run(KL, 3e-3, 3, [(10, 0.08, 1.5), (25, 0.0, 0.5)]),
            fake_run(H, 1e-3, 3, [(10, 0.9, 0.1), (25, 0.5, 0.2)])]       # never erases
    m = B.matched_erasure(runs, 0.1)
    assert m["KL = MSE"]["erased"] == "1 of 1"
    (p,) = m["KL = MSE"]["points"]
    assert (p["lr"], p["step"], p["drift"]) == (3e-3, 10, 1.5)  # first erased of each lr, then least drift
    assert m["squared Hellinger"]["erased"] == "0 of 1" and "drift" not in m["squared Hellinger"]
    (p,) = B.matched_erasure(runs, 0.1, mode="best")["KL = MSE"]["points"]
    assert (p["lr"], p["step"], p["drift"]) == (3e-3, 25, 0.5)  # any erased checkpoint: the least drift
    with pytest.raises(ValueError, match="first"):
        B.matched_erasure(runs, 0.1, mode="last")


def test_at_budget_and_pareto():
    runs = [fake_run(KL, 1e-3, t, [(10, 0.2 * t, 1.0 * t)]) for t in (1, 2)]
    runs.append(fake_run(KL, 1e-3, 3, [], failed="non-finite loss"))
    b = B.at_budget(runs, 1e-3, 10)["KL = MSE"]
    assert b["runs"] == 3 and b["failed"] == 1 and math.isclose(b["drift"]["value"], 1.5)
    env = B.pareto([{"erased_accuracy": e, "drift": d} for e, d in [(0.5, 1), (0.1, 3), (0.2, 2), (0.3, 2.5)]])
    assert [(p["erased_accuracy"], p["drift"]) for p in env] == [(0.1, 3), (0.2, 2), (0.5, 1)]


def test_verdicts_can_go_either_way():
    def matched(dh, dk):
        runs = [fake_run(H, 1e-3, t, [(10, 0.0, dh * t)]) for t in (1, 2, 3)] + \
               [fake_run(KL, 1e-3, t, [(10, 0.0, dk * t)]) for t in (1, 2, 3)]
        return B.matched_erasure(runs, 0.1)
    assert B.compare_at_matched_erasure(matched(1.0, 2.0), H.label, KL.label)["verdict"] == "a better"
    assert B.compare_at_matched_erasure(matched(2.0, 1.0), H.label, KL.label)["verdict"] == "b better"
    assert B.compare_at_matched_erasure(matched(1.0, 1.0), H.label, KL.label)["verdict"] == "no clear difference"
    assert B.compare_at_matched_erasure({}, H.label, KL.label)["verdict"] == "inconclusive"

    def budget(chi_erased, chi_drift):
        runs = [fake_run(CHI, 1e-3, t, [(10, chi_erased + 0.01 * t, chi_drift + 0.01 * t)]) for t in (1, 2, 3)] + \
               [fake_run(KL, 1e-3, t, [(10, 0.5 + 0.01 * t, 1.0 + 0.01 * t)]) for t in (1, 2, 3)]
        return B.at_budget(runs, 1e-3, 10)
    strong = B.chi2_verdict(budget(0.0, 5.0), CHI.label, KL.label)
    assert strong["erases_more"] and strong["more_damage"]
    weak = B.chi2_verdict(budget(0.9, 0.1), CHI.label, KL.label)
    assert weak["erases_less"] and not weak["more_damage"]
    anchors = {"a": {"near": {"drift": {"value": 1}}, "superclass": {"drift": {"value": 3}},
                     "empty": {"drift": {"value": 2}}}}
    assert B.anchor_verdict(anchors, ["a"]) == {"near_less_drift_than_empty": "1 of 1",
                                                 "superclass_less_drift_than_empty": "0 of 1"}


def test_one_real_run_measures_and_erases():
    from fdu import digits

    judge, _ = digits.train_judge(progress=False)
    model, scheduler = digits.train_model(progress=False)
    bench = B.Bench(model, scheduler, judge, n_target=32, n_per_digit=8, anchor_pool=128)
    r = B.run(bench, 3, "near", KL, lr=3e-3, steps=30, checkpoints=[10, 30])
    assert [p["step"] for p in r["curve"]] == [0, 10, 30] and r["failed"] is None
    before, after = B.flat(r["curve"][0]), B.flat(r["curve"][-1])
    assert before["erased_accuracy"] >= 0.9 and after["erased_accuracy"] <= 0.2
    assert after["drift"] > 0 == before["drift"] and "held_out_erased_accuracy" in after
    with pytest.raises(ValueError, match="multiple of 4"):
        B.Bench(model, scheduler, judge, n_per_digit=6)


def test_per_target_keeps_the_budget_and_final_points():
    runs = [fake_run(KL, 1e-3, 3, [(10, 0.5, 1.0), (25, 0.0, 2.0)]),
            fake_run(KL, 3e-3, 3, [(10, 0.1, 1.5)]),
            fake_run(H, 1e-3, 1, [], failed="non-finite loss")]
    per = B.per_target(runs, 1e-3, 10, 25)
    entry = per["KL = MSE"]["near"]["3"]
    assert entry["at_budget"]["drift"] == 1.0 and entry["final"]["drift"] == 2.0 and entry["lr"] == 1e-3
    failed = per["squared Hellinger"]["near"]["1"]
    assert failed["failed"] and failed["at_budget"] is None and failed["final"] is None


def test_describe_tables_writes_the_run_numbers_into_the_prose():
    """The notebook's paragraph comes from the tables: counts, ranges and the paired comparison."""
    from types import SimpleNamespace

    from fdu import digits_bench as B

    def entry(drifts, kids, erased_of=None):
        pts = [{"target": t, "anchor": "near", "seed": 0, "drift": d, "kid": k}
               for t, (d, k) in enumerate(zip(drifts, kids))]
        n = len(pts)
        mean = sum(drifts) / n
        return {"erased": erased_of or f"{n} of {n}", "points": pts,
                "drift": {"value": mean, "low": mean - 0.1, "high": mean + 0.1},
                "retained_accuracy": {"value": 0.9, "low": 0.8, "high": 1.0}}

    specs = [SimpleNamespace(label=n, variational=v) for n, v in
             (("KL = MSE", False), ("squared Hellinger", False), ("Pearson χ²", False), ("variational KL", True))]
    matched = {"KL = MSE": entry([2.0, 3.0], [0.1, 0.2]), "squared Hellinger": entry([1.0, 3.5], [0.0, 0.3]),
               "Pearson χ²": {"erased": "0 of 2", "points": []}, "variational KL": entry([8.0, 9.0], [0.5, 0.6])}
    budget = {n: {"erased_accuracy": {"value": v}} for n, v in (("KL = MSE", 0.0), ("squared Hellinger", 0.0),
                                                                 ("Pearson χ²", 0.8), ("variational KL", 0.5))}
    text = B.describe_tables(matched, matched, budget, specs, threshold=0.1, budget_lr=0.003, budget_step=25)
    assert "every replicate: KL = MSE, squared Hellinger; on fewer: Pearson χ² (0 of 2)." in text
    assert "mean drift lies in 2.25–2.50" in text
    assert "lower drift in 1 of 2 (mean 2.25 against 2.50) and the lower KID in 1" in text
    assert "drift 8.50 against the closed forms' 2.25–2.50" in text
    assert "their erased accuracy is 0.50, the closed forms' 0.00–0.80" in text
