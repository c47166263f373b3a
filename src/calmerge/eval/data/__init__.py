"""Multiple-choice items and open-ended prompts: files, Hugging Face datasets, lm-eval tasks.

Every row is validated before any model work starts, and a bad row is reported with where it
came from (`file:line`, or the ref plus split and row) so the user can fix it; answers may be an
index (0-based) or a letter ("B"). Dev and test splits are kept apart by file (or by the `split`
column when one file holds both), by dataset split, or by lm-eval's split roles.

A data reference is either a path (JSONL/CSV) or `source:body`, dispatched through a registry of
sources (`@data_source("hf")`), so a new kind of data is one function plus one decorator line:

    items.jsonl                                   a file (also `file:items.jsonl?split=dev`)
    hf:cais/mmlu:abstract_algebra:test            a Hugging Face dataset (path:config:split)
    hf:json:/data/arc.jsonl?choices=opts          a packaged builder over local files
    lmeval:arc_easy?include_path=/my/tasks        an lm-evaluation-harness task, its prompts

`datasets` and `lm_eval` are imported only when such a reference is loaded.

This package is the public face: `load_items` dispatches a reference, `load_benchmark` returns
its items together with how the source scores them (an lm-eval task's own metrics, see
`benchmark`), and importing the package registers every built-in source. One module per job:
`items` (the item types and the row check), `sources` (references and the registry),
`benchmark` (items plus scoring), `files`, `hf`, `lmeval` (one source each).
"""

from __future__ import annotations

from pathlib import Path

# the source modules register themselves (`@data_source`) on import, in this order
from calmerge.eval.data import files, hf, lmeval  # noqa: F401
from calmerge.eval.data.benchmark import Benchmark, BenchmarkScoring, benchmark_loader
from calmerge.eval.data.files import _file_items, load_prompts
from calmerge.eval.data.items import LETTERS, Item, OpenPrompt, items_digest
from calmerge.eval.data.sources import (
    _SOURCES,
    DataSource,
    Loader,
    data_source,
    data_sources,
    native_template,
    parse_ref,
    source_of,
)

__all__ = [
    "LETTERS",
    "Benchmark",
    "BenchmarkScoring",
    "DataSource",
    "Item",
    "Loader",
    "OpenPrompt",
    "data_source",
    "data_sources",
    "items_digest",
    "load_benchmark",
    "load_items",
    "load_prompts",
    "native_template",
    "parse_ref",
    "source_of",
]


def load_items(path: str | Path, *, split: str | None = None) -> list[Item]:
    """Read multiple-choice items from a file or a `source:body` reference (see the module doc).

    For a file, `split` keeps only rows whose `split` column matches; for a dataset or task it
    names the split to read (and must agree with a split given in the reference itself).
    Raises DataError naming where a row came from for malformed rows, out-of-range answers, fewer
    than two choices and duplicate ids; and for an empty result (a silent empty eval would report
    nothing).
    """
    source, body = parse_ref(path)
    if source is None:
        return _file_items(Path(path), split)
    return _SOURCES.get(source).load(body, split)



def load_benchmark(ref: str | Path, *, split: str | None = None) -> Benchmark:
    """The items of a reference (as `load_items`) and, for a source whose data carries its own
    scoring (lm-eval tasks), the hooks that compute its metrics and notes on how they were
    built. Files and `hf:` datasets are their items alone (`scoring=None`)."""
    source, body = parse_ref(ref)
    loader = benchmark_loader(source) if source is not None else None
    if loader is not None:
        return loader(body, split)
    return Benchmark(str(ref), tuple(load_items(ref, split=split)))
