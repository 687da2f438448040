"""closed_form_loss, the official constants, and the variational objective."""
import pytest
import torch

import fdu
from fdu.losses import closed_form_loss, critic_loss, generator_loss, squared_distance, variational_losses
from fdu.verify import minimiser_check, official_match

NAMES = ["kl", "reverse_kl", "jeffreys", "squared_hellinger", "jensen_shannon", "pearson_chi2",
         "neyman_chi2", "total_variation"]


def _pair(shape=(4, 4, 8, 8), seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(*shape, generator=g)
    return target + scale * torch.randn(*shape, generator=g), target


def test_sum_normalisation_is_the_exact_divergence():
    pred, target = _pair()
    sigma = 2.0
    for name in NAMES:
        per = closed_form_loss(pred, target, name, sigma=sigma, normalization="sum", reduction="none")
        d2 = ((pred - target) ** 2).sum((1, 2, 3)) / sigma**2
        assert torch.allclose(per, fdu.gaussian_divergence(name, d2.double()).float(), rtol=1e-5), name


def test_mean_normalisation_sums_channels_and_averages_positions():
    pred, target = _pair()
    m = squared_distance(pred, target, normalization="mean")
    assert torch.allclose(m, ((pred - target) ** 2).sum(1).mean((1, 2)))
    vec_pred, vec_target = _pair((5, 3))
    assert torch.allclose(squared_distance(vec_pred, vec_target, normalization="mean"),
                          ((vec_pred - vec_target) ** 2).sum(1))


def test_masks_of_each_accepted_shape_agree():
    pred, target = _pair()
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., 1:-1, 1:-1] = 1
    a = squared_distance(pred, target, mask=mask)
    b = squared_distance(pred, target, mask=mask[:, 0])
    c = squared_distance(pred, target, mask=mask.expand(-1, 4, -1, -1))
    assert torch.allclose(a, b) and torch.allclose(a, c)
    inner = ((pred - target)[..., 1:-1, 1:-1] ** 2).sum(1).mean((1, 2))
    assert torch.allclose(a, inner)


def test_official_losses_are_matched_by_the_documented_constants():
    out = official_match()
    assert out["mse"]["offset"] == pytest.approx(0.0, abs=1e-12)
    assert out["hellinger"]["offset"] == pytest.approx(1.0, abs=1e-12)
    assert out["pearson"]["offset"] == pytest.approx(-1.0, abs=1e-12)
    for key, row in out.items():
        assert row["max_grad"] > 0
        assert row["max_grad_diff"] <= 1e-12 * row["max_grad"], key


def test_every_loss_is_minimised_at_pred_equal_target():
    for name, row in minimiser_check().items():
        assert row["loss_at_minimum"] == 0.0, name
        assert row["grad_is_finite"] and row["max_abs_grad"] == 0.0, name
        assert row["loss_nearby"] > 0, name


def test_target_is_detached_and_weights_apply_per_sample():
    pred, target = _pair()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5])
    loss = closed_form_loss(pred, target, "hellinger", omega=w)
    loss.backward()
    assert target.grad is None
    assert pred.grad[1].abs().max() == 0 and pred.grad[0].abs().max() > 0


def test_chi2_loss_refuses_to_overflow():
    pred, target = _pair(scale=10.0)
    with pytest.raises(ValueError, match="safe range"):
        closed_form_loss(pred, target, "pearson_chi2", normalization="sum")
    assert torch.isfinite(closed_form_loss(pred, target, "pearson_chi2", sigma=10.0))


def test_nonfinite_inputs_raise_instead_of_returning_nan():
    pred, target = _pair()
    pred[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError):
        closed_form_loss(pred, target, "kl")


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"), (dict(omega=-1.0), "omega"),
    (dict(normalization="max"), "normalization"), (dict(reduction="sum"), "reduction"),
    (dict(mask=torch.ones(4, 3, 3)), "mask"), (dict(divergence="bogus"), "valid names"),
    (dict(divergence="alpha"), "alpha"), (dict(divergence="alpha", alpha=float("nan")), "alpha"),
])
def test_bad_inputs_raise_clear_errors(kwargs, match):
    pred, target = _pair()
    kwargs = {"divergence": "kl", **kwargs}
    with pytest.raises(ValueError, match=match):
        closed_form_loss(pred, target, **kwargs)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        closed_form_loss(torch.zeros(2, 3), torch.zeros(2, 4), "kl")
    with pytest.raises(ValueError, match="batched"):
        closed_form_loss(torch.zeros(3), torch.zeros(3), "kl")


