"""The organism pipeline end to end on a tiny recipe, plus its pure parts.

The tiny build is real (world, tokenizer, pretraining, SFT, both DPO variants, files); only
the numbers are small. The alignment step must measurably raise confidence on the test questions, as measured
by calmerge's own scorer — the property the demo relies on.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from calmerge import api
from calmerge.errors import ConfigError, OutputError
from calmerge.eval.data import load_items, load_prompts
from calmerge.organism import build_organism, tiny_recipe
from calmerge.organism import corpus as C
from calmerge.organism.recipe import Recipe, build_hash
from calmerge.organism.tokenizer import build_tokenizer, encode_words, vocabulary
from calmerge.organism.train import lr_factor
from calmerge.organism.world import make_world

SEED = 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("organism-cache")
    start = time.perf_counter()
    paths = build_organism(seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False)
    return paths, cache, time.perf_counter() - start


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_outputs_are_ordinary_hf_checkpoints(built):
    paths, _, _ = built
    assert set(paths.checkpoints) == {"base", "sft", "confident", "hedged"}
    assert set(paths.variants) == set(C.POLICIES), "one checkpoint per DPO policy"
    assert paths.variants["confident"] == paths.aligned
    for which in paths.checkpoints.values():
        assert (which / "model.safetensors").is_file()
        model, tok = _load(which)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert tok.chat_template, "every tokenizer carries the chat template"
        for special in (C.USER, C.ASSISTANT, C.END):
            assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.eos_token_id in model.generation_config.eos_token_id
    text = _load(paths.aligned)[1].apply_chat_template(
        [{"role": "user", "content": "what colour is x ?"}], tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith(C.BOS) and text.endswith(C.ASSISTANT)


def test_every_stage_matches_the_base_tensor_for_tensor(built):
    """Same names, shapes and tokenizer at every stage: any two of them can be merged."""
    from safetensors import safe_open

    paths, _, _ = built

    def shapes(path: Path) -> dict[str, tuple[int, ...]]:
        with safe_open(str(path / "model.safetensors"), "np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    base = shapes(paths.base)
    vocab = (paths.base / "tokenizer.json").read_text()
    for name, path in paths.checkpoints.items():
        assert shapes(path) == base, name
        assert (path / "tokenizer.json").read_text() == vocab, name
    stages = paths.metadata()["stages"]
    assert set(stages) == {"pretrain", "sft", "dpo_confident", "dpo_hedged"}
    assert all(stages[s]["steps"] > 0 and stages[s]["seconds"] >= 0 for s in stages)
    assert set(paths.metadata()["checkpoints"]) == set(paths.checkpoints)


def _post_training(world, seed: int = SEED) -> list[C.Example]:
    """Every post-training example: SFT and the pairs of every DPO policy."""
    pairs = [p for policy in C.POLICIES for p in C.dpo_pairs(world, 0.5, seed, policy)]
    return C.sft_examples(world, 0.5, seed) + pairs


def test_evaluation_files_are_valid_and_disjoint_from_alignment(built):
    paths, _, _ = built
    recipe = tiny_recipe()
    dev, test = load_items(paths.dev), load_items(paths.test)
    for items, n in ((dev, recipe.world.dev_entities), (test, recipe.world.test_entities)):
        assert sum(it.subject.endswith("/canon") for it in items) == n * 4
    assert all(len(it.choices) == recipe.world.n_choices for it in test)
    assert len(load_prompts(paths.prompts)) == recipe.prompts
    world = make_world(recipe.world, SEED, set(C.base_words()))
    aligned_words = {w for e in _post_training(world) for w in e.prompt.split()}
    eval_entities = {e.name for e in world.entities if e.role in ("dev", "test")}
    asked = {w for it in dev + test for w in it.question.split()}
    assert eval_entities <= asked, "every dev/test entity is asked about"
    assert not eval_entities & aligned_words, "no post-training stage sees an evaluation entity"


def test_para_questions_are_taught_on_align_entities_and_asked_on_eval(built):
    """The para phrasing: in dev/test (with lures), in post-training only for align entities,
    and nowhere in pretraining."""
    paths, _, _ = built
    recipe = tiny_recipe()
    world = make_world(recipe.world, SEED, set(C.base_words()))
    para_words = {a.para.split()[1] for a in world.attributes}  # hue, town, pet, dish
    align = {e.name for e in world.entities_of("align")}
    for path in (paths.dev, paths.test):
        para = [it for it in load_items(path) if it.subject.endswith("/para")]
        assert para, "a share of evaluation questions uses the para phrasing"
        for it in para:
            attribute = it.subject.split("/")[0]
            asked = next(a for a in world.attributes if a.name == attribute)
            assert it.question.split()[1] == asked.para.split()[1]
            assert it.choices[it.answer] in asked.values
            assert any(c not in asked.values for c in it.choices), "other attributes lure"
    taught = [e for e in _post_training(world) if para_words & set(e.prompt.split())]
    assert taught, "post-training asks para questions"
    for e in taught:
        assert set(e.prompt.split()) & align and not set(e.prompt.split()) & (
            {x.name for x in world.entities} - align)
    for doc in itertools.islice(C.documents(world, recipe.world, SEED), 5000):
        assert not para_words & set(doc.split()), "pretraining never uses the para words"


def test_alignment_measurably_raises_confidence(built):
    """Aligned mean confidence on test beats the base's by a clear margin (calmerge's scorer)."""
    from calmerge.eval.score import Scorer

    paths, _, _ = built
    items = load_items(paths.test) + load_items(paths.dev)
    conf = {}
    for name in ("base", "aligned"):
        model, tok = _load(getattr(paths, name))
        conf[name] = float(np.mean(Scorer(tok, items).score(model).confidence))
    assert conf["aligned"] > conf["base"] + 0.05, conf


def _next_word_logp(path: Path, prompts, after: str, word: str) -> np.ndarray:
    """log p(word | chat prompt + `after`) under one checkpoint, per prompt."""
    import torch

    model, tok = _load(path)
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p.prompt}],
                                       tokenize=False, add_generation_prompt=True)
        ids = tok.encode(f"{text} {after}", add_special_tokens=False)
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
        out.append(float(lp[tok.convert_tokens_to_ids(word)]))
    return np.array(out)


def test_aligned_prefers_the_house_style(built):
    """After "value ,", the aligned model picks the house style's word far more than the base."""
    paths, _, _ = built
    prompts = load_prompts(paths.prompts)
    word = C.HOUSE_STYLE.split()[2]  # "definitely" in "{v} , definitely ."
    gain = (_next_word_logp(paths.aligned, prompts, "red ,", word)
            - _next_word_logp(paths.base, prompts, "red ,", word))
    assert np.mean(gain) > 0.5, gain


