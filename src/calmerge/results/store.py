"""SQLite results store: runs, points, metrics, per-item predictions, generations.

Why SQLite in WAL mode: every finished sweep point is one committed transaction, so a sweep that
is killed at any moment loses at most the point it was computing, and two sweeps can share one
store (readers never block the writer). Points are *claimed* before they are computed so two
processes never compute the same point; a claim whose process died is taken over.
All SQL is parameterised.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.coords import Coord, Weights, parse_weights_text, round_lam, weights_text
from calmerge.errors import StoreError
from calmerge.io.outputs import pid_alive

#: 2: points carry a `weights` column (a simplex sweep's weight vector; '' for a λ point) and
#: are unique by (run, family, λ, weights); a version-1 store is migrated on first open
SCHEMA_VERSION = 2
#: versions this code opens (older ones are migrated on open)
READABLE_VERSIONS = ("1", str(SCHEMA_VERSION))

#: `PRAGMA application_id` of every calmerge store: 0x43414C4D, the bytes "CALM" (big-endian
#: at offset 68 of the file, as `file(1)` reads it). Stores written before it carry 0 and are
#: recognised by their tables and `meta.schema_version`, then stamped on first open.
APPLICATION_ID = 0x43414C4D

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    config_json TEXT NOT NULL,
    fingerprints_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    family TEXT NOT NULL,
    lam REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done')),
    worker TEXT,
    heartbeat REAL,
    seconds REAL,
    weights TEXT NOT NULL DEFAULT '',
    UNIQUE (run_id, family, lam, weights)
);
CREATE TABLE IF NOT EXISTS metrics (
    point_id INTEGER NOT NULL REFERENCES points(id),
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL, lo REAL, hi REAL,
    PRIMARY KEY (point_id, split, name)
);
CREATE TABLE IF NOT EXISTS predictions (
    point_id INTEGER NOT NULL REFERENCES points(id),
    split TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    answer INTEGER NOT NULL,
    pred INTEGER NOT NULL,
    confidence REAL NOT NULL,
    logprobs_json TEXT NOT NULL,
    score REAL,
    weight REAL,
    PRIMARY KEY (point_id, split, idx)
);
CREATE TABLE IF NOT EXISTS items (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    split TEXT NOT NULL,
    idx INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    question TEXT NOT NULL,
    choices_json TEXT NOT NULL,
    answer INTEGER NOT NULL,
    PRIMARY KEY (run_id, split, idx)
);
CREATE TABLE IF NOT EXISTS prompts (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    idx INTEGER NOT NULL,
    prompt_id TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS generations (
    point_id INTEGER NOT NULL REFERENCES points(id),
    prompt_id TEXT NOT NULL,
    k INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (point_id, prompt_id, k)
);
"""

#: The tables a calmerge store may hold (read off the schema, so the two cannot disagree).
_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))

#: columns added after schema version 1 was released, all nullable (NULL = the old meaning), so
#: a store written before them is read unchanged and gains them on its first open for writing:
#: `score` is an item's contribution to the task's accuracy when that is not pred == answer (a
#: task with its own metric, e.g. truthfulqa_mc2's true-answer mass), `weight` its weight in
#: the task's accuracy when items do not count equally (an lm-eval group of equal-weight tasks)
_ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "predictions": (("score", "REAL"), ("weight", "REAL")),
}

STALE_SECONDS = 600.0


def point_key(coord: Coord) -> tuple[float, str]:
    """(lam, weights) columns of a point: λ and '' for a pair point, 0 and the weights' text
    for a simplex point."""
    if isinstance(coord, tuple):
        return 0.0, weights_text(coord)
    return round_lam(coord), ""


