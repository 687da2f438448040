"""One source of truth for the options: the dataclass fields build the command line."""
from dataclasses import MISSING, dataclass, fields

import pytest

from fdu.cli import build_parser, main
from fdu.options import add_arguments, from_args, option
from fdu.sd.train import RunConfig
from fdu.unlearn import UnlearnConfig

FROM_PYTHON_ONLY = {"timestep_probs", "checkpoint_dir", "log_every"}


def _unlearn_actions():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["unlearn"]._actions if a.dest != "help"}


def test_every_field_is_a_flag_with_its_help_and_default_and_every_flag_a_field():
    actions = _unlearn_actions()
    for f in fields(RunConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
        if not f.metadata["cli"]:
            assert f.name in FROM_PYTHON_ONLY, f"{f.name} is hidden from the command line"
            continue
        action = actions.pop(f.name)
        assert action.help == f.metadata["help"]
        if f.default is MISSING:
            assert action.required
        else:
            assert action.default == f.default, f.name
        if f.metadata["choices"] is not None:
            assert tuple(action.choices) == tuple(f.metadata["choices"])
    assert not actions, f"flags without a field: {sorted(actions)}"
    # the loop's own options all reach the command line (they did not before)
    assert {f.name for f in fields(UnlearnConfig)} - FROM_PYTHON_ONLY <= {f.name for f in fields(RunConfig)}


def test_parsed_flags_become_the_config():
    args = build_parser().parse_args([
        "unlearn", "--model", "m", "--target", "van gogh", "--anchor", "", "--output", "o",
        "--max-grad-norm", "1.5", "--critic-input", "outputs", "--preservation-weight", "0.2",
        "--preserve", "monet", "picasso", "--timestep-range", "10", "20", "--params", "attention",
        "--no-hflip", "--quiet", "--omega", "2", "--optimizer", "sgd"])
    cfg = from_args(RunConfig, args)
    assert (cfg.max_grad_norm, cfg.critic_input, cfg.preservation_weight) == (1.5, "outputs", 0.2)
    assert cfg.preserve == ("monet", "picasso") and cfg.timestep_range == (10, 20)
    assert (cfg.group, cfg.hflip, cfg.progress, cfg.omega, cfg.optimizer) == ("attention", False, False, 2.0, "sgd")
    assert cfg.checkpoint_dir.endswith("checkpoints")
    loop = cfg.loop_config()
    assert type(loop) is UnlearnConfig and loop.max_grad_norm == 1.5 and loop.steps == cfg.steps == 500


def test_a_new_option_is_added_in_one_place():
    @dataclass(kw_only=True)
    class Extended(RunConfig):
        warmup_steps: int = option(7, "a new option, for this test", group="training")

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, Extended)
    assert "a new option, for this test" in parser.format_help()
    args = parser.parse_args(["--model", "m", "--target", "t", "--anchor", "a", "--output", "o",
                              "--warmup-steps", "3"])
    assert from_args(Extended, args).warmup_steps == 3


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "lr must be"), (["--sigma", "0"], "sigma must be"),
    (["--max-grad-norm", "0"], "max_grad_norm must be"), (["--divergence", "bogus"], "valid names"),
    (["--preservation-weight", "1"], "--preserve"), (["--critic-warmup", "-1"], "critic_warmup"),
    (["--anchor-steps", "0"], "anchor_steps"),
])
def test_bad_values_are_refused_before_the_model_is_touched(flags, message, tmp_path, capsys):
    code = main(["unlearn", "--model", str(tmp_path / "no-such-model"), "--target", "van gogh",
                 "--anchor", "painting", "--output", str(tmp_path / "out"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-model" not in err
    assert not (tmp_path / "out").exists()
