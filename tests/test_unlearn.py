"""The unlearning engine on the 2-D toy: erasure, preservation, checkpoints, failures, no leaks."""
import copy

import pytest
import torch

from fdu import toy2d
from fdu.checkpoints import load_checkpoint
from fdu.critics import MLPCritic
from fdu.unlearn import (
    NonFiniteLossError,
    Task,
    UnlearnConfig,
    _timesteps,
    closed_form_expectation,
    fit_critic,
    frozen_output,
    unlearn,
)

WORLD = toy2d.World()


@pytest.fixture(scope="module")
def toy():
    model, scheduler = toy2d.train_denoiser(WORLD, steps=600, progress=False, seed=0)
    before = toy2d.reference_samples(model, scheduler, WORLD, n=300)
    return model, scheduler, before


def fresh(toy, anchor="dog", **kw):
    model, scheduler, _ = toy
    return toy2d.unlearning_task(copy.deepcopy(model), scheduler, WORLD, "cat", anchor, anchor_pool=500,
                                 **kw)


def in_target(task):
    x = toy2d.sample(task.model, task.scheduler, WORLD, "cat", 300, seed=3)
    return float(WORLD.in_region(x, "cat").float().mean())


def test_the_toy_model_samples_each_concept(toy):
    _, _, before = toy
    for concept in WORLD.concepts:
        assert float(WORLD.in_region(before[concept], concept).float().mean()) > 0.8
    animal = before["animal"]
    assert all(float(WORLD.in_region(animal, c).float().mean()) > 0.15 for c in ("cat", "dog", "fox"))


@pytest.mark.parametrize("divergence", ["kl", "squared_hellinger", "jensen_shannon"])
def test_closed_form_erases_and_preserves(toy, divergence):
    task = fresh(toy)
    assert in_target(task) > 0.8
    unlearn(task, UnlearnConfig(divergence=divergence, steps=150, batch_size=128, lr=1e-2, progress=False))
    assert in_target(task) < 0.2
    ev = toy2d.evaluate(task.model, task.scheduler, WORLD, "cat", "dog", before=toy[2], n=300, boot=10)
    # stated tolerance: other concepts move by an energy distance < 0.25 (cat -> dog is ~ 2.5)
    assert ev["preservation"]["value"] < 0.25
    assert ev["to_anchor"]["value"] < 0.25


@pytest.mark.parametrize("divergence", ["kl", "squared_hellinger"])
def test_variational_erases(toy, divergence):
    task = fresh(toy)
    torch.manual_seed(0)
    res = unlearn(task, UnlearnConfig(divergence=divergence, variational=True, steps=300, batch_size=128,
                                      lr=1e-4, critic_lr=1e-2, critic_warmup=20, progress=False),
                  critic=MLPCritic(2, context_dim=2))
    assert in_target(task) < 0.3
    assert len(res.history["estimate"]) == 300


def _run(toy, tmp_path, variational, steps, resume=None, name="a"):
    task = fresh(toy)
    torch.manual_seed(1)
    critic = MLPCritic(2, context_dim=2) if variational else None
    cfg = UnlearnConfig(divergence="squared_hellinger", variational=variational, steps=steps, batch_size=32,
                        lr=1e-3, critic_warmup=3, checkpoint_every=5, checkpoint_dir=str(tmp_path / name),
                        progress=False)
    res = unlearn(task, cfg, critic=critic, resume_from=resume)
    return task, critic, res


@pytest.mark.parametrize("variational", [False, True])
def test_resume_is_bit_identical(toy, tmp_path, variational):
    whole, critic_a, res_a = _run(toy, tmp_path, variational, 12, name="whole")
    _run(toy, tmp_path, variational, 5, name="part")  # stops at step 5, as if interrupted
    resumed, critic_b, res_b = _run(toy, tmp_path, variational, 12,
                                    resume=tmp_path / "part" / "step_5.safetensors", name="part")
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    if variational:
        for a, b in zip(critic_a.state_dict().values(), critic_b.state_dict().values()):
            assert torch.equal(a, b)
    assert res_a.history == res_b.history
    tensors, meta = load_checkpoint(tmp_path / "whole" / "step_10.safetensors")
    assert meta["step"] == 10 and "rng/generator" in tensors and len(meta["history"]["grad_l1_mean"]) == 10
    assert (tmp_path / "whole" / "history.json").exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(toy, tmp_path):
    task = fresh(toy)
    calls = {"n": 0}
    forward = task.forward

    def poisoned(model, x_t, t, cond):
        calls["n"] += 1
        out = forward(model, x_t, t, cond)
        return out * float("nan") if calls["n"] > 2 * 7 else out  # two calls per step: NaN from step 8

    task.forward = poisoned
    before = [p.detach().clone() for p in task.trained_parameters()]
    cfg = UnlearnConfig(steps=20, batch_size=16, checkpoint_every=5, checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(NonFiniteLossError, match="step_5.safetensors"):
        unlearn(task, cfg)
    tensors, meta = load_checkpoint(tmp_path / "step_5.safetensors")
    assert meta["step"] == 5 and not (tmp_path / "step_10.safetensors").exists()
    assert all(torch.isfinite(p).all() for p in task.trained_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, task.trained_parameters()))