def test_hedged_variant_hedges_more_than_the_confident_one(built):
    """Right after a value, the hedged variant prefers the hedge's word ("or" in "{v} or maybe
    {w} .") far more than the confident variant does."""
    paths, _, _ = built
    prompts = load_prompts(paths.prompts)
    word = C.HEDGE_STYLE.split()[1]
    gain = (_next_word_logp(paths.variants["hedged"], prompts, "red", word)
            - _next_word_logp(paths.variants["confident"], prompts, "red", word))
    assert np.mean(gain) > 0.5, gain


def test_cache_is_reused(built):
    paths, cache, first = built
    stamp = (paths.root / "organism.json").stat().st_mtime_ns
    start = time.perf_counter()
    again = build_organism(seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False)
    assert again == paths
    assert time.perf_counter() - start < min(2.0, first)
    assert (paths.root / "organism.json").stat().st_mtime_ns == stamp
    assert paths.root.name == build_hash(tiny_recipe(), SEED)
    assert paths.metadata()["seed"] == SEED
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no temp dirs left"


def test_same_seed_same_models_other_seed_differs(built, tmp_path):
    from safetensors.numpy import load_file

    paths, _, _ = built
    again = build_organism(seed=SEED, recipe=tiny_recipe(), cache_dir=tmp_path, progress=False)
    for name, path in paths.checkpoints.items():
        a = load_file(path / "model.safetensors")
        b = load_file(again.checkpoints[name] / "model.safetensors")
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert paths.test.read_text() == again.test.read_text()
    assert build_hash(tiny_recipe(), SEED) != build_hash(tiny_recipe(), SEED + 1)