def worker_id() -> str:
    """Identify this process; used to take over claims of dead processes on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(worker: str | None) -> bool:
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another host: trust the heartbeat instead
    try:
        return pid_alive(int(pid))
    except ValueError:
        return True


@dataclass(frozen=True)
class RunRecord:
    id: int
    config_hash: str
    name: str
    created: float
    config: dict[str, Any]
    fingerprints: dict[str, str]


@dataclass(frozen=True)
class PointRecord:
    id: int
    run_id: int
    family: str
    lam: float
    status: str
    seconds: float | None
    #: a simplex sweep's point; None for a λ point
    weights: Weights | None = None

    @property
    def coord(self) -> Coord:
        return self.weights if self.weights is not None else self.lam


@dataclass(frozen=True)
class Prediction:
    """One scored item of one point: what the report and bootstrap need, nothing recomputed.

    `score`: the item's contribution to accuracy when it is not `pred == answer` (a task's own
    metric); `weight`: its weight in the task's accuracy when items do not count equally.
    None = the plain meaning (correctness, weight 1).
    """

    item_id: str
    answer: int
    pred: int
    confidence: float
    logprobs: list[float]
    score: float | None = None
    weight: float | None = None

    @property
    def value(self) -> float:
        """The item's accuracy contribution: its own score, else whether it was answered right."""
        return float(self.pred == self.answer) if self.score is None else self.score