def test_chi2_overflow_is_reported_not_nan(toy):
    task = fresh(toy)
    cfg = UnlearnConfig(divergence="pearson_chi2", sigma=0.02, normalization="sum", steps=3, progress=False)
    with pytest.raises(NonFiniteLossError, match="overflows"):
        unlearn(task, cfg)


def test_variational_step_never_leaks_gradients(toy):
    """Hooks count every gradient that reaches each player's parameters: the critic gets one per
    step (its own loss), the model one per step after warm-up (its own loss), never more."""
    task = fresh(toy)
    critic = MLPCritic(2, context_dim=2)
    counts = {"critic": 0, "model": 0}
    for p in critic.parameters():
        p.register_hook(lambda g: counts.__setitem__("critic", counts["critic"] + 1))
    params = task.trained_parameters()
    for p in params:
        p.register_hook(lambda g: counts.__setitem__("model", counts["model"] + 1))
    n_critic = len(list(critic.parameters()))
    unlearn(task, UnlearnConfig(divergence="jensen_shannon", variational=True, steps=6, critic_warmup=2,
                                batch_size=16, progress=False), critic=critic)
    assert counts["critic"] == 6 * n_critic
    assert counts["model"] == 4 * len(params)


def test_reference_is_the_original_model(toy):
    model, scheduler, _ = toy
    task = fresh(toy)
    unlearn(task, UnlearnConfig(steps=20, lr=1e-2, progress=False))
    x = torch.randn(8, 2)
    t = torch.full((8,), 10)
    ids = toy2d.prompt_ids(WORLD, "dog", 8)
    assert torch.equal(frozen_output(task, x, t, "dog"), model(x, t, ids).detach())
    cat = toy2d.prompt_ids(WORLD, "cat", 8)
    assert not torch.equal(task.model(x, t, cat), model(x, t, cat))


def test_variational_estimate_and_closed_form_expectation(toy):
    task = fresh(toy)
    cfg = UnlearnConfig(divergence="kl", steps=150, batch_size=256, critic_lr=1e-2, sigma=1.0, progress=False)
    exact = closed_form_expectation(task, cfg)
    torch.manual_seed(0)
    est = fit_critic(task, MLPCritic(2, context_dim=2), cfg)
    assert exact > 0.1
    assert 0 < sum(est[-30:]) / 30 < 1.5 * exact  # a (noisy) lower bound approaching the exact value
    assert all(torch.equal(a, b) for a, b in zip(task.model.parameters(), toy[0].parameters()))


def test_timestep_options():
    gen = torch.Generator().manual_seed(0)
    t = _timesteps(UnlearnConfig(timestep_range=(10, 20)), 500, 100, gen)
    assert int(t.min()) >= 10 and int(t.max()) < 20
    w = [0.0] * 100
    w[42] = 1.0
    assert set(_timesteps(UnlearnConfig(timestep_probs=w), 50, 100, gen).tolist()) == {42}


@pytest.mark.parametrize("kw,match", [
    ({"divergence": "nope"}, "valid"), ({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"),
    ({"optimizer": "rmsprop"}, "adam"), ({"critic_input": "pixels"}, "reverse_step"),
    ({"timestep_range": (50, 200)}, "timestep_range"), ({"checkpoint_every": 5}, "checkpoint_dir"),
    ({"variational": True}, "critic"), ({"sigma": 0.0}, "sigma"),
])
def test_bad_config_gets_a_clear_error(toy, kw, match):
    with pytest.raises(ValueError, match=match):
        unlearn(fresh(toy), UnlearnConfig(progress=False, **kw))


def test_bad_task_and_resume_errors(toy, tmp_path):
    task = fresh(toy)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        unlearn(task, UnlearnConfig(progress=False), resume_from=tmp_path / "missing.safetensors")
    empty = Task(model=torch.nn.Linear(2, 2).requires_grad_(False), forward=task.forward,
                 sample_anchor_x0=task.sample_anchor_x0, scheduler=task.scheduler)
    with pytest.raises(ValueError, match="no parameters"):
        unlearn(empty, UnlearnConfig(progress=False))
    with pytest.raises(ValueError, match="valid prompts"):
        WORLD.index("unicorn")


def test_preservation_term_holds_the_other_concepts(toy):
    drift = {}
    for weight in (0.0, 10.0):
        task = fresh(toy, preserve=("fox", "tree", "house"))
        res = unlearn(task, UnlearnConfig(steps=100, lr=1e-2, batch_size=64, preservation_weight=weight,
                                          progress=False))
        assert ("preservation" in res.history) == (weight > 0)
        drift[weight] = toy2d.output_drift(task, WORLD, ["fox", "tree", "house"], n=256)
    assert drift[10.0] < drift[0.0]


def test_frontier_summaries():
    pts = [{"lr": 1, "failed": False, "in_target": 0.05, "drift": 0.04},
           {"lr": 2, "failed": False, "in_target": 0.02, "drift": 0.07},
           {"lr": 3, "failed": False, "in_target": 0.01, "drift": 0.30},
           {"lr": 4, "failed": False, "in_target": 0.50, "drift": 0.01},
           {"lr": 5, "failed": True, "in_target": None, "drift": None}]
    assert toy2d.least_damage_when_erased(pts, 0.1) == 0.04
    assert toy2d.robust_learning_rates(pts, 0.1) == 2
    assert toy2d.least_damage_when_erased(pts[3:], 0.1) is None and toy2d.robust_learning_rates(pts[3:], 0.1) == 0
