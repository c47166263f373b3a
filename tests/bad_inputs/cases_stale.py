"""Bad inputs that would make calmerge say something untrue — λ "chosen on dev" when dev is the
test data, a model card describing weights that changed since they were measured — and the
`diff` chart pointed at an input."""

from __future__ import annotations

import shutil

from bad_inputs.cases import GOOD, OUT, Case, items_file, sweep_argv


def dev_is_data(tmp, pair):
    data = items_file(tmp, [GOOD, {**GOOD, "id": "b"}])
    return sweep_argv(pair, data, "--dev", str(data))


def dev_is_a_copy_of_data(tmp, pair):
    data = items_file(tmp, [GOOD, {**GOOD, "id": "b"}])
    copy = tmp / "dev.jsonl"
    shutil.copyfile(data, copy)
    return sweep_argv(pair, data, "--dev", str(copy))


CASES = [
    Case("dev-is-data", "--dev is the --data file", dev_is_data, "holds the same items as --data"),
    Case("dev-copy-of-data", "--dev is a copy of the --data file", dev_is_a_copy_of_data, "holds the same items"),
]


def export_after_the_model_changed(tmp, pair):
    """A real (tiny) sweep, then the aligned model is re-trained in place: its export would
    carry a model card whose numbers describe other weights."""
    from bad_inputs.cases import copy_model, edit_weights
    from calmerge import api
    from calmerge.config import SweepConfig

    base, aligned = pair[0], copy_model(pair[1], tmp / "aligned")
    # beside the test's scratch tree: merely reading a WAL store creates and removes SQLite's
    # -wal/-shm files, which the "nothing written" check would see
    store = tmp.parent.with_name(tmp.parent.name + "-stale-store") / "runs.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    api.sweep(SweepConfig(base=str(base), aligned=str(aligned), data=str(items_file(tmp, [GOOD])),
                          grid=(0.0, 1.0), refine=False, n_boot=0, store=str(store),
                          out=str(store.parent / "report"), device="cpu"), progress=False)
    edit_weights(aligned, lambda t: t["model.norm.weight"].add_(0.5))
    return ["export", "--store", str(store), "--pick", "lambda=1", "-o", OUT]


CASES.append(Case("export-after-model-changed", "Export of a run whose aligned model changed since", export_after_the_model_changed, "changed since run"))


def diff_png_over_a_model_file(tmp, pair):
    from bad_inputs.cases import copy_model

    aligned = copy_model(pair[1], tmp / "aligned")
    return ["diff", str(pair[0]), str(aligned), "--png", str(aligned / "model.safetensors")]


CASES.append(Case("diff-png-over-model", "`diff --png` pointed at a model's weights", diff_png_over_a_model_file, "--png"))
