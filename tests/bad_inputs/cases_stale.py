"""Bad inputs that would make a verdict claim something untrue: λ "chosen on dev" when dev is
the test data, an export of a run whose models have changed since it was measured."""

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
