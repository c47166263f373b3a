"""Do no harm: an output never overwrites an input, and `--force` replaces only what calmerge wrote.

Three rules, one module, called by every command that writes:

1. `check_not_input`: an output path that *is*, *contains* or *is inside* an input (a model
   directory, an adapter's base, a tokenizer source, a data or prompts file, the results store)
   is refused, `--force` or not. Paths are compared after resolving `~`, `..`, relative parts
   and symlinks; `os.path.samefile` catches the same file under another spelling (a
   case-insensitive filesystem, a hard link).
2. `write_marker` / `is_ours` / `check_owned`: every directory calmerge writes as an output
   (merged models, exports, report folders) carries `.calmerge-output`, a short JSON saying what
   wrote it and when. An existing non-empty directory without it is someone else's and is never
   replaced or written into.
3. `replace_dir`: replacing a directory is rename-old-aside, rename-new-into-place, delete-old.
   A kill between the two renames leaves the old output aside under `.<name>.calmerge-old-<pid>`;
   `clean_leftovers`, run before the next write beside it, puts it back (or removes it when the
   new output did land) and removes the temporary directories of killed runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from calmerge.errors import OutputError

MARKER = ".calmerge-output"
#: test-only hook: set to "1" and the process kills itself (SIGKILL) between the two renames of
#: `replace_dir`, the one moment where the output is neither old nor new (tests/unit/test_outputs.py)
KILL_HOOK_ENV = "CALMERGE_TEST_KILL_MID_REPLACE"
_LEFTOVER_RE = re.compile(r"^\.(?P<name>.+)\.calmerge-(?P<kind>tmp|old)-(?P<pid>\d+)$")
_STORE_SIDECARS = ("-wal", "-shm", "-journal")
_SQLITE_MAGIC = b"SQLite format 3\x00"

Inputs = Iterable[tuple[str, "str | Path | None"]]


# ───────────────────────────── rule 1: outputs are not inputs ─────────────────────────────


def resolved(path: str | Path) -> Path:
    """`path` with `~`, relative parts, `..` and symlinks resolved (it need not exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: different
        return False


def relation(output: str | Path, inp: str | Path) -> str | None:
    """'is', 'is inside' or 'contains' when `output` and `inp` overlap on disk, else None."""
    out, src = resolved(output), resolved(inp)
    if _same(out, src):
        return "is"
    if any(_same(parent, src) for parent in out.parents):
        return "is inside"
    if any(_same(parent, out) for parent in src.parents):
        return "contains"
    return None


def check_not_input(
    output: str | Path, inputs: Inputs, what: str, *, may_contain: bool = False
) -> None:
    """Refuse `output` when it is, is inside or contains one of `inputs` ((label, path) pairs).

    Inputs that are not on disk (hub ids, `hf:` data sources, None) cannot be overwritten and
    are skipped. `may_contain`: the output directory may hold the input (a report folder holding
    its results store: the report writes only its own files into it).
    """
    for label, inp in inputs:
        if inp is None or not os.path.lexists(Path(inp).expanduser()):
            continue
        rel = relation(output, inp)
        if rel is None or (rel == "contains" and may_contain):
            continue
        raise OutputError(
            f"{what} {output} {rel} the {label} {inp}; an output never overwrites an input",
            "choose an output path outside every input",
        )


def model_inputs(label: str, ref: str | Path | None, base: str | Path | None = None) -> list:
    """A model reference as input paths: the model, and for a LoRA adapter also its base
    (`base` when the caller passes one, and the base its adapter_config.json names)."""
    if ref is None:
        return []
    found: list[tuple[str, str | Path | None]] = [(label, ref)]
    cfg_file = Path(ref).expanduser() / "adapter_config.json"
    if cfg_file.is_file():
        if base is not None:
            found.append((f"base of the adapter {label}", base))
        try:
            named = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):  # unreadable: opening it will say so
            named = None
        if isinstance(named, str) and named:
            found.append((f"base of the adapter {label}", named))
    return found


def check_not_store(output: str | Path, what: str) -> None:
    """Refuse writing a text file over an SQLite database (a results store) or its WAL files,
    whichever store it is: a table written over `runs.db` loses every point."""
    path = Path(output).expanduser()
    candidates = [path]
    for suffix in _STORE_SIDECARS:
        if path.name.endswith(suffix):
            candidates.append(path.with_name(path.name[: -len(suffix)]))
    for cand in candidates:
        try:
            with open(cand, "rb") as fh:
                is_db = fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
        except OSError:
            continue
        if is_db:
            raise OutputError(
                f"{what} {output} would overwrite the results store {cand}",
                "write the table to another file",
            )


# ───────────────────────────── rule 2: the marker ─────────────────────────────


def write_marker(directory: str | Path, kind: str) -> Path:
    """Create `directory` if needed and mark it as written by calmerge (`kind`: model, report)."""
    from calmerge import __version__

    directory = Path(directory)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    data = {"written_by": f"calmerge {__version__}", "kind": kind, "created": stamp}
    marker = directory / MARKER
    try:
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(data) + "\n")
    except OSError as exc:
        raise OutputError(
            f"{directory}: cannot write ({exc.strerror or exc})", "choose a writable location"
        ) from None
    return marker


def is_ours(directory: str | Path) -> bool:
    """Whether `directory` carries calmerge's marker."""
    try:
        data = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("written_by", "")).startswith("calmerge")


