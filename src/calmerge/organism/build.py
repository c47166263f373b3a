"""Build (or reuse) the organism: world → corpus → base → SFT → DPO variants → evaluation files.

Every stage is kept as its own HF checkpoint (same architecture, same tokenizer): `base`, `sft`,
and one DPO'd child of `sft` per answer policy — `aligned` (confident; the demo's pair is
base/aligned) and `hedged` — so the base–SFT–DPO triangle and soups of preferences can be swept.

A build is keyed by the content hash of (recipe, seed, organism source code) and lives under
the cache root; it is assembled in a temporary directory and renamed into place only when
complete, so an interrupted build leaves nothing that could be mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.errors import OutputError
from calmerge.organism.recipe import Recipe, build_hash, code_version, default_recipe

MARKER = "organism.json"

#: Directory of each preference variant (a key of `corpus.POLICIES`). The confident one keeps
#: the name `aligned`: it is the demo's aligned model.
VARIANT_DIRS = {"confident": "aligned", "hedged": "hedged"}


@dataclass(frozen=True)
class OrganismPaths:
    """Where a built organism's parts are: four HF checkpoints and three JSONL files.

    `base` (pretrained), `sft` (its supervised fine-tune), `aligned` (SFT + DPO toward confident
    answers) and `variants` (policy name → checkpoint, every DPO'd child of `sft`; "confident" is
    `aligned` itself, "hedged" the SFT model DPO'd toward hedged answers).
    """

    root: Path
    base: Path
    aligned: Path
    dev: Path
    test: Path
    prompts: Path
    sft: Path
    variants: dict[str, Path]

    @classmethod
    def at(cls, root: Path) -> OrganismPaths:
        root = Path(root)
        variants = {name: root / sub for name, sub in VARIANT_DIRS.items()}
        return cls(root, root / "base", variants["confident"], root / "dev.jsonl",
                   root / "test.jsonl", root / "prompts.jsonl", root / "sft", variants)

    @property
    def checkpoints(self) -> dict[str, Path]:
        """Every model of the build by stage name: base, sft, then each variant."""
        return {"base": self.base, "sft": self.sft, **self.variants}

    def metadata(self) -> dict[str, Any]:
        """The build record: recipe, seed, hash, timings, probe history, training losses."""
        return json.loads((self.root / MARKER).read_text())


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """`cache_dir`, else `$CALMERGE_CACHE/organism`, else `~/.cache/calmerge/organism`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("CALMERGE_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "calmerge") / "organism"


def build_organism(
    out: Path | str | None = None,
    *,
    seed: int = 0,
    recipe: Recipe | None = None,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    force: bool = False,
) -> OrganismPaths:
    """The organism for (recipe, seed): from the cache if built before, else built now.

    With `out`, a copy is placed there too (an existing organism there is replaced only with
    `force`; any other existing path is refused). Returns the paths of the copy in use.
    """
    recipe = recipe or default_recipe()
    if out is not None:
        _check_out(Path(out), force)
    key = build_hash(recipe, seed)
    cached = cache_root(cache_dir) / key
    if not (cached / MARKER).is_file():
        _atomic_dir(cached, lambda tmp: _build_into(tmp, recipe, seed, key, progress))
    if out is None:
        return OrganismPaths.at(cached)
    out = Path(out)
    _atomic_dir(out, lambda tmp: shutil.copytree(cached, tmp, dirs_exist_ok=True), replace=True)
    return OrganismPaths.at(out)


def _check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite anything but an earlier organism, and that only with --force."""
    if not out.exists():
        return
    if out.is_file():
        raise OutputError(f"{out}: is a file", "give a directory path for --out")
    if not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise OutputError(f"{out}: exists and is not an organism", "choose an empty or new path")
    if not force:
        raise OutputError(f"{out}: an organism already exists there", "pass --force to replace it")


def _atomic_dir(target: Path, fill: Any, *, replace: bool = False) -> None:
    """Fill a temporary sibling of `target`, then rename it into place.

    Cache entries: the first finisher wins and a concurrent twin is discarded. `replace`: an
    existing `target` is moved aside only once the new one is complete, then deleted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    old = tmp.with_suffix(".old")
    try:
        fill(tmp)
        if replace and target.exists():
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():
                raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror})", "check permissions/space") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Use `n` torch threads inside the block (training on 2 cores), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _save(model: Any, tokenizer: Any, path: Path, vocab: dict[str, int]) -> None:
    """An ordinary HF checkpoint; generation stops at either end token (plain or chat)."""
    from transformers.utils import logging as hf_logging

    from calmerge.organism.corpus import BOS, END, EOS, PAD

    hf_logging.disable_progress_bar()  # our own bars; a tqdm bar per file is noise
    gen = model.generation_config
    gen.bos_token_id = vocab[BOS]
    gen.eos_token_id = [vocab[EOS], vocab[END]]
    gen.pad_token_id = vocab[PAD]
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _stage_record(seconds: float, losses: list[float]) -> dict[str, Any]:
    """What organism.json keeps of a post-training stage: time, steps and its loss curve's ends."""
    return {
        "seconds": round(seconds, 2),
        "steps": len(losses),
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": [round(x, 4) for x in losses[-5:]],
    }


