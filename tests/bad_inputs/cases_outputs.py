"""Outputs that would overwrite an input, or a directory calmerge did not write: refused, --force
or not, before anything is written (io.outputs). Inputs are copies inside the case's scratch
directory, so a regression destroys nothing outside it."""

from __future__ import annotations

import json

from bad_inputs.cases import GOOD, OUT, Case, copy_model, eval_argv, items_file, sweep_argv


def _pair(tmp, pair):
    return copy_model(pair[0], tmp / "base"), copy_model(pair[1], tmp / "aligned")


def _merge(base, aligned, out, *extra: str) -> list[str]:
    return ["merge", "--base", str(base), "--aligned", str(aligned), "--lam", "0.5", "-o",
            str(out), "--quiet", *extra]


def _store(tmp, base, aligned):
    """A results store holding one run (no points needed: the paths are refused first).

    It lives beside the case's scratch tree, not in it: merely reading a WAL store makes SQLite
    create and remove its -wal/-shm files, which would change its folder's mtime, and the
    harness counts any change under the scratch tree as a write."""
    from calmerge.config import SweepConfig
    from calmerge.results.store import ResultStore

    home = tmp.parent.with_name(tmp.parent.name + "-store")
    home.mkdir(exist_ok=True)
    cfg = SweepConfig(base=str(base), aligned=str(aligned), data=str(items_file(tmp, [GOOD])),
                      store=str(home / "runs.db"), out=str(home / "report"))
    with ResultStore(home / "runs.db") as db:
        db.get_or_create_run("0" * 16, "run", cfg.model_dump(mode="json"), {})
    return home / "runs.db"


