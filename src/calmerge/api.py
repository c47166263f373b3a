"""The Python API: every CLI command is one call here, usable from a notebook.

Sections, one per subsystem, mirror `cli.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.config import SweepConfig
from calmerge.errors import ConfigError, OutputError, StoreError

# ───────────────────────────── merge engine ─────────────────────────────


# ───────────────────────────── evaluation ─────────────────────────────


# ───────────────────────────── sweep ─────────────────────────────


@dataclass(frozen=True)
class SweepReport:
    """What a finished sweep hands back: where things are and what was concluded."""

    run_id: int
    store: Path
    html: Path
    markdown: Path
    verdict: Any
    computed: int
    skipped: int


def sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepReport:
    """Run (or resume) a sweep, then write its report into `cfg.out`."""
    from calmerge.sweep.runner import Sweep

    runner = Sweep(cfg)
    outcome = runner.execute(progress=progress)
    paths, verdict = report(cfg.store, str(runner.run.id), Path(cfg.out), pick=cfg.pick)
    return SweepReport(
        run_id=runner.run.id,
        store=Path(cfg.store),
        html=paths.html,
        markdown=paths.markdown,
        verdict=verdict,
        computed=len(outcome.computed),
        skipped=len(outcome.skipped),
    )


def list_runs(store: str | Path) -> list[dict[str, Any]]:
    """One summary row per run in a store."""
    db = _open_store(store)
    rows = []
    for run in db.runs():
        pts = db.points(run.id)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "hash": run.config_hash,
                "created": run.created,
                "points": len(pts),
                "done": sum(p.status == "done" for p in pts),
                "families": sorted({p.family for p in pts}),
            }
        )
    return rows


def results_table(store: str | Path, run: str | None = None) -> list[dict[str, Any]]:
    """One row per finished point: family, λ, then `split.metric` with `_lo`/`_hi` intervals."""
    db = _open_store(store)
    rec = db.run(run)
    rows = []
    for pt in db.points(rec.id, status="done"):
        row: dict[str, Any] = {"run": rec.id, "family": pt.family, "lam": pt.lam}
        for split, ms in sorted(db.metrics(pt.id).items()):
            for name, (v, lo, hi) in sorted(ms.items()):
                row[f"{split}.{name}"] = v
                row[f"{split}.{name}_lo"] = lo
                row[f"{split}.{name}_hi"] = hi
        rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> str:
    """Serialise `results_table` rows as csv or json; written atomically when `out` is given."""
    import csv
    import io
    import json
    import math

    if fmt not in ("csv", "json"):
        raise ConfigError(f"--format '{fmt}': unknown", "use csv or json")
    if fmt == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        text = json.dumps(clean, indent=2)
    else:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is not None:
        atomic_write_text(Path(out), text)
    return text


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name and rename it into place when complete."""
    import os
    import tempfile

    if path.is_dir():
        raise OutputError(f"{path}: is a directory", "give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_store(store: str | Path):
    from calmerge.results.store import ResultStore

    path = Path(store)
    if not path.is_file():
        raise StoreError(f"{path}: results store not found", "run `calmerge sweep` first or pass --store")
    return ResultStore(path)


def demo(out: str | Path = "demo-output", *, seed: int = 0, progress: bool = True) -> SweepReport:
    """The whole study on the built-in base/aligned pair: build (or reuse) it, sweep, report.

    The report lands at `out/report.html`; the store at `out/runs.db`, so re-running the demo
    resumes instead of recomputing.
    """
    from calmerge.organism import build_organism

    out = Path(out)
    org = build_organism(seed=seed, progress=progress)
    cfg = SweepConfig(
        name=f"organism seed {seed}",
        base=str(org.base),
        aligned=str(org.aligned),
        data=str(org.test),
        dev=str(org.dev),
        prompts=str(org.prompts),
        store=str(out / "runs.db"),
        out=str(out),
        seed=seed,
    )
    return sweep(cfg, progress=progress)


# ───────────────────────────── built-in default ─────────────────────────────