# --- variational --------------------------------------------------------------------------------

VARIATIONAL = NAMES + ["alpha"]


def _kwargs(name):
    return {"alpha": 0.3} if name == "alpha" else {}


@pytest.mark.parametrize("name", [n for n in VARIATIONAL if n != "total_variation"])
def test_optimal_critic_recovers_the_divergence(name):
    """With V such that g_f(V) = f'(p/q) exactly, E_P[T] - E_Q[f*(T)] equals D_f (here P, Q 1-D)."""
    div = fdu.get_divergence(name, **_kwargs(name))  # TV: see the sign-critic test below
    delta = 0.8
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xp, xq = z + delta, z  # P = N(delta, 1), Q = N(0, 1)
    def ratio(x):
        return torch.exp(delta * x - delta**2 / 2)

    def logits(x):  # invert g_f numerically at f'(r(x))
        u = ratio(x).requires_grad_(True)
        (t,) = torch.autograd.grad(div.f(u).sum(), u)
        lo, hi = torch.full_like(t, -50.0), torch.full_like(t, 50.0)
        for _ in range(200):
            mid = (lo + hi) / 2
            up = div.activation(mid) < t
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        return (lo + hi) / 2

    estimate = -critic_loss(div, logits(xp), logits(xq))
    assert float(estimate) == pytest.approx(fdu.gaussian_divergence(div, delta**2), rel=2e-2)


def test_total_variation_sign_critic_recovers_tv():
    delta = 0.8
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    def big(x):  # g = tanh(v)/2 -> +-1/2
        return 30.0 * torch.sign(x - delta / 2)

    estimate = -critic_loss("tv", big(z + delta), big(z))
    assert float(estimate) == pytest.approx(fdu.gaussian_divergence("tv", delta**2), rel=2e-2)


@pytest.mark.parametrize("name", VARIATIONAL)
def test_variational_gradients_cannot_leak_between_players(name):
    torch.manual_seed(0)
    denoiser = torch.nn.Linear(3, 3)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(16, 3)
    real = x + 1.0
    fake = denoiser(x)
    losses = variational_losses(name, critic, real, fake, **_kwargs(name))
    losses.generator.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters())
    assert all(p.requires_grad for p in critic.parameters())  # restored after the frozen pass
    denoiser.zero_grad(set_to_none=True)
    losses.critic.backward()
    assert all(p.grad is None for p in denoiser.parameters())
    assert all(p.grad is not None for p in critic.parameters())
    assert torch.isfinite(losses.estimate)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_players_losses_and_gradients_are_finite_for_extreme_logits(dtype):
    """Logits of ±80 (as an untrained or overconfident critic gives) keep both losses and their
    gradients finite in float32 as in float64 (exp(80) ~ 5.5e34 < float32's 3.4e38)."""
    for name in ["kl", "reverse_kl", "squared_hellinger", "jensen_shannon", "neyman_chi2",
                 "total_variation", "pearson_chi2"]:
        v = torch.tensor([-80.0, -5.0, 0.0, 5.0, 80.0], dtype=dtype, requires_grad=True)
        for loss in (generator_loss(name, v), critic_loss(name, v, v.flip(0))):
            (grad,) = torch.autograd.grad(loss, v)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (name, loss, grad)
        assert torch.isfinite(fdu.get_divergence(name).activation(v)).all(), name


def test_critic_mask_must_broadcast():
    with pytest.raises(ValueError, match="broadcast"):
        critic_loss("kl", torch.zeros(2, 1, 6, 6), torch.zeros(2, 1, 6, 6), mask=torch.ones(2, 1, 5, 5))


# --- edge cases found by running the official loss code beside ours --------------------------------

def _official_m(pred, target, mask):
    """The official MaskedMSE's m: sum over channels and positions of mask * diff^2, divided by
    the sum of the one-channel mask over positions."""
    return (mask * (pred - target) ** 2).flatten(1).sum(1) / mask.flatten(1).sum(1)