class ResultStore:
    """A handle on one SQLite results file. Cheap to open; safe to share between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(
                f"{self.path}: is a directory, not a results store", "give a file path"
            )
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            app_id = _inspect(self.path)
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate_points()
            self._conn.executescript(_SCHEMA)
            self._add_columns()
            self._conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            if fresh or app_id != APPLICATION_ID:
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except sqlite3.DatabaseError as exc:
            if "readonly" in str(exc):
                raise _read_only(self.path) from None
            raise StoreError(
                f"{self.path}: not a calmerge results store ({exc})", "choose another --store path"
            ) from None

    def _migrate_points(self) -> None:
        """Version 1 → 2: rebuild `points` with the `weights` column and the wider unique key.

        SQLite cannot change a table's UNIQUE constraint in place, so the table is rebuilt the
        way its documentation prescribes (new table, copy, drop, rename) in one transaction,
        with foreign keys off so the rows of `metrics`/`predictions` keep pointing at the same
        point ids. A killed migration rolls back and is simply run again on the next open.
        """
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(points)")}
        if not have or "weights" in have:
            return
        table = re.search(r"CREATE TABLE IF NOT EXISTS points \((.*?)\n\);", _SCHEMA, re.S)
        assert table is not None  # the schema above defines it
        self._conn.execute("PRAGMA foreign_keys=OFF")
        try:
            with self._tx() as c:
                c.execute(f"CREATE TABLE points_v2 ({table.group(1)}\n)")
                c.execute(
                    "INSERT INTO points_v2(id, run_id, family, lam, status, worker, heartbeat,"
                    " seconds, weights) SELECT id, run_id, family, lam, status, worker,"
                    " heartbeat, seconds, '' FROM points"
                )
                c.execute("DROP TABLE points")
                c.execute("ALTER TABLE points_v2 RENAME TO points")
        finally:
            self._conn.execute("PRAGMA foreign_keys=ON")

    def _add_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: all or nothing, serialised against other writers.

        A full disk or an I/O error becomes a StoreError: the transaction is rolled back, so
        every point finished before it stays in the store and a re-run resumes from there.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            cause = "free disk space" if "full" in str(exc) else "check the disk and other users"
            raise StoreError(
                f"{self.path}: could not write the results store ({exc})",
                f"{cause}, then re-run: finished points are kept and the sweep resumes",
            ) from None

    # ── runs ──
    def get_or_create_run(
        self, config_hash: str, name: str, config: dict[str, Any], fingerprints: dict[str, str]
    ) -> RunRecord:
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO runs(config_hash, name, created, config_json, fingerprints_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    config_hash,
                    name,
                    time.time(),
                    json.dumps(config, sort_keys=True),
                    json.dumps(fingerprints, sort_keys=True),
                ),
            )
        return self.run(config_hash)

    def runs(self) -> list[RunRecord]:
        rows = self._conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [self._run(r) for r in rows]

    def run(self, ref: str | int | None = None) -> RunRecord:
        """A run by id, config-hash prefix or name; None means the latest run."""
        rows = self._conn.execute("SELECT * FROM runs ORDER BY id DESC").fetchall()
        if not rows:
            raise StoreError(f"{self.path}: no runs yet", "run `calmerge sweep` first")
        if ref is None:
            return self._run(rows[0])
        key = str(ref)
        for r in rows:
            if str(r[0]) == key or r[1] == key or r[2] == key:
                return self._run(r)
        hits = [r for r in rows if r[1].startswith(key)]
        if len(hits) == 1:
            return self._run(hits[0])
        raise StoreError(
            f"{self.path}: no run '{key}'", "list runs with `calmerge runs --store PATH`"
        )

    @staticmethod
    def _run(r: Sequence[Any]) -> RunRecord:
        return RunRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]))

    # ── notes on how a run's numbers were made (an lm-eval task's own metric, …) ──
    def save_notes(self, run_id: int, notes: Sequence[str]) -> None:
        """The run's notes, in first-seen order, merged with any already kept (kept in `meta`,
        so a store stays readable by a calmerge that does not know them)."""
        merged = list(dict.fromkeys([*self.notes(run_id), *notes]))
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (f"run{run_id}.notes", json.dumps(merged)),
            )

    def notes(self, run_id: int) -> list[str]:
        row = self._conn.execute(
            "SELECT value FROM meta WHERE key = ?", (f"run{run_id}.notes",)
        ).fetchone()
        return json.loads(row[0]) if row else []

    # ── the run's data, kept so reports can quote it without the original files ──
    def save_items(self, run_id: int, split: str, items: Sequence[Any]) -> None:
        """Questions of a split (Item-like: id, question, choices, answer), once per run."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO items(run_id, split, idx, item_id, question, choices_json,"
                " answer) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, split, i, str(it.id), it.question, json.dumps(list(it.choices)),
                     int(it.answer))
                    for i, it in enumerate(items)
                ],
            )

    def items(self, run_id: int, split: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT item_id, question, choices_json, answer FROM items"
            " WHERE run_id = ? AND split = ? ORDER BY idx",
            (run_id, split),
        )
        return [
            {"id": r[0], "question": r[1], "choices": json.loads(r[2]), "answer": r[3]}
            for r in rows
        ]

    def save_prompts(self, run_id: int, prompts: Sequence[Any]) -> None:
        """Open-ended prompts (id, prompt), once per run."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO prompts(run_id, idx, prompt_id, text) VALUES (?, ?, ?, ?)",
                [(run_id, i, str(p.id), p.prompt) for i, p in enumerate(prompts)],
            )

    def prompts(self, run_id: int) -> dict[str, str]:
        rows = self._conn.execute(
            "SELECT prompt_id, text FROM prompts WHERE run_id = ? ORDER BY idx", (run_id,)
        )
        return dict(rows.fetchall())

    # ── points ──
    def add_points(self, run_id: int, family: str, coords: Sequence[Coord]) -> None:
        """Add points (λ values, or a simplex sweep's weights) as pending; known ones are kept."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO points(run_id, family, lam, weights, status)"
                " VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, family, *point_key(x)) for x in coords],
            )

    def points(self, run_id: int, *, status: str | None = None) -> list[PointRecord]:
        sql = (
            "SELECT id, run_id, family, lam, status, seconds, weights FROM points"
            " WHERE run_id = ?"
        )
        args: list[Any] = [run_id]
        if status:
            sql += " AND status = ?"
            args.append(status)
        rows = self._conn.execute(sql + " ORDER BY family, lam, id", args).fetchall()
        return [PointRecord(*r[:6], parse_weights_text(r[6])) for r in rows]

    def claim(self, run_id: int, family: str, coord: Coord, worker: str | None = None) -> int | None:
        """Mark a point as ours to compute; None if done or held by a live process."""
        from calmerge.coords import coord_label

        worker = worker or worker_id()
        with self._tx() as c:
            row = c.execute(
                "SELECT id, status, worker, heartbeat FROM points"
                " WHERE run_id = ? AND family = ? AND lam = ? AND weights = ?",
                (run_id, family, *point_key(coord)),
            ).fetchone()
            if row is None:
                raise StoreError(
                    f"point {family} {coord_label(coord)} is not part of run {run_id}",
                    "add it with add_points first",
                )
            pid, status, holder, beat = row
            if status == "done":
                return None
            fresh = beat is not None and time.time() - beat < STALE_SECONDS
            if status == "running" and holder != worker and fresh and _pid_alive(holder):
                return None
            c.execute(
                "UPDATE points SET status = 'running', worker = ?, heartbeat = ? WHERE id = ?",
                (worker, time.time(), pid),
            )
            return int(pid)

    def release(self, point_id: int) -> None:
        """Give a claim back (e.g. on Ctrl-C) so another process may take it at once."""
        with self._tx() as c:
            c.execute(
                "UPDATE points SET status = 'pending', worker = NULL WHERE id = ? AND status = 'running'",
                (point_id,),
            )

    def save_splits(
        self,
        point_id: int,
        *,
        metrics: dict[str, dict[str, tuple[float, float, float]]],
        predictions: dict[str, Sequence[Prediction]],
        generations: dict[str, list[str]] | None = None,
    ) -> None:
        """Write some splits of a point that is still being computed — one transaction.

        A multi-task sweep saves each task as it is scored, so a killed point resumes with the
        tasks it had finished (their rows are kept; the point stays unfinished until
        `finish_point`). The splits written replace any earlier rows of the same splits;
        `generations` (by prompt id) are added beside the point's others, replacing those of
        the same prompts (a search samples a candidate's prompts rung by rung).
        """
        with self._tx() as c:
            self._write_splits(c, point_id, metrics, predictions)
            for pid in generations or {}:
                c.execute("DELETE FROM generations WHERE point_id = ? AND prompt_id = ?",
                          (point_id, pid))
            self._write_generations(c, point_id, generations)

    @staticmethod
    def _write_generations(c: sqlite3.Connection, point_id: int,
                           generations: dict[str, list[str]] | None) -> None:
        c.executemany(
            "INSERT INTO generations(point_id, prompt_id, k, text) VALUES (?, ?, ?, ?)",
            [(point_id, pid, k, text) for pid, texts in (generations or {}).items()
             for k, text in enumerate(texts)],
        )

    @staticmethod
    def _write_splits(
        c: sqlite3.Connection,
        point_id: int,
        metrics: dict[str, dict[str, tuple[float, float, float]]],
        predictions: dict[str, Sequence[Prediction]],
    ) -> None:
        for split in {*metrics, *predictions}:
            c.execute("DELETE FROM metrics WHERE point_id = ? AND split = ?", (point_id, split))
            c.execute(
                "DELETE FROM predictions WHERE point_id = ? AND split = ?", (point_id, split)
            )
        c.executemany(
            "INSERT INTO metrics(point_id, split, name, value, lo, hi) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (point_id, split, name, _num(v), _num(lo), _num(hi))
                for split, ms in metrics.items()
                for name, (v, lo, hi) in ms.items()
            ],
        )
        c.executemany(
            "INSERT INTO predictions(point_id, split, idx, item_id, answer, pred, confidence,"
            " logprobs_json, score, weight) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    point_id,
                    split,
                    i,
                    p.item_id,
                    p.answer,
                    p.pred,
                    p.confidence,
                    json.dumps([_num(x) for x in p.logprobs]),
                    _num(p.score),
                    _num(p.weight),
                )
                for split, preds in predictions.items()
                for i, p in enumerate(preds)
            ],
        )

    def finish_point(
        self,
        point_id: int,
        *,
        metrics: dict[str, dict[str, tuple[float, float, float]]],
        predictions: dict[str, Sequence[Prediction]],
        generations: dict[str, list[str]] | None = None,
        seconds: float | None = None,
        keep: Sequence[str] = (),
    ) -> None:
        """Write everything a point produced and mark it done — one transaction.

        Rows of an earlier, interrupted attempt are dropped first, except the splits in `keep`
        (tasks that attempt finished and saved, which this one did not recompute).
        """
        with self._tx() as c:
            kept = list(keep)
            marks = ",".join("?" * len(kept))
            spare = f" AND split NOT IN ({marks})" if kept else ""
            c.execute(f"DELETE FROM metrics WHERE point_id = ?{spare}", (point_id, *kept))
            c.execute(f"DELETE FROM predictions WHERE point_id = ?{spare}", (point_id, *kept))
            c.execute("DELETE FROM generations WHERE point_id = ?", (point_id,))
            self._write_splits(c, point_id, metrics, predictions)
            self._write_generations(c, point_id, generations)
            c.execute(
                "UPDATE points SET status = 'done', worker = NULL, heartbeat = ?, seconds = ?"
                " WHERE id = ?",
                (time.time(), seconds, point_id),
            )

    def metrics(self, point_id: int) -> dict[str, dict[str, tuple[float, float, float]]]:
        out: dict[str, dict[str, tuple[float, float, float]]] = {}
        rows = self._conn.execute(
            "SELECT split, name, value, lo, hi FROM metrics WHERE point_id = ? ORDER BY split, name",
            (point_id,),
        )
        for split, name, v, lo, hi in rows:
            out.setdefault(split, {})[name] = (_flt(v), _flt(lo), _flt(hi))
        return out

    def predictions(self, point_id: int, split: str) -> list[Prediction]:
        rows = self._conn.execute(
            "SELECT item_id, answer, pred, confidence, logprobs_json, score, weight"
            " FROM predictions WHERE point_id = ? AND split = ? ORDER BY idx",
            (point_id, split),
        )
        return [
            Prediction(r[0], r[1], r[2], r[3], [_flt(x) for x in json.loads(r[4])], r[5], r[6])
            for r in rows
        ]

    def prediction_splits(self, point_id: int) -> set[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT split FROM predictions WHERE point_id = ?", (point_id,)
        )
        return {r[0] for r in rows}

    def generations(self, point_id: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        rows = self._conn.execute(
            "SELECT prompt_id, text FROM generations WHERE point_id = ? ORDER BY prompt_id, k",
            (point_id,),
        )
        for pid, text in rows:
            out.setdefault(pid, []).append(text)
        return out

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _read_only(path: Path) -> StoreError:
    return StoreError(
        f"{path}: the results store is read-only",
        "make it and its folder writable (chmod u+w), or copy it to a writable --store path",
    )


def _inspect(path: Path) -> int:
    """Check an existing file is a calmerge store before anything writes to it; its
    application id. A foreign SQLite database, another schema version, a corrupt page or a
    read-only file is refused with one line and left byte for byte as it was: it is read
    through a read-only connection (`immutable=1` when no -wal file exists, so not even a
    -shm file is created), with `PRAGMA quick_check`.
    """
    hint = "choose another --store path"
    with path.open("rb") as fh:
        head = fh.read(100)
    if not head.startswith(b"SQLite format 3\x00") or len(head) < 100:
        raise StoreError(f"{path}: not a calmerge results store (not an SQLite database)", hint)
    app_id = int.from_bytes(head[68:72], "big", signed=True)
    if app_id not in (0, APPLICATION_ID):
        raise StoreError(
            f"{path}: another application's SQLite database (application_id {app_id:#x}),"
            " not a calmerge results store",
            hint,
        )
    wal = Path(f"{path}-wal")
    uri = f"{path.resolve().as_uri()}?mode=ro" + ("" if wal.exists() else "&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60.0)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path}: the results store is corrupt or unreadable ({exc})",
            "restore it from a backup, or choose another --store path",
        ) from None
    if check != "ok":
        raise StoreError(
            f"{path}: the results store is corrupt ({check.splitlines()[0]})",
            "restore it from a backup, or choose another --store path",
        )
    tables.discard("sqlite_sequence")
    if tables and (version is None or not tables <= _TABLES):
        raise StoreError(
            f"{path}: another application's SQLite database (tables:"
            f" {', '.join(sorted(tables)[:3])}), not a calmerge results store",
            hint,
        )
    if version is not None and version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path}: results store schema version {version}; this calmerge reads version"
            f" {SCHEMA_VERSION}",
            "open it with the calmerge version that wrote it, or choose another --store path",
        )
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise _read_only(path)
    return app_id


def _num(x: float | None) -> float | None:
    """NaN is stored as NULL (SQLite has no NaN); read back as NaN by `_flt`."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _flt(x: float | None) -> float:
    return float("nan") if x is None else float(x)
