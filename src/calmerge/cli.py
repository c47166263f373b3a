"""The `calmerge` command line: a thin skin over `calmerge.api`.

Each command parses its flags, calls one API function and renders the result with rich.
User mistakes (`CalmergeError`) become one line on stderr plus a hint, exit code 2.

The file is divided into sections, one per subsystem; each command lives in its section.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # recent typer vendors its own click; older ones use the click package
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click
from rich.console import Console

from calmerge.errors import CalmergeError

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


# ───────────────────────────── evaluation (eval) ─────────────────────────────


# ───────────────────────────── sweep (sweep, runs, results, export, report) ─────────────────────

StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite results store.")]


@app.command("sweep")
def sweep_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML sweep config (flags override it).")] = None,
    base: Annotated[str | None, typer.Option(help="Pre-alignment model (dir or hub id).")] = None,
    aligned: Annotated[str | None, typer.Option(help="Aligned model (dir or hub id).")] = None,
    data: Annotated[str | None, typer.Option(help="Test multiple-choice items (JSONL/CSV).")] = None,
    dev: Annotated[str | None, typer.Option(help="Dev items: λ is chosen here.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Open-ended prompts (JSONL) for diversity.")] = None,
    grid: Annotated[str | None, typer.Option(help="λ grid: '0,0.5,1' or '0:1:0.1'.")] = None,
    no_extrapolate: Annotated[bool, typer.Option("--no-extrapolate", help="Drop λ>1 points.")] = False,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="No adaptive refinement.")] = False,
    resolution: Annotated[float | None, typer.Option(help="Finest λ step of refinement.")] = None,
    family: Annotated[list[str] | None, typer.Option(help="Merge family (repeatable): linear, slerp, ….")] = None,
    mode: Annotated[str | None, typer.Option(help="loglik or letter scoring.")] = None,
    prompt_template: Annotated[str | None, typer.Option(help="e.g. '{question}'.")] = None,
    prompt_format: Annotated[str | None, typer.Option(help="plain or chat.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per open-ended prompt.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling and bootstrap.")] = None,
    pick: Annotated[str | None, typer.Option(help="max-acc, min-ece, knee or lambda=0.6.")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite results store.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Sweep merges between BASE and ALIGNED, evaluate each, report the Pareto frontier."""
    from calmerge import api
    from calmerge.config import load_sweep_config, parse_grid

    overrides = {
        "base": base, "aligned": aligned, "data": data, "dev": dev, "prompts": prompts,
        "grid": parse_grid(grid) if grid else None, "extrapolate": () if no_extrapolate else None,
        "refine": False if no_refine else None, "resolution": resolution,
        "families": tuple(family) if family else None, "mode": mode,
        "prompt_template": prompt_template, "prompt_format": prompt_format, "dtype": dtype,
        "device": device, "samples": samples, "seed": seed, "pick": pick,
        "store": str(store) if store else None, "out": str(out) if out else None,
        "allow_pickle": allow_pickle or None, "trust_remote_code": trust_remote_code or None,
    }
    cfg = load_sweep_config(config, overrides)
    result = api.sweep(cfg, progress=not quiet)
    _print_verdict(result)


def _print_verdict(result) -> None:
    console.print(
        f"run {result.run_id}: {result.computed} points computed, {result.skipped} already in "
        f"{result.store}"
    )
    for sentence in result.verdict.sentences:
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

    paths, verdict = api.report(store, run, out, pick=pick)
    for sentence in verdict.sentences:
        console.print(f"[bold]•[/] {sentence}", highlight=False)
    console.print(f"report: {paths.html}")


@app.command("export")
def export_cmd(
    run: Annotated[str | None, typer.Argument(help="Run id, name or hash (default: latest).")] = None,
    pick: Annotated[str, typer.Option(help="knee, max-acc, min-ece or lambda=0.6.")] = "max-acc",
    store: StoreOpt = Path("calmerge-runs.db"),
    output: Annotated[Path, typer.Option("--output", "-o", help="Output model directory.")] = ...,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="e.g. 5GB, 500MB.")] = "5GB",
) -> None:
    """Write the picked merge of a run as a Hugging Face checkpoint with its metrics."""
    from calmerge import api

    path, point = api.export(store, run, pick=pick, out=output, force=force, max_shard_size=max_shard_size)
    console.print(f"exported {point.family} λ={point.lam:g} to {path}")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the report and store go.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Organism and sweep seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Build (or reuse) the built-in base/aligned pair, sweep it, write the report."""
    from calmerge import api

    _print_verdict(api.demo(out, seed=seed, progress=not quiet))


# ───────────────────────────── built-in default (organism, demo) ─────────────────────────────


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app and turn user mistakes into one line + exit 2."""
    try:
        app(args=argv, standalone_mode=False)
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
        _fail("interrupted; finished work is saved", 130)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