def foreign_entries(directory: str | Path, keep: Iterable[str] = ()) -> list[str]:
    """Names in an existing unmarked `directory` other than `keep` (empty: it may be used)."""
    directory = Path(directory)
    if not directory.is_dir() or is_ours(directory):
        return []
    skip = set(keep)
    return sorted(p.name for p in directory.iterdir() if p.name not in skip)


def store_files(store: str | Path, directory: str | Path) -> list[str]:
    """The store's file names (and SQLite's sidecars) when it lies directly in `directory`."""
    store, directory = Path(store).expanduser(), Path(directory).expanduser()
    if not directory.is_dir() or not _same(resolved(store.parent), resolved(directory)):
        return []
    return [store.name, *(store.name + s for s in _STORE_SIDECARS)]


def check_owned(
    directory: str | Path, what: str, *, keep: Iterable[str] = (), force_flag: bool = True
) -> None:
    """Refuse an existing, non-empty directory calmerge did not write (no marker); `keep`:
    names that may be there anyway (the results store a sweep puts into its report folder)."""
    if foreign_entries(directory, keep):
        raise OutputError(
            f"{what} {directory}: exists, is not empty and was not written by calmerge (no"
            f" {MARKER})"
            + ("; --force replaces only calmerge's own outputs" if force_flag else ""),
            "remove it yourself or choose another path",
        )


# ───────────────────────────── rule 3: safe replacement ─────────────────────────────


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (a permission error means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(parent: str | Path) -> list[Path]:
    """Tidy what killed runs (their pid is gone) left in `parent`: temporary directories are
    removed; an old output set aside is put back when its place is empty, else removed."""
    parent = Path(parent)
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    entries = sorted(parent.iterdir(), key=lambda p: p.name)
    for entry in entries:  # restore set-aside outputs first: they win over a half-done new one
        match = _LEFTOVER_RE.match(entry.name)
        if not match or match["kind"] != "old" or pid_alive(int(match["pid"])):
            continue
        target = parent / match["name"]
        if not os.path.lexists(target):
            with contextlib.suppress(OSError):  # not ours to move (permissions): leave it
                os.replace(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    for entry in entries:
        match = _LEFTOVER_RE.match(entry.name)
        if (
            match
            and match["kind"] == "tmp"
            and entry.is_dir()
            and not pid_alive(int(match["pid"]))
        ):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def replace_dir(new: Path, out: Path) -> Path:
    """Move the finished directory `new` to `out`; an existing `out` is set aside first and
    deleted only once `new` is in place, so a crash never loses both."""
    if not os.path.lexists(out):
        os.replace(new, out)
        return out
    old = out.parent / f".{out.name}.calmerge-old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    if os.environ.get(KILL_HOOK_ENV) == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
    return out


# ───────────────────────── what each command reads, and where it may write ─────────────────────


def eval_inputs(cfg: Any) -> list[tuple[str, str | None]]:
    """What `calmerge eval` reads from disk: the model (and an adapter's base), its data."""
    return [
        *model_inputs("model", cfg.model),
        ("data", cfg.data), ("dev data", cfg.dev), ("prompts file", cfg.prompts),
    ]


def run_inputs(cfg: Any) -> list[tuple[str, str | None]]:
    """What a sweep (and so its report and export) reads: both models (an adapter's base too),
    its data and prompts — paths no output of the run may overlap."""
    data = [("test data", t.data) for t in cfg.tasks()] + [
        ("dev data", t.dev) for t in cfg.tasks()
    ]
    if getattr(cfg, "models", None):  # a sweep over several models reads every one
        models = [
            item for i, m in enumerate(cfg.models)
            for item in model_inputs(f"model '{m.name}'", m.path, None if i == 0 else cfg.base)
        ]
    else:
        models = [
            *model_inputs("base model", cfg.base),
            *model_inputs("aligned model", cfg.aligned, cfg.base),
        ]
    return [*models, *data, ("prompts file", cfg.prompts)]


def eval_output_paths(
    output: str | None, inputs: list[tuple[str, str | None]] = ()
) -> tuple[Path | None, Path | None]:
    """(JSON path, PNG path beside it), checked writable before any work starts; neither may
    be, hold or lie inside one of `inputs`."""
    if output is None:
        return None, None
    path = Path(output)
    for written in (path, path.with_suffix(".reliability.png")):
        check_not_input(written, inputs, "--output")
    if path.is_dir():
        raise OutputError(f"--output {path}: is a directory", "give a file name like results.json")
    if not path.parent.is_dir():
        raise OutputError(f"--output {path}: folder {path.parent} does not exist", "create it first")
    return path, path.with_suffix(".reliability.png")


def check_report_dir(
    out: str | Path, store: str | Path, inputs: list[tuple[str, str | None]]
) -> None:
    """A report folder may hold its results store, but neither be nor hold nor lie inside an
    input of the run, and an existing non-empty one must be calmerge's (its marker)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"report output '{out}' is a file", "pass a directory with --out")
    check_not_input(out, [("results store", store)], "--out", may_contain=True)
    for name in ("report.html", "report.md", "figures"):
        check_not_input(out / name, [("results store", store)], "--out")
    check_not_input(out, inputs, "--out")
    check_owned(out, "--out", keep=store_files(store, out), force_flag=False)
