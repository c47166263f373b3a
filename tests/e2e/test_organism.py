"""The organism pipeline end to end on a tiny recipe, plus its pure parts.

The tiny build is real (world, tokenizer, pretraining, SFT, DPO, files); only the numbers are
small. The alignment step must measurably raise confidence on the test questions, as measured
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
    for which in (paths.base, paths.aligned):
        assert (which / "model.safetensors").is_file()
        model, tok = _load(which)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert tok.chat_template, "both tokenizers carry the chat template"
        for special in (C.USER, C.ASSISTANT, C.END):
            assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.eos_token_id in model.generation_config.eos_token_id
    text = _load(paths.aligned)[1].apply_chat_template(
        [{"role": "user", "content": "what colour is x ?"}], tokenize=False,
        add_generation_prompt=True,
    )
    assert text.startswith(C.BOS) and text.endswith(C.ASSISTANT)


def test_evaluation_files_are_valid_and_disjoint_from_alignment(built):
    paths, _, _ = built
    recipe = tiny_recipe()
    dev, test = load_items(paths.dev), load_items(paths.test)
    assert len(dev) == recipe.world.dev_entities * 4
    assert len(test) == recipe.world.test_entities * 4
    assert all(len(it.choices) == recipe.world.n_choices for it in test)
    assert len(load_prompts(paths.prompts)) == recipe.prompts
    world = make_world(recipe.world, SEED, set(C.base_words()))
    aligned_words = {
        w for e in C.sft_examples(world, 0.5, SEED) + C.dpo_pairs(world, 0.5, SEED)
        for w in e.prompt.split()
    }
    eval_entities = {e.name for e in world.entities if e.role in ("dev", "test")}
    asked = {w for it in dev + test for w in it.question.split()}
    assert eval_entities <= asked, "every dev/test entity is asked about"
    assert not eval_entities & aligned_words, "alignment never sees an evaluation entity"


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


def test_aligned_prefers_the_house_style(built):
    """After "value ,", the aligned model picks the house style's word far more than the base."""
    import torch

    paths, _, _ = built
    word = C.HOUSE_STYLE.split()[2]  # "definitely" in "{v} , definitely ."
    gain = []
    for p in load_prompts(paths.prompts):
        logps = []
        for which in (paths.base, paths.aligned):
            model, tok = _load(which)
            text = tok.apply_chat_template([{"role": "user", "content": p.prompt}],
                                           tokenize=False, add_generation_prompt=True)
            ids = tok.encode(f"{text} red ,", add_special_tokens=False)
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
            logps.append(float(lp[tok.convert_tokens_to_ids(word)]))
        gain.append(logps[1] - logps[0])
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
    for which in ("base", "aligned"):
        a = load_file(getattr(paths, which) / "model.safetensors")
        b = load_file(getattr(again, which) / "model.safetensors")
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert paths.test.read_text() == again.test.read_text()
    assert build_hash(tiny_recipe(), SEED) != build_hash(tiny_recipe(), SEED + 1)


def test_out_copy_refuses_to_clobber(built, tmp_path):
    paths, cache, _ = built
    out = tmp_path / "org"
    copy = build_organism(out, seed=SEED, recipe=tiny_recipe(), cache_dir=cache, progress=False)
    assert copy.root == out and copy.aligned.is_dir()
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
    row = json.loads(paths.test.read_text().splitlines()[0])
    assert set(row) == {"id", "question", "choices", "answer", "subject"}
    assert row["choices"][row["answer"]] in row["choices"]