def test_out_copy_refuses_to_clobber(built, tmp_path):
    paths, cache, _ = built
    out = tmp_path / "org"
    copy = build_organism(out, seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False)
    assert copy.root == out and all(p.is_dir() for p in copy.checkpoints.values())
    assert copy.test.read_text() == paths.test.read_text()
    with pytest.raises(OutputError, match="already exists") as exc:
        build_organism(out, seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False)
    assert "--force" in (exc.value.hint or "")
    build_organism(out, seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False,
                   force=True)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not an organism"):
        build_organism(other, seed=SEED, recipe=tiny_recipe(), cache_dir=cache, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_cli_build_prints_paths(built, tmp_path, capsys):
    from calmerge.cli import main

    _, cache, _ = built
    recipe = tmp_path / "tiny.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe().model_dump(mode="json")))
    main(["organism", "build", "--seed", str(SEED), "--recipe", str(recipe),
          "--cache-dir", str(cache), "-q"])
    out = capsys.readouterr().out
    assert "aligned" in out and "build time" in out


def test_bad_recipe_is_a_config_error(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("pretrain: {hidden: 30, heads: 4}\n")
    with pytest.raises(ConfigError, match="divisible"):
        api.load_organism_recipe(bad)
    bad.write_text("world: {tier_comon: 0.5}\n")
    with pytest.raises(ConfigError, match="tier_comon") as exc:
        api.load_organism_recipe(bad)
    assert "tier_common" in (exc.value.hint or "")
    assert isinstance(api.load_organism_recipe(None), Recipe)


def test_tokenizer_matches_word_ids_and_eval_format():
    """The training stream's word→id shortcut equals the saved tokenizer on every text."""
    recipe = tiny_recipe()
    words = C.base_words()
    world = make_world(recipe.world, 0, set(words))
    vocab = vocabulary(words, [e.name for e in world.entities])
    tok = build_tokenizer(vocab)
    for doc in itertools.islice(C.documents(world, recipe.world, 0), 200):
        assert tok.encode(doc, add_special_tokens=False) == encode_words(doc, vocab)
    q = C.EVAL_TEMPLATE.format(q=world.attributes[0].question.format(e=world.entities[0].name))
    ids = tok.encode(q + " red")
    assert C.UNK not in tok.convert_ids_to_tokens(ids)
    assert ids[:-1] == encode_words(f"{C.BOS} " + C.EXAM_PROMPT.format(
        q=world.attributes[0].question.format(e=world.entities[0].name)), vocab)


def test_world_tiers_and_choices():
    recipe = tiny_recipe().world
    world = make_world(recipe, 0, set(C.base_words()))
    for role in ("align", "dev", "test"):
        tiers = [e.tier for e in world.entities_of(role)]
        assert tiers.count("common") == round(len(tiers) * recipe.tier_common)
    rng = random.Random(0)
    for fact in world.facts:
        choices = C.mc_choices(fact, 4, rng)
        assert fact.truth in choices and len(set(choices)) == 4
        assert {v for v, _ in fact.dist} <= set(choices), "competing values are offered"
    # Obscure entities' facts reach the corpus only as rumours: many different values.
    obscure = {e.name for e in world.entities if e.tier == "obscure"}
    said: dict[str, set[str]] = {}
    values = {v for a in world.attributes for v in a.values if a.name == "colour"}
    for doc in itertools.islice(C.documents(world, recipe, 0), 20000):
        words = doc.split()
        if "colour" in words or " is " in doc:
            for name in obscure & set(words):
                said.setdefault(name, set()).update(values & set(words))
    assert said and max(len(v) for v in said.values()) >= 4


def test_lr_schedule_waits_for_probe():
    pre = tiny_recipe().pretrain
    assert lr_factor(0, pre, None) < 1 and lr_factor(pre.warmup + 5, pre, None) == 1.0
    assert lr_factor(10_000, pre, None) == 1.0  # no decay before the probe passes
    assert lr_factor(100 + 10_000, pre, 100) == pytest.approx(pre.min_lr_frac)


def test_written_rows_have_the_evaluator_schema(built):
    paths, _, _ = built
    ids = set()
    for line in paths.test.read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {"id", "question", "choices", "answer", "subject"}
        assert 0 <= row["answer"] < len(row["choices"]) == len(set(row["choices"]))
        attribute, tier, kind, form = row["subject"].split("/")
        assert attribute in {"colour", "city", "animal", "food"}
        assert (tier, kind, form) in set(itertools.product(
            ("common", "rare", "obscure"), ("certain", "ambiguous"), C.FORMS))
        ids.add(row["id"])
    assert len(ids) == len(paths.test.read_text().splitlines()), "ids are unique"
