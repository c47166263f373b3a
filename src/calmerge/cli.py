"""The `calmerge` command line: a thin skin over `calmerge.api`.

Each command parses its flags, calls one API function and renders the result with rich.
User mistakes (`CalmergeError`) become one line on stderr plus a hint, exit code 2.

The file is divided into sections, one per subsystem; each command lives in its section.
No `from __future__ import annotations` here: typer reads every command's annotations at
start-up, and evaluating them from strings would cost each invocation ~50 ms.
"""

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # recent typer vendors its own click; older ones use the click package
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click
from rich.console import Console

from calmerge.errors import CalmergeError, ConfigError

app = typer.Typer(
    name="calmerge",
    help="Measure the alignment tax (accuracy, calibration, diversity) and buy it back by merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


# ───────────────────────────── merge engine (inspect, diff, merge) ─────────────────────────────

PickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow pickled .bin weights (runs their code).")
]
RemoteOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow models whose config needs custom code.")
]


def _warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _parse_lambda(text: str) -> float:
    from calmerge.errors import ConfigError

    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--lam '{text}': not a number", "use e.g. --lam 0.6 (any real λ)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"--lam '{text}': must be finite", "use e.g. --lam 0.6")
    return value


def _parse_ids(text: str | None) -> tuple[int, ...] | None:
    from calmerge.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--stop-ids '{text}': not a list of token ids", "use e.g. 2,6") from None


