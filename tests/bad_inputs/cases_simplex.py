"""Bad inputs of sweeps over several models (`--models`) and of picking a simplex point."""

from __future__ import annotations

from bad_inputs.cases import GOOD, OUT, Case, copy_model, items_file, make_model


def _argv(tmp, *models: str, extra: tuple[str, ...] = ()) -> list[str]:
    data = items_file(tmp, [GOOD, {**GOOD, "id": "b"}])
    return ["sweep", "--models", *models, "--data", str(data), "--store", f"{OUT}/runs.db",
            "--out", OUT, "--quiet", *extra]


def two_models(tmp, pair):
    return _argv(tmp, f"base={pair[0]}", f"dpo={pair[1]}")


def duplicate_name(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"sft={third}")


def same_checkpoint_twice(tmp, pair):
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={pair[1]}")


def not_name_path(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"={third}")


def missing_model(tmp, pair):
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={tmp / 'no-such-model'}")


def other_architecture(tmp, pair):
    qwen = make_model(tmp / "qwen", seed=4, arch="qwen2")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={qwen}")


def ties_family(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={third}",
                 extra=("--family", "ties"))


def step_not_dividing(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={third}",
                 extra=("--simplex-step", "0.3"))


def too_many_points(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={third}",
                 extra=("--simplex-step", "0.001"))


def models_and_base(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={third}",
                 extra=("--aligned", str(pair[0])))  # the last model is the aligned one


def extrapolate_inside(tmp, pair):
    third = copy_model(pair[1], tmp / "third")
    return _argv(tmp, f"base={pair[0]}", f"sft={pair[1]}", f"dpo={third}",
                 extra=("--extrapolate", "0.5"))


def _simplex_store(tmp, pair):
    """A store holding one finished simplex point (base .5 · sft .5 · dpo 0), no model run."""
    import json

    from calmerge.coords import weights_of
    from calmerge.results.store import ResultStore

    third = copy_model(pair[1], tmp / "third")
    data = items_file(tmp, [GOOD])
    config = {"models": [{"name": "base", "path": str(pair[0])}, {"name": "sft", "path": str(pair[1])},
                         {"name": "dpo", "path": str(third)}], "data": str(data)}
    # beside the test's scratch tree: reading a WAL store creates and removes -wal/-shm files
    store = tmp.parent.with_name(tmp.parent.name + "-soup-store") / "soup.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    db = ResultStore(store)
    run = db.get_or_create_run("h", "soup", json.loads(json.dumps(config)), {})
    w = weights_of([("base", 0.5), ("sft", 0.5), ("dpo", 0.0)])
    db.add_points(run.id, "linear", [w])
    pid = db.claim(run.id, "linear", w)
    db.finish_point(pid, metrics={"test": {"acc": (0.5, 0.4, 0.6)}}, predictions={})
    db.close()
    return store


def weights_not_summing(tmp, pair):
    store = _simplex_store(tmp, pair)
    return ["export", "--store", str(store), "--pick", "weights=base:0.5,sft:0.6,dpo:0",
            "-o", OUT]


def weights_unknown_model(tmp, pair):
    store = _simplex_store(tmp, pair)
    return ["export", "--store", str(store), "--pick", "weights=base:0.5,rlhf:0.5,dpo:0",
            "-o", OUT]


def weights_model_left_out(tmp, pair):
    store = _simplex_store(tmp, pair)
    return ["export", "--store", str(store), "--pick", "weights=base:0.5,sft:0.5", "-o", OUT]


CASES = [
    Case("simplex-two-models", "--models with two models", two_models, "needs at least 3"),
    Case("simplex-duplicate-name", "--models names one model twice", duplicate_name, "model name 'sft' is given twice"),
    Case("simplex-same-checkpoint", "--models lists one checkpoint under two names", same_checkpoint_twice, "'sft' and 'dpo' are the same checkpoint"),
    Case("simplex-not-name-path", "--models entry without a name", not_name_path, "is not NAME=PATH"),
    Case("simplex-missing-model", "--models names a folder that is not there", missing_model, "no-such-model"),
    Case("simplex-other-architecture", "--models mixes Llama and Qwen2 checkpoints", other_architecture, "qwen2"),
    Case("simplex-ties-family", "--family ties over several models", ties_family, "family 'ties' has no simplex form"),
    Case("simplex-step-not-dividing", "--simplex-step 0.3 (does not divide 1)", step_not_dividing, "does not divide 1"),
    Case("simplex-too-many-points", "--simplex-step 0.001 over three models", too_many_points, "501,501 points"),
    Case("simplex-models-and-base", "--models and --base together", models_and_base, "'models' and 'aligned' are both given"),
    Case("simplex-extrapolate-inside", "--extrapolate 0.5 on a simplex sweep", extrapolate_inside, "each must be > 1"),
    Case("simplex-weights-not-summing", "export weights=… of a linear point that sum to 1.1", weights_not_summing, "the weights sum to 1.1"),
    Case("simplex-weights-unknown-model", "export weights=… naming a model the run lacks", weights_unknown_model, "'rlhf' is not a model of this run"),
    Case("simplex-weights-model-left-out", "export weights=… leaving a model out", weights_model_left_out, "gives no weight for dpo"),
]