def test_a_soft_mask_is_divided_by_its_own_sum_even_below_one():
    pred, target = _pair(shape=(3, 4, 6, 6))
    mask = torch.full((3, 1, 6, 6), 0.01)
    mask[1, :, :3] = 0.002
    m = squared_distance(pred, target, mask=mask)
    assert torch.allclose(m, _official_m(pred, target, mask), rtol=1e-5)
    # a uniform mask of any height counts every position equally: the unmasked mean
    uniform = squared_distance(pred, target, mask=torch.full((3, 1, 6, 6), 0.01))
    assert torch.allclose(uniform, squared_distance(pred, target), rtol=1e-5)
    assert squared_distance(pred, target, mask=torch.zeros(3, 1, 6, 6)).eq(0).all()  # nothing counted: 0, not NaN


def test_negative_or_nonfinite_mask_values_are_refused():
    pred, target = _pair()
    for bad in (-1.0, float("nan"), float("inf")):
        mask = torch.ones(4, 1, 8, 8)
        mask[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="mask values"):
            closed_form_loss(pred, target, "kl", mask=mask)


def test_mask_shapes_one_channel_per_element_and_batch_broadcast():
    """Documented conventions: a per-element mask equal on every channel counts like its
    one-channel version; a (1, 1, H, W) mask applies to every sample, like the official
    broadcasting."""
    pred, target = _pair(shape=(4, 3, 8, 8))
    one = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    m = squared_distance(pred, target, mask=one)
    assert torch.allclose(m, _official_m(pred, target, one), rtol=1e-5)
    assert torch.allclose(squared_distance(pred, target, mask=one.expand(4, 3, 8, 8)), m, rtol=1e-6)
    assert torch.allclose(squared_distance(pred, target, mask=one[:, 0]), m, rtol=1e-6)
    shared = one[:1]
    assert torch.allclose(squared_distance(pred, target, mask=shared),
                          squared_distance(pred, target, mask=shared.expand(4, 1, 8, 8)), rtol=1e-6)
    with pytest.raises(ValueError, match="mask must have shape"):
        squared_distance(pred, target, mask=torch.ones(2, 1, 8, 8))


@pytest.mark.parametrize("divergence,exact", [
    ("squared_hellinger", lambda d2: torch.exp(-d2 / 8) / 4),          # d/dd2 of 2(1 - e^{-d2/8})
    ("alpha", lambda d2: torch.exp(-0.09 * d2 / 2) / 2),                 # alpha 0.1: c = 0.09
])
def test_saturating_closed_forms_keep_value_and_gradient_exact_far_out(divergence, exact):
    """float32 gradients of -2 expm1(-d2/8) through torch's expm1 derivative (expm1 + 1) lose
    their digits far out (4e-4 relative error at d2 = 80, 0 beyond ~150); ours stay exact."""
    alpha = 0.1 if divergence == "alpha" else None
    d2 = torch.tensor([1e-6, 1.0, 30.0, 80.0, 130.0, 200.0, 400.0, 600.0], requires_grad=True)
    value = fdu.gaussian_divergence(divergence, d2, alpha)
    (grad,) = torch.autograd.grad(value.sum(), d2)
    want_value = fdu.gaussian_divergence(divergence, d2.detach().double(), alpha)
    want_grad = exact(d2.detach().double())
    assert torch.allclose(value.double(), want_value, rtol=1e-6, atol=0)
    assert (grad > 0).all()
    assert torch.allclose(grad.double(), want_grad, rtol=1e-5, atol=0), (grad, want_grad)


def test_a_tiny_sigma_blames_sigma_not_the_inputs():
    pred, target = _pair()
    with pytest.raises(ValueError, match="larger sigma") as err:
        closed_form_loss(pred, target, "kl", sigma=1e-30)
    assert "NaN" not in str(err.value)


def test_the_overflow_advice_fits_the_normalization():
    pred, target = _pair(scale=3.0)
    with pytest.raises(ValueError) as err:
        closed_form_loss(pred, target, "pearson_chi2", sigma=0.5)          # already "mean"
    assert "larger sigma" in str(err.value) and "normalization" not in str(err.value)
    with pytest.raises(ValueError) as err:
        closed_form_loss(pred, target, "pearson_chi2", normalization="sum")
    assert "normalization='mean'" in str(err.value)