# ── merge -o ──
def merge_over_aligned(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return _merge(base, aligned, aligned, "--force")


def merge_yaml_over_base(tmp, pair):
    base, aligned = _pair(tmp, pair)
    y = tmp / "m.yml"
    y.write_text(f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {aligned}\n"
                 "parameters:\n  t: 0.5\n")
    return ["merge", str(y), "-o", str(base), "--force"]


def merge_over_tokenizer_source(tmp, pair):
    base, aligned = _pair(tmp, pair)
    tok = copy_model(pair[1], tmp / "tok")
    y = tmp / "m.yml"
    y.write_text(f"merge_method: linear\ntokenizer_source: {tok}\nmodels:\n"
                 f"  - model: {base}\n    parameters:\n      weight: 0.5\n"
                 f"  - model: {aligned}\n    parameters:\n      weight: 0.5\n")
    return ["merge", str(y), "-o", str(tok), "--force"]


def merge_into_parent_of_inputs(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return _merge(base, aligned, tmp, "--force")


def merge_inside_input(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return _merge(base, aligned, aligned / "merged")


def merge_over_foreign_dir(tmp, pair):
    project = tmp / "some-project"
    project.mkdir()
    (project / "notes.txt").write_text("years of work")
    return _merge(pair[0], pair[1], project, "--force")


def merge_through_symlink(tmp, pair):
    base, aligned = _pair(tmp, pair)
    link = tmp / "latest"
    link.symlink_to(aligned)
    return _merge(base, aligned, link, "--force")


def merge_dotdot_to_input(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return _merge(base, aligned, f"{base}/../aligned", "--force")


# ── export / report / results (the run's inputs, the store) ──
def export_over_base(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return ["export", "--store", str(_store(tmp, base, aligned)), "-o", str(base), "--force"]


def export_over_store_dir(tmp, pair):
    store = _store(tmp, pair[0], pair[1])
    return ["export", "--store", str(store), "-o", str(store.parent), "--force"]


def report_into_model(tmp, pair):
    base, aligned = _pair(tmp, pair)
    return ["report", "--store", str(_store(tmp, base, aligned)), "--out", str(aligned)]


def report_into_foreign_dir(tmp, pair):
    store = _store(tmp, pair[0], pair[1])
    project = tmp / "project"
    project.mkdir()
    (project / "index.html").write_text("my own page")
    return ["report", "--store", str(store), "--out", str(project)]


def results_over_store(tmp, pair):
    store = _store(tmp, pair[0], pair[1])
    return ["results", "--store", str(store), "-o", str(store)]


# ── eval --output ──
def _eval(model, data, output, *extra: str) -> list[str]:
    return [str(output) if a == OUT else a for a in eval_argv(model, data, *extra)]


def eval_over_data(tmp, pair):
    data = tmp / "items.json"
    data.write_text(json.dumps([GOOD, {**GOOD, "id": "b"}]))
    return _eval(pair[1], data, data)


def eval_into_model_config(tmp, pair):
    aligned = copy_model(pair[1], tmp / "aligned")
    return _eval(aligned, items_file(tmp, [GOOD]), aligned / "config.json")


def eval_diagram_over_prompts(tmp, pair):
    prompts = items_file(tmp, [{"id": "p", "prompt": "Say"}], "answers.reliability.png")
    return _eval(pair[1], items_file(tmp, [GOOD]), tmp / "answers.json", "--prompts", str(prompts))


def eval_into_adapter_base(tmp, pair):
    base = copy_model(pair[0], tmp / "base")
    adapter = tmp / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": 4, "lora_alpha": 8,
         "target_modules": ["q_proj"]}))
    return _eval(adapter, items_file(tmp, [GOOD]), base / "results.json")


# ── sweep --store / --out ──
def sweep_store_is_data(tmp, pair):
    data = items_file(tmp, [GOOD])
    argv = sweep_argv(pair, data)
    argv[argv.index("--store") + 1] = str(data)
    return argv


def sweep_store_inside_model(tmp, pair):
    base, aligned = _pair(tmp, pair)
    argv = sweep_argv((base, aligned), items_file(tmp, [GOOD]))
    argv[argv.index("--store") + 1] = str(aligned / "runs.db")
    return argv


def sweep_report_holds_data(tmp, pair):
    argv = sweep_argv(pair, items_file(tmp, [GOOD]))
    argv[argv.index("--out") + 1] = str(tmp)
    return argv


CASES: list[Case] = [
    Case("merge-over-aligned", "`merge -o <the aligned model> --force`", merge_over_aligned,
         "is the input model"),
    Case("merge-yaml-over-base", "`merge m.yml -o <its base_model> --force`", merge_yaml_over_base,
         "is the base model"),
    Case("merge-over-tokenizer-source", "`merge -o <its tokenizer_source> --force`",
         merge_over_tokenizer_source, "is the tokenizer_source"),
    Case("merge-contains-inputs", "`merge -o <a folder holding the inputs> --force`",
         merge_into_parent_of_inputs, "contains the"),
    Case("merge-inside-input", "`merge -o <the aligned model>/merged`", merge_inside_input,
         "is inside the input model"),
    Case("merge-over-foreign-dir", "`merge -o <a directory calmerge did not write> --force`",
         merge_over_foreign_dir, "not written by calmerge"),
    Case("merge-through-symlink", "`merge -o <a symlink to an input> --force`",
         merge_through_symlink, "is the input model"),
    Case("merge-dotdot-to-input", "`merge -o <base>/../aligned --force`", merge_dotdot_to_input,
         "is the input model"),
    Case("export-over-base", "`export -o <the run's base model> --force`", export_over_base,
         "is the base model"),
    Case("export-over-store-dir", "`export -o <the folder holding the store> --force`",
         export_over_store_dir, "contains the results store"),
    Case("report-into-model", "`report --out <the run's aligned model>`", report_into_model,
         "is the aligned model"),
    Case("report-into-foreign-dir", "`report --out <a non-empty folder calmerge did not write>`",
         report_into_foreign_dir, "not written by calmerge"),
    Case("results-over-store", "`results --store runs.db -o runs.db`", results_over_store,
         "would overwrite the results store"),
    Case("eval-over-data", "`eval --data items.json --output items.json`", eval_over_data,
         "is the data"),
    Case("eval-into-model-config", "`eval M --output M/config.json`", eval_into_model_config,
         "is inside the model"),
    Case("eval-diagram-over-prompts", "`eval`'s `.reliability.png` would be the prompts file",
         eval_diagram_over_prompts, "is the prompts file"),
    Case("eval-into-adapter-base", "`eval <LoRA adapter> --output <its base>/results.json`",
         eval_into_adapter_base, "is inside the base of the adapter model"),
    Case("sweep-store-is-data", "`sweep --store <the data file>`", sweep_store_is_data,
         "is the test data"),
    Case("sweep-store-inside-model", "`sweep --store <the aligned model>/runs.db`",
         sweep_store_inside_model, "is inside the aligned model"),
    Case("sweep-report-holds-data", "`sweep --out <the folder holding the data>`",
         sweep_report_holds_data, "contains the test data"),
]
