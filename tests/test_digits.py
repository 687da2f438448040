"""The digits scale: the judge, the base model, and one unlearning run (models cached on disk)."""
import copy

import pytest
import torch

from fdu import digits
from fdu.unlearn import UnlearnConfig, unlearn


@pytest.fixture(scope="module")
def base():
    judge, accuracy = digits.train_judge(progress=False)
    model, scheduler = digits.train_model(progress=False)
    return judge, accuracy, model, scheduler


def test_the_judge_is_accurate(base):
    _, accuracy, _, _ = base
    assert accuracy >= 0.97


def test_base_model_samples_are_recognised_and_not_copies(base):
    judge, _, model, scheduler = base
    _, _, x_test, _ = digits.load()
    x_train, _, _, _ = digits.load()
    for d in range(10):
        x = digits.sample(model, scheduler, digits.prompts_for(d), 50, seed=d)
        assert float((judge.predict(x) == d).float().mean()) >= 0.95, d
    x = digits.sample(model, scheduler, digits.prompts_for(3), 50, seed=0)
    to_train = torch.cdist(x.flatten(1), x_train.flatten(1)).min(1).values.median()
    test_to_train = torch.cdist(x_test.flatten(1), x_train.flatten(1)).min(1).values.median()
    assert to_train > 0.5 * test_to_train  # as far from the training set as real held-out images are


def test_unlearning_erases_the_target_and_keeps_the_rest(base):
    judge, _, model, scheduler = base
    task = digits.unlearning_task(copy.deepcopy(model), scheduler, 3, "near", anchor_pool=400)
    unlearn(task, UnlearnConfig(divergence="kl", steps=300, batch_size=64, lr=3e-3, progress=False))
    acc = digits.accuracies(task.model, scheduler, judge, 3, anchor_digit=8, n=50)
    assert acc["erased_accuracy"] <= 0.1
    assert acc["retained_accuracy"] >= 0.9 and acc["erased_as_anchor"] >= 0.5


def test_rerun_with_the_same_seed_is_identical(base):
    _, _, model, scheduler = base
    params = []
    for _ in range(2):
        task = digits.unlearning_task(copy.deepcopy(model), scheduler, 1, "superclass", anchor_pool=64)
        unlearn(task, UnlearnConfig(divergence="squared_hellinger", steps=10, batch_size=16, progress=False))
        params.append([p.detach().clone() for p in task.model.kv_parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))
    assert len(params[0]) == 6  # to_k and to_v of three blocks


def test_bad_input():
    with pytest.raises(ValueError, match="0..9"):
        digits.prompts_for(12)
    with pytest.raises(ValueError, match="near"):
        digits.anchor_prompts("sideways", 3)
