"""Configs: run identity derived from the fields, and every choice validated before any work."""

from __future__ import annotations

import pytest

from calmerge.config import IDENTITY_EXCLUDED, MergeConfig, SweepConfig, validate
from calmerge.errors import ConfigError

BASE = {"base": "b", "aligned": "a", "data": "d.jsonl"}

#: the identity of a run: the 14 settings calmerge 0.1 listed by hand, plus the sweep's
#: generation stop ids (they change what every sample is). Derived from the fields now, it
#: changes only when a field is added — then this test makes its author decide: part of the
#: identity (add it here) or excluded with a reason (IDENTITY_EXCLUDED).
IDENTITY = {
    "stop_token_ids",
    "mode", "prompt_template", "prompt_format", "fewshot", "dtype", "samples", "temperature",
    "top_p", "max_new_tokens", "embed_diversity", "seed", "n_boot", "n_bins", "density",
}


def test_identity_is_every_field_not_excluded():
    cfg = SweepConfig(**BASE)
    fields = set(SweepConfig.model_fields)
    assert set(IDENTITY_EXCLUDED) <= fields, "an exclusion names a field that no longer exists"
    assert all(reason.strip() for reason in IDENTITY_EXCLUDED.values())
    # a single-task sweep keeps the identity stores written before multi-task sweeps carry
    assert set(cfg.eval_identity()) == fields - set(IDENTITY_EXCLUDED) - {"aggregate"}
    assert set(cfg.eval_identity()) == IDENTITY
    multi = SweepConfig(**{**BASE, "data": ["a.jsonl", {"data": "b.jsonl", "mode": "letter"}]})
    assert set(multi.eval_identity()) == fields - set(IDENTITY_EXCLUDED) | {"tasks"}


def test_task_settings_inherit_and_change_the_run():
    from calmerge.sweep.runner import config_hash, plan_identity

    cfg = SweepConfig(**{**BASE, "prompt_template": "{question}",
                         "data": ["a.jsonl", {"data": "b.jsonl", "mode": "letter", "name": "b"}]})
    a, b = cfg.tasks()
    assert (a.mode, a.prompt_template, b.mode, b.prompt_template, b.name) == (
        "loglik", "{question}", "letter", "{question}", "b")

    def run_hash(c):
        return config_hash(plan_identity(c, {"base": "x", "aligned": "y"}, {"test": "z"}))

    other = SweepConfig(**{**BASE, "prompt_template": "{question}",
                           "data": ["a.jsonl", {"data": "b.jsonl", "name": "b"}]})
    assert run_hash(cfg) != run_hash(other)  # a task's own mode is part of the run
    assert run_hash(cfg) != run_hash(cfg.model_copy(update={"aggregate": "micro"}))


@pytest.mark.parametrize("field,value", [("n_bins", 15), ("temperature", 0.7), ("density", 0.3)])
def test_a_changed_setting_is_a_new_run(field, value):
    from calmerge.sweep.runner import config_hash, plan_identity

    def run_hash(cfg):
        return config_hash(plan_identity(cfg, {"base": "x", "aligned": "y"}, {"test": "z"}))

    assert run_hash(SweepConfig(**BASE)) != run_hash(SweepConfig(**BASE, **{field: value}))
    # settings that only choose which points are computed or where files go are not identity
    assert run_hash(SweepConfig(**BASE)) == run_hash(
        SweepConfig(**BASE, grid=(0, 1), out="elsewhere", pick="knee")
    )


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("families", ["linear", "slurp"], "did you mean 'slerp'"),
        ("pick", "knea", "did you mean 'knee'"),
        ("pick", "lambda=abc", "lambda"),
        ("objectives", ["acc", "embed_div"], "did you mean 'embed_distance'"),
        ("objectives", [], "no objectives"),
    ],
)
def test_sweep_choices_are_refused_when_the_config_is_built(key, value, expect):
    with pytest.raises(ConfigError) as err:
        validate(SweepConfig, {**BASE, key: value}, "sweep.yml")
    line = err.value.one_line()
    assert line.startswith(f"sweep.yml: '{key}'") and expect in line, line


def test_lambda_pick_rules_and_registered_names_are_accepted():
    cfg = SweepConfig(**BASE, pick="slerp:lambda=0.5", families=("linear", "slerp", "ties"),
                      objectives=("acc", "ece", "embed_distance"))
    assert cfg.families == ("linear", "slerp", "ties")


def test_merge_method_is_checked_when_the_config_is_built():
    with pytest.raises(ConfigError) as err:
        validate(MergeConfig, {"method": "lineer", "models": ["m"]}, "merge.yml")
    assert "unknown merge method 'lineer'" in str(err.value)
    assert err.value.hint == "did you mean 'linear'?"


def test_eval_and_sweep_sample_with_the_same_defaults():
    """λ=0 of a sweep must equal `calmerge eval` of the base with default flags: one default
    per generation setting, shared (sweep's max_new_tokens used to be 24 against eval's 32)."""
    from calmerge.config import EvalConfig

    for name in ("samples", "temperature", "top_p", "max_new_tokens", "stop_token_ids", "seed"):
        assert EvalConfig.model_fields[name].default == SweepConfig.model_fields[name].default, name
