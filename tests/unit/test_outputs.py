"""io.outputs: outputs never overwrite inputs; --force replaces only what calmerge wrote; a
replacement killed half-way loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from calmerge.errors import OutputError
from calmerge.io import outputs


@pytest.fixture
def tree(tmp_path):
    model = tmp_path / "models" / "aligned"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    data = tmp_path / "items.jsonl"
    data.write_text("{}\n")
    return tmp_path, model, data


def test_relation_is_inside_contains(tree):
    root, model, data = tree
    assert outputs.relation(model, model) == "is"
    assert outputs.relation(model / "config.json", model) == "is inside"
    assert outputs.relation(model / "new" / "deeper", model) == "is inside"
    assert outputs.relation(root / "models", model) == "contains"
    assert outputs.relation(root, data) == "contains"
    assert outputs.relation(root / "elsewhere", model) is None
    assert outputs.relation(root / "models" / "aligned2", model) is None  # a prefix is no parent


def test_relation_sees_through_dotdot_relative_and_symlinks(tree, monkeypatch):
    root, model, data = tree
    assert outputs.relation(root / "models" / "x" / ".." / "aligned", model) == "is"
    monkeypatch.chdir(root / "models")
    assert outputs.relation("aligned", model) == "is"
    assert outputs.relation("./aligned/../aligned/sub", model) == "is inside"
    link = root / "link"
    link.symlink_to(model)
    assert outputs.relation(link, model) == "is"
    assert outputs.relation(link / "config.json", model) == "is inside"
    dlink = root / "data-link.jsonl"
    dlink.symlink_to(data)
    assert outputs.relation(dlink, data) == "is"


def test_relation_same_file_under_another_name(tree):
    """samefile: a hard link (as a case-insensitive filesystem's other spelling) is the file."""
    root, _, data = tree
    other = root / "ITEMS.jsonl"
    os.link(data, other)
    assert outputs.relation(other, data) == "is"


def test_check_not_input_names_both_paths(tree):
    root, model, data = tree
    inputs = [("aligned model", model), ("test data", data), ("dev data", None),
              ("hub model", "org/not-on-disk")]
    with pytest.raises(OutputError) as err:
        outputs.check_not_input(root, inputs, "-o")
    msg = err.value.one_line()
    assert f"-o {root} contains the aligned model {model}" in msg and "\n" not in msg
    with pytest.raises(OutputError, match="is the test data"):
        outputs.check_not_input(data, inputs, "--output")
    with pytest.raises(OutputError, match="is inside the aligned model"):
        outputs.check_not_input(model / "config.json", inputs, "--output")
    outputs.check_not_input(root / "fresh", inputs, "-o")  # no overlap: fine
    outputs.check_not_input(root, [("results store", data)], "--out", may_contain=True)
    with pytest.raises(OutputError, match="is the results store"):
        outputs.check_not_input(data, [("results store", data)], "--out", may_contain=True)


def test_model_inputs_include_an_adapters_bases(tmp_path):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "base")})
    )
    found = outputs.model_inputs("aligned model", adapter, tmp_path / "given-base")
    assert [p for _, p in found] == [adapter, tmp_path / "given-base", str(tmp_path / "base")]
    assert outputs.model_inputs("m", tmp_path / "plain") == [("m", tmp_path / "plain")]
    assert outputs.model_inputs("m", None) == []


def test_check_not_store_refuses_any_sqlite_file_and_its_wal(tmp_path):
    db = tmp_path / "runs.db"
    sqlite3.connect(db).execute("CREATE TABLE t(x)").connection.close()
    for target in (db, tmp_path / "runs.db-wal"):
        with pytest.raises(OutputError, match="would overwrite the results store"):
            outputs.check_not_store(target, "-o")
    text = tmp_path / "old.csv"
    text.write_text("a,b\n")
    outputs.check_not_store(text, "-o")
    outputs.check_not_store(tmp_path / "new.csv", "-o")


def test_marker_and_ownership(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    outputs.check_owned(empty, "-o")
    outputs.check_owned(tmp_path / "absent", "-o")
    mine = tmp_path / "mine"
    outputs.write_marker(mine, "model")
    (mine / "model.safetensors").write_bytes(b"x")
    data = json.loads((mine / outputs.MARKER).read_text())
    assert data["written_by"].startswith("calmerge ") and data["kind"] == "model"
    assert data["created"].endswith("+00:00")
    assert outputs.is_ours(mine)
    outputs.check_owned(mine, "-o")
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not written by calmerge") as err:
        outputs.check_owned(project, "-o")
    assert "remove it yourself" in err.value.one_line()
    (project / outputs.MARKER).write_text("not json")  # a damaged marker proves nothing
    assert not outputs.is_ours(project)
    shelf = tmp_path / "report"
    shelf.mkdir()
    (shelf / "runs.db").write_bytes(b"")
    (shelf / "runs.db-wal").write_bytes(b"")
    outputs.check_owned(shelf, "--out", keep=outputs.store_files(shelf / "runs.db", shelf))
    assert outputs.store_files(tmp_path / "elsewhere.db", shelf) == []


def _dir(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "weights").write_text(text)
    return path


def test_replace_dir_swaps_and_leaves_nothing_behind(tmp_path):
    out = _dir(tmp_path / "out", "old")
    new = _dir(tmp_path / f".out.calmerge-tmp-{os.getpid()}", "new")
    outputs.replace_dir(new, out)
    assert (out / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    fresh = _dir(tmp_path / "n2", "n2")
    outputs.replace_dir(fresh, tmp_path / "fresh")
    assert (tmp_path / "fresh" / "weights").read_text() == "n2"


_KILLED = """
import sys
from pathlib import Path
from calmerge.io.outputs import replace_dir
root = Path(sys.argv[1])
new = root / f".out.calmerge-tmp-{__import__('os').getpid()}"
new.mkdir()
(new / "weights").write_text("new")
replace_dir(new, root / "out")
"""


def test_kill_between_the_two_renames_loses_nothing(tmp_path):
    """SIGKILL at the one moment the output is aside: the next run puts the old one back."""
    _dir(tmp_path / "out", "old")
    env = {**os.environ, outputs.KILL_HOOK_ENV: "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "out" not in left and any(".calmerge-old-" in n for n in left), left
    assert any(".calmerge-tmp-" in n for n in left), left
    outputs.clean_leftovers(tmp_path)  # what the next run does first, beside its output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "weights").read_text() == "old"
    # without the hook the same replacement completes
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], check=True)
    assert (tmp_path / "out" / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_set_aside_output_is_dropped_when_the_new_one_landed(tmp_path):
    _dir(tmp_path / "out", "new")
    _dir(tmp_path / ".out.calmerge-old-999999999", "old")
    outputs.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "weights").read_text() == "new"


def test_killed_force_merge_then_next_run(tiny_pair, tmp_path):
    """The real CLI: `merge --force` killed between its renames; the next run cleans up."""
    base, aligned = tiny_pair
    out = tmp_path / "merged"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def merge(lam: str, **extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "calmerge.cli", "merge", "--base", str(base), "--aligned",
                str(aligned), "--lam", lam, "-o", str(out), "--force", "--quiet"]
        return subprocess.run(argv, env={**env, **extra}, capture_output=True, check=False)

    assert merge("0.2").returncode == 0
    first = (out / "model.safetensors").read_bytes()
    assert outputs.is_ours(out)
    assert merge("0.8", **{outputs.KILL_HOOK_ENV: "1"}).returncode == -signal.SIGKILL
    assert not out.exists()
    done = merge("0.8")
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