def _build_into(root: Path, recipe: Recipe, seed: int, key: str, progress: bool) -> None:
    """Every stage of a build, written into `root`."""
    from calmerge.organism import corpus
    from calmerge.organism.align import dpo, sft
    from calmerge.organism.tokenizer import build_tokenizer, vocabulary
    from calmerge.organism.train import doc_batches, make_probe, new_model, pretrain
    from calmerge.organism.world import make_world

    threads = int(os.environ.get("CALMERGE_THREADS", min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    words = corpus.base_words()
    world = make_world(recipe.world, seed, set(words))
    vocab = vocabulary(words, [e.name for e in world.entities])
    tokenizer = build_tokenizer(vocab)
    paths = OrganismPaths.at(root)
    w = recipe.world
    for role, path in (("dev", paths.dev), ("test", paths.test)):
        _write_jsonl(path, corpus.mc_items(world, role, w.n_choices, seed, w.para_share))
    _write_jsonl(paths.prompts, corpus.open_prompts(world, recipe.prompts, seed))
    pre, al = recipe.pretrain, recipe.align
    stages: dict[str, dict[str, Any]] = {}
    with _threads(threads), _Progress(progress) as bar:
        model = new_model(pre, vocab, seed)
        docs = corpus.documents(world, w, seed)
        probe = make_probe(world, vocab, 200, seed)
        log = pretrain(
            model, doc_batches(docs, vocab, pre.batch, pre.seq_len), probe, pre,
            on_step=bar.pretrain_tick,
        )
        stages["pretrain"] = {"seconds": round(time.perf_counter() - start, 2), "steps": log.steps,
                              "decay_start": log.decay_start,
                              "probes": [list(p) for p in log.probes]}
        _save(model.eval(), tokenizer, paths.base, vocab)
        tuned = copy.deepcopy(model)
        t = time.perf_counter()
        losses = sft(tuned, corpus.sft_examples(world, al.chat_share, seed), vocab, al, seed,
                     bar.align_tick)
        stages["sft"] = _stage_record(time.perf_counter() - t, losses)
        _save(tuned.eval(), tokenizer, paths.sft, vocab)
        for policy, path in paths.variants.items():
            child = copy.deepcopy(tuned)
            t = time.perf_counter()
            pairs = corpus.dpo_pairs(world, al.chat_share, seed, policy)
            losses = dpo(child, pairs, vocab, al, seed, _phase(bar.align_tick, policy))
            stages[f"dpo_{policy}"] = _stage_record(time.perf_counter() - t, losses)
            _save(child.eval(), tokenizer, path, vocab)
    timings = {f"{name}_s": rec["seconds"] for name, rec in stages.items()}
    timings["total_s"] = round(time.perf_counter() - start, 2)
    meta = {
        "hash": key,
        "seed": seed,
        "code_version": code_version(),
        "recipe": recipe.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": threads,
        "checkpoints": {name: str(p.relative_to(root)) for name, p in paths.checkpoints.items()},
        "timings": timings,
        "stages": stages,
    }
    (root / MARKER).write_text(json.dumps(meta, indent=1))


def _phase(tick: Any, policy: str) -> Any:
    """A progress callback that names the DPO run by its policy ("DPO hedged")."""
    return lambda phase, step, total, loss: tick(f"{phase} {policy}", step, total, loss)


class _Progress:
    """Rich progress bars with ETA for every training phase (a no-op when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import TextColumn

            from calmerge.progress import progress_bar

            self.bar = progress_bar("{task.description:<13}", TextColumn("{task.fields[info]}"))
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _update(self, phase: str, step: int, total: int, info: str) -> None:
        if self.bar is None:
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total, info="")
        self.bar.update(self.tasks[phase], completed=step, total=total, info=info)

    def pretrain_tick(self, step: int, total: int, loss: float, recall: float) -> None:
        self._update("pretrain", step, total, f"loss {loss:.3f} · fact recall {recall:.2f}")

    def align_tick(self, phase: str, step: int, total: int, loss: float) -> None:
        self._update(phase, step, total, f"loss {loss:.3f}")
