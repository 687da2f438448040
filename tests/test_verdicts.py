"""The verdict functions the notebooks call (fdu.verdicts): each can come out either way."""
from fdu.verdicts import batch_size_verdict


def _estimates(biases, stds):
    return {"kl": {str(b): {"relative_bias": x, "std": s} for b, x, s in zip((8, 32, 128), biases, stds)}}


def test_a_curve_shrinks_only_if_it_is_smaller_at_each_larger_batch():
    assert batch_size_verdict(_estimates([-0.5, -0.2, -0.1], [0.3, 0.2, 0.1]), [8, 32, 128]) == {
        "variational_bias_shrinks_with_batch": True, "variational_spread_shrinks_with_batch": True}
    # smaller at the largest batch than at the smallest, but not in between: not "shrinking"
    v = batch_size_verdict(_estimates([-0.5, -0.05, -0.1], [0.3, 0.4, 0.1]), [8, 32, 128])
    assert v == {"variational_bias_shrinks_with_batch": False, "variational_spread_shrinks_with_batch": False}


def _nb07_results(h_drift=1e-3, esd_drift=2e-3, h_kids=(0.01, 0.02), kl_kids=(0.02, 0.03)):
    def point(kid, acc=0.9):
        return {"kid": {"mean": kid, "std": 0.0}, "retained_accuracy": {"value": acc, "low": acc, "high": acc},
                "erased_accuracy": {"van gogh": {"value": 0.0}}}

    def erased(drift):
        return {"drift": {"value": drift}, "step": {"value": 25}, "retained_accuracy": {"value": 1.0},
                "kid": {"value": 0.0}, "erased_accuracy": {"value": 0.0}}

    first = {"H-DMU": erased(h_drift), "ESD-x": erased(esd_drift), "UCE": {"erased": "0 of 1"}}
    curves = {"kl": [point(0.0)] + [point(k) for k in kl_kids],
              "squared_hellinger": [point(0.0)] + [point(k) for k in h_kids]}
    from fdu import verdicts

    return {"model": "mini",
            "methods": {"first_erased": first, "esd_guidance": 1.0, "uce_lambda": 0.1},
            "sequence": {"sequence": ["van gogh", "monet"], "retained": ["picasso"], "curves": curves},
            "verdict": {"baselines": verdicts.baselines(first, hellinger="H-DMU", others=["ESD-x", "UCE"]),
                        "sequential": verdicts.sequential(curves)}}


def test_claims_7_and_9_could_go_either_way(tmp_path):
    """The rows of claims 7 and 9 follow the measurements: swapping which method drifts less, or which
    divergence keeps the lower KID, flips their status."""
    import json

    from fdu import report
    from fdu.verdicts import NB07

    params = {"steps": 100, "lr": 1e-3, "seed": 0, "threshold": 0.2}

    def rows(results):
        (tmp_path / f"{NB07}.json").write_text(json.dumps({"parameters": params, "results": results}))
        text = report.build(tmp_path)
        return {n: line for line in text.splitlines() for n in ("7", "9") if line.startswith(f"| {n} |")}

    good = rows(_nb07_results())
    assert "mini-SD: reproduced" in good["7"] and "mini-SD: reproduced" in good["9"]
    bad = rows(_nb07_results(h_drift=3e-3, h_kids=(0.03, 0.04)))
    assert "mini-SD: contradicted (ESD-x erased with a drift more than 10% below H-DMU" in bad["7"]
    assert "mini-SD: contradicted" in bad["9"]
    mixed = rows(_nb07_results(h_kids=(0.03, 0.02)))          # higher after the first artist, lower at the end
    assert "mini-SD: partly" in mixed["9"]
    assert "UCE not erased" in good["7"]
    close = rows(_nb07_results(h_drift=1.95e-3, h_kids=(0.02, 0.03)))   # within 10 %; equal KIDs
    assert "mini-SD: not reproduced (no clear difference)" in close["7"]
    assert "mini-SD: not reproduced (no clear difference)" in close["9"]
