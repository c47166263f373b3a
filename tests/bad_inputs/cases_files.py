"""Bad files: safetensors headers the safetensors library refuses, indexes that point outside
the model or at the wrong shard, pickles reached without --allow-pickle, and SQLite files that
are not calmerge stores (each left byte for byte as it was)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import make_model

# Bound before `bad_inputs.cases` is imported, filled in place at the end: when cases.py runs as
# a script it imports itself again as `bad_inputs.cases`, which collects this module while it is
# still half-imported — it must find a CASES list then, not an AttributeError.
CASES: list = []

from bad_inputs.cases import GOOD, OUT, Case, copy_model, eval_argv, items_file, merge_argv  # noqa: E402

# ── safetensors headers ──
HeaderFn = Callable[[dict], "dict | list | bytes"]


def rewrite_header(model: Path, fn: HeaderFn, pad: bytes = b" ") -> Path:
    """Replace model.safetensors' header by `fn(header)` (a JSON value, or raw bytes), padded
    to 8 bytes with `pad`; the tensor bytes stay as they were."""
    f = model / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    new = fn(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    raw += pad * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return model


def header_case(edit: HeaderFn, pad: bytes = b" ") -> Callable:
    def build(tmp, pair):
        m = rewrite_header(copy_model(pair[1], tmp / "aligned"), edit, pad)
        return merge_argv(pair[0], m)

    return build


NORM = "model.norm.weight"


def _shift(delta: int) -> HeaderFn:
    def edit(h):
        b, e = h[NORM]["data_offsets"]
        assert b >= 8, "the norm must not be the first tensor"
        h[NORM]["data_offsets"] = [b + delta, e + delta]
        return h

    return edit


def _set(key: str, value) -> HeaderFn:
    def edit(h):
        h[NORM][key] = value
        return h

    return edit


def _duplicate(h):
    text = json.dumps(h)
    return (text[:-1] + f', "{NORM}": ' + json.dumps(h[NORM]) + "}").encode()


def _metadata_not_str(h):
    h["__metadata__"] = {"format": 1}
    return h


def _nan(h):
    h[NORM]["note"] = float("nan")  # json.dumps writes the non-JSON constant NaN
    return h


def _bad_utf8(h):
    text = json.dumps(h).encode()
    return text.replace(NORM.encode(), b"model.norm.\xff\xfe", 1)


def _no_offsets(h):
    del h[NORM]["data_offsets"]
    return h


# ── sharded checkpoints and their index ──
INDEX = "model.safetensors.index.json"


def sharded(tmp, pair) -> tuple[Path, dict, list[Path]]:
    m = make_model(tmp / "sharded", seed=1, base=pair[0], scale=0.2, max_shard_size="100KB")
    index = json.loads((m / INDEX).read_text())
    return m, index, sorted(m.glob("model-*.safetensors"))


def write_index(m: Path, index: dict) -> None:
    (m / INDEX).write_text(json.dumps(index))


def index_escape(tmp, pair):
    m, index, shards = sharded(tmp, pair)
    outside = tmp / "outside.safetensors"
    shutil.copyfile(shards[0], outside)
    for k, v in index["weight_map"].items():
        if v == shards[0].name:
            index["weight_map"][k] = "../outside.safetensors"
    write_index(m, index)
    return merge_argv(pair[0], m)


def index_absolute(tmp, pair):
    m, index, shards = sharded(tmp, pair)
    outside = tmp / "elsewhere" / shards[0].name
    outside.parent.mkdir()
    shutil.copyfile(shards[0], outside)
    for k, v in index["weight_map"].items():
        if v == shards[0].name:
            index["weight_map"][k] = str(outside)
    write_index(m, index)
    return merge_argv(pair[0], m)


def shard_symlink(tmp, pair):
    m, _, shards = sharded(tmp, pair)
    outside = tmp / "linked.safetensors"
    shutil.move(shards[0], outside)
    os.symlink(outside, shards[0])
    return merge_argv(pair[0], m)


def single_symlink(tmp, pair):
    m = copy_model(pair[1], tmp / "aligned")
    outside = tmp / "weights-elsewhere.safetensors"
    shutil.move(m / "model.safetensors", outside)
    os.symlink(outside, m / "model.safetensors")
    return merge_argv(pair[0], m)


def tensor_elsewhere(tmp, pair):
    m, index, shards = sharded(tmp, pair)
    wm = index["weight_map"]
    # a tensor of a shard that keeps other tensors (so the shard is still opened), moved in the
    # index to the last shard
    name = next(k for k, v in sorted(wm.items()) if v != shards[-1].name
                and sum(x == v for x in wm.values()) > 1)
    wm[name] = shards[-1].name
    write_index(m, index)
    return merge_argv(pair[0], m)


def tensor_unlisted(tmp, pair):
    m, index, _shards = sharded(tmp, pair)
    index["weight_map"].pop("model.layers.0.mlp.down_proj.weight")
    write_index(m, index)
    return merge_argv(pair[0], m)


def index_names_absent(tmp, pair):
    m, index, shards = sharded(tmp, pair)
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = shards[0].name
    write_index(m, index)
    return merge_argv(pair[0], m)


def index_not_a_name(tmp, pair):
    m, index, _shards = sharded(tmp, pair)
    index["weight_map"]["model.norm.weight"] = 7
    write_index(m, index)
    return merge_argv(pair[0], m)


# ── pickles ──
def pickle_only(src: Path, dst: Path, *, tokenizer: bool = True) -> Path:
    m = copy_model(src, dst)
    tensors = load_file(m / "model.safetensors")
    (m / "model.safetensors").unlink()
    torch.save(tensors, m / "pytorch_model.bin")
    if not tokenizer:
        for f in m.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_")):
                f.unlink()
    return m


def tokenizer_source_no_tokenizer(tmp, pair):
    src = pickle_only(pair[1], tmp / "weights-only", tokenizer=False)
    y = tmp / "m.yml"
    y.write_text(f"merge_method: linear\nmodels:\n  - model: {pair[0]}\n    parameters:\n"
                 f"      weight: 0.5\n  - model: {pair[1]}\n    parameters:\n      weight: 0.5\n"
                 f"tokenizer_source: {src}\n")
    return ["merge", str(y), "-o", OUT]


def eval_pickle_only(tmp, pair):
    m = pickle_only(pair[1], tmp / "pickled")
    return eval_argv(m, items_file(tmp, [GOOD, {**GOOD, "id": "b"}]))


# ── results stores that are not calmerge's ──
def _db(path: Path, *sql: str) -> Path:
    conn = sqlite3.connect(path)
    for s in sql:
        conn.execute(s)
    conn.commit()
    conn.close()
    return path


def store_foreign_tables(tmp, pair):
    f = _db(tmp / "app.db", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
            "INSERT INTO users(name) VALUES ('ada')")
    return ["runs", "--store", str(f)]


def store_foreign_app_id(tmp, pair):
    f = _db(tmp / "other.db", "PRAGMA application_id = 305419896")  # 0x12345678
    return ["runs", "--store", str(f)]


def store_foreign_wal(tmp, pair):
    f = _db(tmp / "walapp.db", "PRAGMA journal_mode=WAL", "CREATE TABLE events (t REAL)")
    return ["results", "--store", str(f)]


def _calmerge_store(path: Path, *sql: str) -> Path:
    from calmerge.results.store import ResultStore

    store = ResultStore(path)
    run = store.get_or_create_run("abc123", "demo", {}, {})
    store.add_points(run.id, "linear", [0.0, 0.5, 1.0])
    for s in sql:
        store._conn.execute(s)
    store.close()
    return path


def store_schema_version(tmp, pair):
    f = _calmerge_store(tmp / "future.db", "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    return ["runs", "--store", str(f)]


def store_corrupt_page(tmp, pair):
    f = _calmerge_store(tmp / "corrupt.db")
    data = bytearray(f.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    data[page * 2 : page * 3] = b"\xa5" * page  # the third page: a table's b-tree
    f.write_bytes(bytes(data))
    return ["runs", "--store", str(f)]


def store_sweep_onto_foreign(tmp, pair):
    f = _db(tmp / "notes.db", "CREATE TABLE notes (body TEXT)")
    base, aligned = pair
    return ["sweep", "--base", str(base), "--aligned", str(aligned), "--data",
            str(items_file(tmp, [GOOD])), "--store", str(f), "--out", OUT, "--quiet"]


CASES += [
    Case("st-overlapping-offsets", "Safetensors tensor overlapping the one before it", header_case(_shift(-4)), f"'{NORM}' has invalid offsets"),
    Case("st-gap-in-offsets", "Safetensors offsets leaving a gap", header_case(_shift(4)), "leaves a gap"),
    Case("st-duplicate-name", "Safetensors header naming one tensor twice", header_case(_duplicate), f"'{NORM}' twice"),
    Case("st-negative-shape", "Negative dimension in a safetensors shape", header_case(_set("shape", [-64])), "shape [-64]"),
    Case("st-float-shape", "Non-integer dimension in a safetensors shape", header_case(_set("shape", [64.0])), "shape [64.0]"),
    Case("st-inconsistent-shape", "Shape × dtype size not the tensor's byte count", header_case(_set("shape", [32])), "inconsistent offsets"),
    Case("st-unknown-dtype", "Unknown dtype in a safetensors header", header_case(_set("dtype", "F33")), "'F33'"),
    Case("st-missing-offsets", "Tensor entry without data_offsets", header_case(_no_offsets), "no 'data_offsets'"),
    Case("st-header-not-object", "Safetensors header that is a JSON list", header_case(lambda h: [h]), "not an object"),
    Case("st-metadata-not-strings", "`__metadata__` not a str→str map", header_case(_metadata_not_str), "'__metadata__'"),
    Case("st-nan-in-header", "Non-JSON constant NaN in a safetensors header", header_case(_nan), "NaN"),
    Case("st-bad-utf8", "Safetensors header that is not UTF-8", header_case(_bad_utf8), "not valid UTF-8"),
    Case("st-nul-padding", "Safetensors header padded with NUL bytes, not spaces", header_case(lambda h: h, pad=b"\0"), "not valid JSON"),
    Case("index-path-escapes", "Index names a shard in `../`", index_escape, "outside the model directory"),
    Case("index-absolute-path", "Index names a shard by absolute path", index_absolute, "outside the model directory"),
    Case("shard-symlink-outside", "Shard is a symlink to a file outside the model directory", shard_symlink, "is a symlink to"),
    Case("weights-symlink-outside", "model.safetensors is a symlink outside the model directory", single_symlink, "is a symlink to"),
    Case("index-wrong-shard", "Tensor in a shard other than the one the index names", tensor_elsewhere, "puts it in"),
    Case("index-unlisted-tensor", "Shard holds a tensor the index does not list", tensor_unlisted, "'model.layers.0.mlp.down_proj.weight' is in shard"),
    Case("index-absent-tensor", "Index names a tensor its shard lacks", index_names_absent, "which lacks it"),
    Case("index-not-a-name", "Index maps a tensor to a non-string", index_not_a_name, "not a file name"),
    Case("tokenizer-source-no-tokenizer", "`tokenizer_source` holding only pickled weights, no tokenizer", tokenizer_source_no_tokenizer, "no tokenizer files"),
    Case("eval-pickle-only", "`calmerge eval` on a pickle-only model without --allow-pickle", eval_pickle_only, "weights are pickled"),
    Case("store-foreign-tables", "Store that is another application's SQLite database", store_foreign_tables, "(tables: users)"),
    Case("store-foreign-app-id", "Store with another application_id", store_foreign_app_id, "application_id 0x12345678"),
    Case("store-foreign-wal", "Another application's WAL-mode database", store_foreign_wal, "(tables: events)"),
    Case("store-schema-version", "Store written with another schema version", store_schema_version, "schema version 99"),
    Case("store-corrupt-page", "Store with a corrupt page", store_corrupt_page, "corrupt"),
    Case("sweep-onto-foreign-db", "`sweep --store` naming another application's database", store_sweep_onto_foreign, "notes.db"),
]
