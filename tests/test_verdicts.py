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