@app.command("inspect")
def inspect_cmd(
    model: Annotated[str, typer.Argument(help="Model directory or hub id.")],
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Architecture, parameters, dtype, vocabulary and chat template of a model."""
    from rich.table import Table

    from calmerge import api

    info = api.inspect_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        if key == "parameters":
            value = f"{value:,} ({value / 1e6:.1f} M)"
        elif key == "dtypes":
            value = ", ".join(f"{d}: {n:,}" for d, n in value.items())
        table.add_row(f"[bold]{key}[/]", str(value))
    console.print(table)


@app.command("diff")
def diff_cmd(
    base: Annotated[str, typer.Argument(help="Pre-alignment model (dir or hub id).")],
    aligned: Annotated[str, typer.Argument(help="Aligned model (dir or hub id).")],
    png: Annotated[Path | None, typer.Option("--png", help="Also write a bar chart here.")] = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Per-layer relative weight change ‖θ_aligned − θ_base‖ / ‖θ_base‖."""
    from rich.table import Table

    from calmerge import api

    deltas = api.diff_models(
        base, aligned, png=png, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    table = Table("group", "params", "‖Δ‖", "‖θ_base‖", "relative ‖Δ‖")
    for d in deltas:
        table.add_row(d.group, f"{d.params:,}", f"{d.delta_norm:.4g}", f"{d.base_norm:.4g}",
                      f"{d.relative:.4f}")
    console.print(table)
    if png is not None:
        console.print(f"wrote {png}")


@app.command("merge")
def merge_cmd(
    config: Annotated[
        Path | None, typer.Argument(help="Merge YAML (mergekit schema or calmerge's).")
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output model directory.")] = None,
    base: Annotated[str | None, typer.Option(help="Base model (with --aligned and --lam).")] = None,
    aligned: Annotated[str | None, typer.Option(help="Aligned model.")] = None,
    lam: Annotated[
        str | None, typer.Option("--lam", help="θ = θ_base + λ(θ_aligned − θ_base); any real λ.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="λ-family for --base/--aligned merges: linear, slerp, ties, ….")
    ] = "linear",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
    compute_dtype: Annotated[
        str | None, typer.Option(help="Arithmetic dtype (default float32).")
    ] = None,
    out_dtype: Annotated[
        str | None, typer.Option(help="Written dtype (default: the aligned model's).")
    ] = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Merge two models at λ, or run a merge YAML; written atomically to -o."""
    from calmerge import api
    from calmerge.errors import ConfigError

    if out is None:
        raise ConfigError("merge: -o/--out is required", "e.g. -o merged/")
    pair = (base, aligned, lam)
    if config is not None and any(v is not None for v in pair):
        raise ConfigError("merge: give a config file or --base/--aligned/--lam, not both",
                          "drop one of them")
    if config is None:
        if any(v is None for v in pair):
            raise ConfigError("merge: --base, --aligned and --lam are required without a config",
                              "or pass a merge YAML")
        cfg = api.pair_config(base, aligned, _parse_lambda(lam), method=method)
    else:
        cfg = api.load_merge_config(config)
    result = api.merge(
        cfg, out, force=force, max_shard_size=max_shard_size, compute_dtype=compute_dtype,
        out_dtype=out_dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        device=device, quiet=quiet, on_warning=_warn,
    )
    console.print(
        f"wrote [bold]{result.path}[/] ({result.bytes_written / 1e6:.1f} MB) in"
        f" {result.seconds:.1f} s", highlight=False,
    )


# ───────────────────────────── evaluation (eval) ─────────────────────────────

def _eval_rows(metrics: dict, diversity: dict | None) -> list[tuple[str, str, str]]:
    """('name: label', value, 95% interval) per measured metric, in the metric registry's
    order: the registry is the one list of metrics, so the CLI keeps none. The name is shown
    because it is what `--objectives` and the results table use."""
    from calmerge.eval.metrics import METRICS

    rows = []
    for spec in METRICS.values():
        if spec.name in metrics:
            m = metrics[spec.name]
            rows.append((f"{spec.name}: {spec.label}", f"{m.value:.4f}", f"[{m.lo:.4f}, {m.hi:.4f}]"))
        elif diversity and spec.name in diversity:
            rows.append((f"{spec.name}: {spec.label}", f"{diversity[spec.name]:.4f}", ""))
    for name, m in metrics.items():  # an lm-eval task's own metrics (mcc, f1, …), as it names them
        if name not in METRICS:
            rows.append((f"{name} (lm-eval)", f"{m.value:.4f}", f"[{m.lo:.4f}, {m.hi:.4f}]"))
    return rows


DTYPE_HELP = "auto (the checkpoint's own: bf16 for most released models), float32, bfloat16, float16."
DEVICE_MAP_HELP = "Dispatch a model bigger than one device with accelerate: auto, balanced, sequential."
MAX_MEMORY_HELP = "Caps per device for --device-map, e.g. '0=20GiB,cpu=60GiB'."
FORM_HELP = "How choices read their context: auto (the faster on this device, timed), packed (one sequence per question), prefix (the context's KV cache)."
BATCH_HELP = "Questions per forward: auto (the most that fit in free memory) or a number."


def _parse_batch(text: str | None) -> int | str | None:
    """--batch-size: 'auto' or a positive whole number (the config validates the range)."""
    if text is None or text.strip() == "auto":
        return None if text is None else "auto"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--batch-size '{text}': not a number", "use auto or e.g. 32") from None


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model directory or hub id (offline cache).")],
    data: Annotated[str, typer.Option("--data", help="Items: JSONL/CSV, hf:… or lmeval:… (an lmeval task's include_path runs that folder's !function Python).")],
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Open-ended prompts for diversity.")
    ] = None,
    dev: Annotated[Path | None, typer.Option("--dev", help="Dev items (few-shot).")] = None,
    fewshot: Annotated[int | None, typer.Option("--fewshot", help="Few-shot examples from --dev.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="loglik or letter.")] = None,
    prompt_template: Annotated[
        str | None,
        typer.Option("--prompt-template", help="e.g. '{question}\\n{choices}\\nAnswer:'."),
    ] = None,
    prompt_format: Annotated[str | None, typer.Option("--prompt-format", help="plain or chat.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help=DTYPE_HELP)] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
    device_map: Annotated[str | None, typer.Option("--device-map", help=DEVICE_MAP_HELP)] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help=MAX_MEMORY_HELP)] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help=BATCH_HELP)] = None,
    scoring_form: Annotated[str | None, typer.Option("--scoring-form", help=FORM_HELP)] = None,
    samples: Annotated[int | None, typer.Option("--samples", "-k", help="Samples per prompt.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    stop_ids: Annotated[str | None, typer.Option("--stop-ids", help="Token ids ending a sample, e.g. '2,6' (default: the model's).")] = None,
    no_embed: Annotated[
        bool, typer.Option("--no-embed", help="Skip the embedding-diversity metric.")
    ] = False,
    n_boot: Annotated[int | None, typer.Option("--n-boot", help="Bootstrap replicates.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="results.json (+ .reliability.png).")
    ] = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: RemoteOpt = False,
) -> None:
    """Accuracy, calibration (with 95% intervals) and diversity of one model."""
    from rich.table import Table

    from calmerge import api
    from calmerge.config import EvalConfig, validate

    template = prompt_template.replace("\\n", "\n").replace("\\t", "\t") if prompt_template else None
    given = {
        "model": model, "data": str(data), "prompts": str(prompts) if prompts else None,
        "dev": str(dev) if dev else None, "fewshot": fewshot, "mode": mode,
        "prompt_template": template, "prompt_format": prompt_format, "dtype": dtype,
        "device": device, "device_map": device_map, "max_memory": max_memory,
        "batch_size": _parse_batch(batch_size), "scoring_form": scoring_form, "samples": samples,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
        "stop_token_ids": _parse_ids(stop_ids), "embed_diversity": False if no_embed else None, "n_boot": n_boot, "seed": seed,
        "output": str(output) if output else None,
        "trust_remote_code": trust_remote_code or None, "allow_pickle": allow_pickle or None,
    }
    # only what was given: every default is the config model's own, stated once
    cfg = validate(EvalConfig, {k: v for k, v in given.items() if v is not None}, "command line")
    report = api.evaluate(cfg, progress=True)
    ev = report.evaluation
    table = Table(title=f"{model} — {len(ev.result)} items, {cfg.mode}", title_justify="left")
    for col in ("metric", "value", "95% interval"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in _eval_rows(ev.metrics, ev.diversity):
        table.add_row(*row)
    console.print(table)
    if len(ev.breakdown) > 1:  # an lm-eval group: every task and subgroup, as lm-eval lists them
        parts = Table(title="per task and group (lm-eval's numbers)", title_justify="left")
        for col in ("task", "metric", "value", "95% interval"):
            parts.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for task, ms in ev.breakdown.items():
            for name, m in ms.items():
                parts.add_row(task, name, f"{m.value:.4f}", f"[{m.lo:.4f}, {m.hi:.4f}]")
        console.print(parts)
    for note in ev.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"scored in {ev.seconds:.1f} s ({ev.dtype})", highlight=False)
    if report.output is not None:
        also = f" and {report.diagram}" if report.diagram else " (no reliability diagram: no gold)"
        console.print(f"wrote [bold]{report.output}[/]{also}", highlight=False)


# ───────────────────────────── sweep (sweep, runs, results, export, report) ─────────────────────

StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite results store.")]


@app.command("sweep")
def sweep_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML sweep config (flags override it).")] = None,
    base: Annotated[str | None, typer.Option(help="Pre-alignment model (dir or hub id).")] = None,
    aligned: Annotated[str | None, typer.Option(help="Aligned model (dir or hub id).")] = None,
    models: Annotated[list[str] | None, typer.Option("--models", help="A sweep over N ≥ 3 checkpoints instead of --base/--aligned: NAME=PATH each (repeat, or several after one --models), the first the base.")] = None,
    simplex_step: Annotated[float | None, typer.Option("--simplex-step", help="Spacing of the simplex grid over --models (default 0.1).")] = None,
    simplex_max: Annotated[float | None, typer.Option("--simplex-max", help="Task-vector families over --models: the largest coefficient (default 1).")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Dev item-evaluations to spend: every λ first on anchor items, full scoring only where racing cannot rule it out.")] = None,
    anchors: Annotated[int | None, typer.Option("--anchors", help="Anchor items of --budget (default: 10% of dev, at least 16).")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Test items: JSONL/CSV, hf:… or lmeval:… (repeat for several tasks; an lmeval task's include_path runs that folder's !function Python).")] = None,
    dev: Annotated[list[str] | None, typer.Option(help="Dev items (same forms as --data): λ is chosen here; once per --data, in order.")] = None,
    aggregate: Annotated[str | None, typer.Option(help="Several tasks: acc is their mean (macro) or item-weighted (micro).")] = None,
    prompts: Annotated[str | None, typer.Option(help="Open-ended prompts (JSONL) for diversity.")] = None,
    grid: Annotated[str | None, typer.Option(help="λ grid: '0,0.5,1' or '0:1:0.1'.")] = None,
    extrapolate: Annotated[str | None, typer.Option(help="λ beyond the parents, e.g. '1.1,1.2' (default: 1.1,1.2 with the default grid only).")] = None,
    no_extrapolate: Annotated[bool, typer.Option("--no-extrapolate", help="No λ>1 points.")] = False,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="No adaptive refinement.")] = False,
    resolution: Annotated[float | None, typer.Option(help="Finest λ step of refinement.")] = None,
    family: Annotated[list[str] | None, typer.Option(help="Merge family (repeatable): linear, slerp, ….")] = None,
    mode: Annotated[str | None, typer.Option(help="loglik or letter scoring.")] = None,
    prompt_template: Annotated[str | None, typer.Option(help="e.g. '{question}'.")] = None,
    prompt_format: Annotated[str | None, typer.Option(help="plain or chat.")] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    device_map: Annotated[str | None, typer.Option("--device-map", help=DEVICE_MAP_HELP)] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help=MAX_MEMORY_HELP)] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help=BATCH_HELP)] = None,
    scoring_form: Annotated[str | None, typer.Option("--scoring-form", help=FORM_HELP)] = None,
    parents: Annotated[str | None, typer.Option("--parents", help="Where the parents live between points: auto (in memory when they fit), resident, streamed.")] = None,
    ray: Annotated[str | None, typer.Option("--ray", help="Spread the points over a Ray cluster: local (start one here), auto (the one `ray start` runs here) or HOST:PORT. Needs calmerge[ray].")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Ray workers, one live model each (default: one per GPU, else per CPU).")] = None,
    samples: Annotated[int | None, typer.Option("--samples", "-k", help="Samples per open-ended prompt.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="New tokens per sample at most.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    stop_ids: Annotated[str | None, typer.Option("--stop-ids", help="Token ids ending a sample (default: both parents' EOS ids).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling and bootstrap.")] = None,
    pick: Annotated[str | None, typer.Option(help="max-acc, min-ece, knee or lambda=0.6.")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite results store.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Sweep merges between BASE and ALIGNED (or over the simplex of --models), evaluate each,
    report the Pareto frontier."""
    from calmerge import api
    from calmerge.config import load_sweep_config, parse_grid, task_overrides

    overrides = {
        "base": base, "aligned": aligned, **task_overrides(data, dev), "aggregate": aggregate,
        "models": _model_list(models), "simplex_step": simplex_step, "simplex_max": simplex_max,
        "budget": budget, "anchors": anchors,
        "prompts": prompts,
        "grid": parse_grid(grid) if grid else None, "extrapolate": () if no_extrapolate else (parse_grid(extrapolate, "--extrapolate") if extrapolate else None),
        "refine": False if no_refine else None, "resolution": resolution,
        "families": tuple(family) if family else None, "mode": mode,
        "prompt_template": prompt_template, "prompt_format": prompt_format, "dtype": dtype,
        "device": device, "device_map": device_map, "max_memory": max_memory,
        "batch_size": _parse_batch(batch_size), "scoring_form": scoring_form, "parents": parents, "ray": ray, "workers": workers,
        "samples": samples, "max_new_tokens": max_new_tokens,
        "temperature": temperature, "top_p": top_p, "stop_token_ids": _parse_ids(stop_ids),
        "seed": seed, "pick": pick,
        "store": str(store) if store else None, "out": str(out) if out else None,
        "allow_pickle": allow_pickle or None, "trust_remote_code": trust_remote_code or None,
    }
    cfg = load_sweep_config(config, overrides)
    result = api.sweep(cfg, progress=not quiet)
    _print_verdict(result)


def _model_list(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None


def spread_models(argv: list[str]) -> list[str]:
    """`--models a=A b=B c=C` → `--models a=A --models b=B --models c=C`.

    Click's options take one value each, and the words after the first would otherwise be
    read as the sweep's positional CONFIG; a NAME=PATH word (it has `=`, it is not a flag)
    right after `--models` or after another such word belongs to the list.
    """
    out: list[str] = []
    in_models = False
    for word in argv:
        if in_models and "=" in word and not word.startswith("-"):
            out += ["--models", word]
            continue
        in_models = False
        if word == "--models":
            in_models = True
            out.append(word)
            continue
        out.append(word)
    # `--models` itself then took the first word: drop the doubled flag before it
    fixed: list[str] = []
    for word in out:
        if word == "--models" and fixed[-1:] == ["--models"]:
            continue
        fixed.append(word)
    return fixed


def _print_verdict(result) -> None:
    console.print(
        f"run {result.run_id}: {result.computed} points computed, {result.skipped} already in "
        f"{result.store}"
    )
    if result.placement:
        console.print(f"scored in {result.dtype}; {result.placement}", highlight=False)
    for i, w in sorted(result.workers.items()):
        rate = f"{w.seconds / w.points:.1f} s/point" if w.points else "no point"
        lost = f", {w.lost} call(s) lost with the worker" if w.lost else ""
        points = f"{w.points} point{'' if w.points == 1 else 's'}"
        console.print(f"worker {i} ({w.node}): {points}, {rate}{lost}", highlight=False)
    for sentence in result.sentences:
        console.print(f"[bold]•[/] {sentence}", highlight=False)
    console.print(f"report: {result.html}")


@app.command("search")
def search_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML search config (flags override it).")] = None,
    base: Annotated[str | None, typer.Option(help="Pre-alignment model (dir or hub id).")] = None,
    aligned: Annotated[str | None, typer.Option(help="Aligned model (dir or hub id).")] = None,
    data: Annotated[str | None, typer.Option(help="Test items (the final frontiers are scored here).")] = None,
    dev: Annotated[str | None, typer.Option(help="Dev items: every candidate's fitness comes from these alone.")] = None,
    space: Annotated[str | None, typer.Option(help="blocks:K (one λ gradient of K anchors) or attn-mlp:K (attention, MLP, rest).")] = None,
    objectives: Annotated[str | None, typer.Option(help="acc,ece (default); add diversity (distinct_2) or a named diversity metric, which needs --prompts.")] = None,
    budget: Annotated[int | None, typer.Option(help="Dev item-evaluations to spend (default: 40 full-dev evaluations).")] = None,
    prompts: Annotated[str | None, typer.Option(help="Open-ended prompts (JSONL) for a diversity objective; split in halves into dev and test prompts.")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per prompt (default 8).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per sample (default 24).")] = None,
    anchor_prompts: Annotated[int | None, typer.Option(help="Anchor prompts a candidate is first sampled on (default: a quarter of the dev prompts, at least 4).")] = None,
    algorithm: Annotated[str | None, typer.Option(help="nsga2 (pymoo).")] = None,
    population: Annotated[int | None, typer.Option(help="Candidates per generation (default 12).")] = None,
    anchors: Annotated[int | None, typer.Option(help="Anchor items a candidate is first scored on (default: 10% of dev, at least 16).")] = None,
    upper: Annotated[float | None, typer.Option(help="Largest λ a gene may take (default 1).")] = None,
    promote: Annotated[float | None, typer.Option(help="At most this share of a generation is promoted to all dev items (default 0.25).")] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    prompt_template: Annotated[str | None, typer.Option(help="e.g. '{question}'.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the algorithm, the anchors and the bootstrap.")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite results store.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Search per-layer merge coefficients (NSGA-II, candidates in place, raced on anchor
    items), then compare the frontier with one λ at the same budget."""
    from calmerge import api
    from calmerge.config import SearchConfig, load_yaml, validate

    data_ = load_yaml(config) if config is not None else {}
    overrides = {
        "base": base, "aligned": aligned, "data": data, "dev": dev, "space": space,
        "objectives": objectives, "budget": budget, "algorithm": algorithm,
        "population": population, "anchors": anchors, "upper": upper, "promote": promote,
        "prompts": prompts, "samples": samples, "max_new_tokens": max_new_tokens,
        "anchor_prompts": anchor_prompts, "dtype": dtype,
        "device": device, "prompt_template": prompt_template, "seed": seed,
        "store": str(store) if store else None, "out": str(out) if out else None,
    }
    data_.update({k: v for k, v in overrides.items() if v is not None})
    source = str(config) if config is not None else "command line"
    for key in ("base", "aligned", "data", "dev"):
        if key not in data_:
            raise ConfigError(f"{source}: '{key}' is required", f"pass --{key} or set it in the YAML")
    result = api.search(validate(SearchConfig, data_, source), progress=not quiet)
    console.print(
        f"run {result.run_id}: {result.candidates} candidates over {result.generations}"
        f" generations, {result.computed} evaluations computed this session, in {result.store}",
        highlight=False,
    )
    for sentence in result.sentences:
        console.print(f"[bold]•[/] {sentence}", highlight=False)
    console.print(f"report: {result.html}")


@app.command("runs")
def runs_cmd(store: StoreOpt = Path("calmerge-runs.db")) -> None:
    """List the runs in a results store."""
    import datetime as dt

    from rich.table import Table

    from calmerge import api

    table = Table("id", "name", "hash", "created", "points done", "families")
    for r in api.list_runs(store):
        when = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            str(r["id"]), r["name"], r["hash"], when, f"{r['done']}/{r['points']}",
            ",".join(r["families"]),
        )
    console.print(table)


@app.command("results")
def results_cmd(
    run: Annotated[str | None, typer.Argument(help="Run id, name or hash (default: latest).")] = None,
    store: StoreOpt = Path("calmerge-runs.db"),
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write.")] = None,
) -> None:
    """One row per point: family, λ and every metric per split, with intervals."""
    from calmerge import api

    text = api.write_results(api.results_table(store, run), fmt, output)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        console.print(f"wrote {output}")


@app.command("report")
def report_cmd(
    run: Annotated[str | None, typer.Argument(help="Run id, name or hash (default: latest).")] = None,
    store: StoreOpt = Path("calmerge-runs.db"),
    out: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path("calmerge-report"),
    pick: Annotated[str, typer.Option(help="max-acc, min-ece, knee or lambda=0.6.")] = "max-acc",
) -> None:
    """(Re)write the HTML/Markdown report of a run from the store (no model needed)."""
    from calmerge import api

    written = api.report(store, run, out, pick=pick)
    for sentence in written.sentences:
        console.print(f"[bold]•[/] {sentence}", highlight=False)
    console.print(f"report: {written.paths.html}")


@app.command("export")
def export_cmd(
    run: Annotated[str | None, typer.Argument(help="Run id, name or hash (default: latest).")] = None,
    pick: Annotated[str, typer.Option(help="knee, max-acc, min-ece, lambda=0.6, or a simplex point: weights=base:0.2,sft:0.3,dpo:0.5.")] = "max-acc",
    store: StoreOpt = Path("calmerge-runs.db"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Output model directory.")] = ...,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="e.g. 5GB, 500MB.")] = "5GB",
) -> None:
    """Write the picked merge of a run as a Hugging Face checkpoint with its metrics."""
    from calmerge import api
    from calmerge.coords import coord_label

    path, point = api.export(store, run, pick=pick, out=output, force=force, max_shard_size=max_shard_size)
    console.print(f"exported {point.family} {coord_label(point.coord)} to {path}", highlight=False)


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the report and store go.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Organism and sweep seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Build (or reuse) the built-in organism; sweep λ between its base and aligned model, then
    the triangle of its three stages (base, SFT, DPO); write both reports."""
    from calmerge import api

    result = api.demo(out, seed=seed, progress=not quiet)
    console.print("[bold]λ sweep, base → aligned[/]")
    _print_verdict(result.sweep)
    console.print("[bold]triangle sweep, base · sft · dpo[/]")
    _print_verdict(result.triangle)


# ───────────────────────────── built-in default (organism, demo) ─────────────────────────────

organism_app = typer.Typer(
    help="The built-in base/aligned model pair (the demo's default models).", no_args_is_help=True
)
app.add_typer(organism_app, name="organism")


@organism_app.command("build")
def organism_build_cmd(
    out: Annotated[
        Path | None, typer.Option("--out", help="Also copy the pair here (default: cache only).")
    ] = None,
    seed: Annotated[int, typer.Option(help="World, data and training seed.")] = 0,
    recipe: Annotated[
        Path | None, typer.Option(help="YAML recipe (default: the demo's recipe).")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root (default $CALMERGE_CACHE/organism).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an organism at --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Build (or reuse from the cache) the base/aligned pair and its evaluation data."""
    from rich.table import Table

    from calmerge import api

    paths = api.build_organism(
        out, seed=seed, recipe=recipe, cache_dir=cache_dir, progress=not quiet, force=force
    )
    meta = paths.metadata()
    table = Table(show_header=False, box=None)
    for name, path in paths.checkpoints.items():  # every stage: base, sft, each DPO variant
        table.add_row("aligned" if path == paths.aligned else name, str(path))
    for key in ("dev", "test", "prompts"):
        table.add_row(key, str(getattr(paths, key)))
    table.add_row("parameters", f"{meta['parameters']:,}")
    table.add_row("build time", f"{meta['timings']['total_s']:.0f} s (hash {meta['hash']})")
    console.print(table)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` (temporary outputs removed,
    a claimed sweep point released) runs before the process exits with 143."""


#: what an interrupted command has kept, and how to go on (said in its one line)
_KEPT = {
    "sweep": "every finished point is in the store; run the same command again to resume",
    "demo": "every finished point is in the store; run the same command again to resume",
    "merge": "nothing was written (the partial output was removed)",
    "export": "nothing was written (the partial output was removed)",
    "eval": "nothing was written",
    "organism": "nothing half-built was cached; the next build starts again",
    "report": "the previous report files are unchanged (each file is replaced whole)",
}


def _interrupted(argv: list[str] | None, how: str, code: int) -> None:
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    _fail(f"interrupted ({how}): {_KEPT.get(command, 'no output was left half-written')}", code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app and turn user mistakes into one line + exit 2, Ctrl-C
    into one line + 130 and SIGTERM into one line + 143."""
    try:
        rv = app(args=spread_models(list(sys.argv[1:] if argv is None else argv)),
                 standalone_mode=False)
    except CalmergeError as exc:
        _fail(exc.one_line())
    except typer.Abort:
        _fail("aborted", 130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            raise SystemExit(0) from None
        _fail(exc.format_message(), exc.exit_code)
    except KeyboardInterrupt:
        _interrupted(argv, "Ctrl-C", 130)
    except Terminated:
        _interrupted(argv, "SIGTERM", 143)
    else:
        # typer turns Ctrl-C into an exit code it *returns* when not standalone: 130 here
        # means the command was interrupted (commands themselves return None)
        if rv == 130:
            _interrupted(argv, "Ctrl-C", 130)
        elif isinstance(rv, int) and rv:
            raise SystemExit(rv)


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def run() -> None:
    """Console-script entry: `main` with SIGTERM turned into `Terminated`, then freeze the heap
    so that the interpreter's final garbage collection skips it (~30 ms of every invocation;
    the process is ending anyway)."""
    import gc
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    run()
