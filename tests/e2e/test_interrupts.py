"""Ctrl-C and SIGTERM, sent for real to a running `calmerge`: exit 130 / 143 with one line that
says what was kept and how to go on, nothing half-written, and a re-run resumes.

(Typer used to turn Ctrl-C into a *returned* exit code that the CLI ignored: exit 0, silently.)
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import ENV
from test_sweep import write_items


def _default_sigint() -> None:
    """The child starts with Ctrl-C's default disposition. A suite launched in the background
    (`make test &`, nohup) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler — correctly: an ignored signal stays ignored — so the test would
    measure how it was launched instead of calmerge."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_done_points(store: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Block until the sweep has committed `n` points (so the signal lands mid-sweep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if store.exists():
            try:
                with sqlite3.connect(store) as conn:
                    done = conn.execute("SELECT COUNT(*) FROM points WHERE status='done'").fetchone()
                if done[0] >= n:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError("the sweep committed no point in time")


def _sweep(pair, data: Path, tmp: Path) -> list[str]:
    base, aligned = pair
    return [sys.executable, "-m", "calmerge.cli", "sweep", "--base", str(base), "--aligned",
            str(aligned), "--data", str(data), "--grid", "0:1:0.05", "--no-refine", "--device",
            "cpu", "--quiet", "--store", str(tmp / "runs.db"), "--out", str(tmp / "report")]


@pytest.mark.parametrize("sig,code,how", [(signal.SIGINT, 130, "Ctrl-C"),
                                          (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signalled_sweep_says_what_it_kept_and_resumes(tiny_pair, tmp_path, sig, code, how):
    data = write_items(tmp_path / "items.jsonl", 48)
    argv = _sweep(tiny_pair, data, tmp_path)
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    _wait_for_done_points(tmp_path / "runs.db", 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines == [f"error: interrupted ({how}): every finished point is in the store; run the"
                     " same command again to resume"], err
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        kept = conn.execute("SELECT COUNT(*) FROM points WHERE status='done'").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert 2 <= kept < 21
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{21 - kept} points computed, {kept} already in" in again.stdout


def test_an_interrupted_eval_writes_nothing(tiny_pair, tmp_path):
    data = write_items(tmp_path / "items.jsonl", 2000)
    prompts = tmp_path / "prompts.jsonl"  # far more sampling than the 4 s before the signal
    prompts.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"Fruit {i}?"})
                                 for i in range(400)) + "\n")
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "calmerge.cli", "eval", str(tiny_pair[1]), "--data", str(data),
            "--prompts", str(prompts), "--samples", "16", "--max-new-tokens", "64",
            "--no-embed", "--device", "cpu", "--output", str(out)]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)
    time.sleep(4)  # past start-up, inside scoring or sampling
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C): nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl", "prompts.jsonl"]


def test_an_interrupted_merge_leaves_no_output(tiny_pair, tmp_path, monkeypatch, capsys):
    """Ctrl-C inside the merge (raised where the tensors stream): no output, no temporary
    directory, exit 130 and the line says so."""
    from calmerge.cli import main
    from calmerge.merge import stream

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "run_kernels", interrupted)
    monkeypatch.setattr(stream, "_run_torch", interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["merge", "--base", str(tiny_pair[0]), "--aligned", str(tiny_pair[1]), "--lam",
              "0.5", "-o", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "error: interrupted (Ctrl-C): nothing was written (the partial output was removed)")
    assert list(tmp_path.iterdir()) == []
