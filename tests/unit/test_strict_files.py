"""Strict files (issue 14): safetensors headers agree with `safetensors.safe_open` on every
valid file and are refused like it on invalid ones; shards stay inside their model directory;
pickles load only with --allow-pickle; SQLite files that are not calmerge stores stay
untouched."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import make_model

from calmerge.dtypes import dtype_name
from calmerge.errors import CheckpointError, StoreError
from calmerge.io.models import open_checkpoint, open_tokenizer_source
from calmerge.io.safetensors import read_safetensors_header
from calmerge.results.store import APPLICATION_ID, ResultStore


def _agrees(f: Path) -> None:
    ours, _ = read_safetensors_header(f)
    with safe_open(f, "pt") as st:
        names = list(st.keys())
        assert sorted(ours) == sorted(names)
        for name in names:
            sl = st.get_slice(name)
            assert list(ours[name].shape) == list(sl.get_shape()), name
            assert dtype_name(ours[name].tag) == str(st.get_tensor(name).dtype).removeprefix("torch.")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_header_agrees_with_safe_open_on_fixtures(tmp_path, arch):
    m = make_model(tmp_path / arch, seed=0, arch=arch, max_shard_size="100KB")
    shards = sorted(m.glob("*.safetensors"))
    assert len(shards) > 1
    for f in shards:
        _agrees(f)


def test_header_agrees_with_safe_open_on_edge_cases(tmp_path):
    f = tmp_path / "edge.safetensors"
    save_file(
        {
            "scalar": torch.tensor(3.0),
            "empty": torch.zeros(0, 4),
            "also_empty": torch.zeros(3, 0, dtype=torch.bfloat16),
            "ints": torch.arange(6, dtype=torch.int64).reshape(2, 3),
            "flags": torch.tensor([True, False]),
            "half": torch.ones(5, dtype=torch.float16),
        },
        f,
        metadata={"format": "pt", "note": "x"},
    )
    _agrees(f)


def _raw_file(path: Path, header: str, data: bytes, pad: bytes = b" ") -> Path:
    raw = header.encode()
    raw += pad * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_key_order_and_null_metadata_accepted_like_the_library(tmp_path):
    """The library sorts entries by offsets before validating: JSON key order is free."""
    header = json.dumps({
        "__metadata__": None,
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": "ignored"},
    })
    f = _raw_file(tmp_path / "order.safetensors", header, bytes(16))
    _agrees(f)


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
         ' "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', 12, "'b' has invalid offsets"),
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', 12, "leaves a gap"),
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}', 8, "'a'"),
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 12, "bytes from its header, found"),
        ('{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', 4, "shape [True]"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}', 4, "data_offsets"),
        ('{"a": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}', 4, "'U16'"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": [1]}', 4, "__metadata__"),
        ('"just a string"', 0, "not an object"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": Infinity}}', 4, "Infinity"),
    ],
)
def test_invalid_headers_refused_by_us_and_the_library(tmp_path, header, data, words):
    f = _raw_file(tmp_path / "bad.safetensors", header, bytes(data))
    with pytest.raises(CheckpointError) as exc:
        read_safetensors_header(f)
    assert words in str(exc.value) and "bad.safetensors" in str(exc.value)
    library_refuses = True
    try:
        with safe_open(f, "pt"):
            library_refuses = False
    except Exception:
        pass
    # where the library is silent about a dtype we do not support (U16), we are stricter
    assert library_refuses or "U16" in header


def test_duplicate_key_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    f = _raw_file(tmp_path / "dup.safetensors", f'{{"a": {entry}, "a": {entry}}}', bytes(4))
    with pytest.raises(CheckpointError, match="names 'a' twice"):
        read_safetensors_header(f)


def test_hub_cache_snapshot_symlinks_into_blobs_are_inside(tmp_path):
    """A hub snapshot's files are symlinks into the repository's blobs: that is inside."""
    src = make_model(tmp_path / "src", seed=0)
    repo = tmp_path / "models--x--y"
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in src.iterdir():
        blob = repo / "blobs" / f.name
        f.rename(blob)
        os.symlink(Path("../../blobs") / f.name, snap / f.name)
    assert open_checkpoint(snap).tensor_names


def _pickle_only(src: Path) -> Path:
    from safetensors.torch import load_file

    tensors = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    torch.save(tensors, src / "pytorch_model.bin")
    return src


def test_tokenizer_source_never_unpickles(tmp_path, monkeypatch):
    m = _pickle_only(make_model(tmp_path / "tok", seed=0))

    def no_load(*a, **k):
        raise AssertionError("torch.load was called for a tokenizer source")

    monkeypatch.setattr(torch, "load", no_load)
    ckpt = open_tokenizer_source(m)
    assert ckpt.file("tokenizer.json").is_file()


def test_merge_with_pickle_only_tokenizer_source_needs_no_flag(tiny_pair, tmp_path):
    from calmerge.merge.engine import pair_config, run_merge

    tok = _pickle_only(make_model(tmp_path / "tok", seed=0))
    cfg = pair_config(*tiny_pair, 0.5).model_copy(update={"tokenizer_source": str(tok)})
    out = run_merge(cfg, tmp_path / "out", quiet=True).path
    assert (out / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()


def test_load_model_refuses_pickle_only_without_flag(tmp_path):
    from calmerge.eval.loading import load_model

    m = _pickle_only(make_model(tmp_path / "p", seed=0))
    with pytest.raises(CheckpointError, match="weights are pickled"):
        load_model(m)
    model, _ = load_model(m, allow_pickle=True)
    assert model is not None


# ── stores ──
def test_new_store_is_stamped(tmp_path):
    ResultStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()
    assert (tmp_path / "s.db").read_bytes()[68:72] == b"CALM"


def test_store_of_an_earlier_version_opens_and_is_stamped(tmp_path):
    f = tmp_path / "old.db"
    store = ResultStore(f)
    run = store.get_or_create_run("h", "n", {}, {})
    store._conn.execute("PRAGMA application_id = 0")  # as written before the id existed
    store.close()
    assert f.read_bytes()[68:72] == bytes(4)
    with ResultStore(f) as again:
        assert again.run().id == run.id
    assert f.read_bytes()[68:72] == b"CALM"


@pytest.mark.parametrize("wal", [False, True])
def test_foreign_database_left_untouched(tmp_path, wal):
    f = tmp_path / "app.db"
    conn = sqlite3.connect(f)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    before = f.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(StoreError, match="another application"):
        ResultStore(f)
    assert f.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing  # no -wal, no -shm, no journal
    conn = sqlite3.connect(f"{f.as_uri()}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == ("wal" if wal else "delete")
    conn.close()


def _make_read_only(path) -> None:
    """chmod for users; root ignores modes, so it gets the immutable flag (ext4 and most
    Linux filesystems), which stops root's writes too."""
    path.chmod(0o444)
    if os.geteuid() == 0:
        import subprocess

        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"root, and no immutable flag here: {done.stderr.decode().strip()}")


def test_read_only_store(tmp_path):
    f = tmp_path / "ro.db"
    ResultStore(f).close()
    before = f.read_bytes()
    _make_read_only(f)
    try:
        with pytest.raises(StoreError, match="read-only"):
            ResultStore(f)
        assert f.read_bytes() == before
    finally:
        if os.geteuid() == 0:  # pytest must be able to delete tmp_path later
            import subprocess

            subprocess.run(["chattr", "-i", str(f)], capture_output=True)
