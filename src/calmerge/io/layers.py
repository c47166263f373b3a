"""Which transformer block a tensor belongs to, per tower, numbered as mergekit 0.1.5 numbers it.

Why it matters: a per-layer gradient (`weight: [0, 0.3, 1]`) is evaluated at the block's
position t = i/(L−1), so a wrong block or a wrong L silently changes the merged weights.

The rule (one regex, derived from the checkpoint's tensor names): a tensor's block is the
first `.N.` in its name; the *tower* is the name before it (`model.layers`, `transformer.h`,
`language_model.model.layers`, `vision_tower.vision_model.encoder.layers`,
`encoder.block`, …); each tower is numbered over its own block count (largest N + 1 among the
checkpoint's names of that tower). Tensors without `.N.` (embeddings, final norm, lm_head,
projectors) sit at t = 0. This is how mergekit positions tensors:

- architectures it defines in `mergekit/_data/architectures/*.json`: every `layer_templates`
  name has `${layer_index}` at its first `.N.`, every module (`text_decoder`, `vision_tower`,
  T5's `encoder`/`decoder`, Whisper's) is planned over its own `num_layers_config_key`
  (`n_layer` for GPT-2, `text_config.num_hidden_layers` / `vision_config.num_hidden_layers`
  for Gemma-3, Llama-4 and Mistral-3 multimodal, `vision_config.depth` for Qwen-VL), and
  `mergekit/plan.py` (`plan_slice`) gives block i of a module t = i/(L−1) (t = 1 when L = 1)
  and pre/post weights t = 0. Checked name by name against every JSON definition of 0.1.5;
  the two exceptions are the `_SHIFTED` / `_AMBIGUOUS` entries below.
- architectures it does not define: `mergekit/architecture/auto.py` (`infer_architecture_info`)
  uses the same regex (`RE_LAYER_INDEX = \\.(\\d+)\\.`), one module per prefix, numbered over
  largest N + 1. calmerge therefore agrees with mergekit there too, but nobody has checked
  that the inferred towers are the model's real blocks: `notes` says so, and the planner
  passes it on as a warning when a gradient is used.

Disagreements with mergekit that cannot be resolved from the names are reported in `notes`,
never guessed silently: a tower count that differs from the config's layer count (mergekit
numbers over the config; e.g. an extra MTP block), and the `_AMBIGUOUS` tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: mergekit/architecture/auto.py RE_LAYER_INDEX: the first `.N.` of a name is its block
_INDEX = re.compile(r"\.(\d+)\.")
_VISION = re.compile(r"vision|visual")
_EMBED = re.compile(r"embed|\bwte\b|\bwpe\b")  # GPT-2 names its embeddings wte/wpe

#: architectures whose mergekit definition puts block i at `tower.{i+shift}` and something
#: else at `tower.0` / `tower.{L+1}` (phi-1.json: `layers.0.wte`, `layers.${num_layers+1}`)
_SHIFTED: dict[str, tuple[str, int]] = {"MixFormerSequentialForCausalLM": ("layers", 1)}

#: tensors mergekit plans once per layer of a module without `${layer_index}` in the name
#: (qwen2_vl.json, qwen2_5_vl.json multi_modal_projector: `visual.merger.mlp.N`), so which
#: t it writes is an accident of its task order: calmerge gives them t = 0 and says so
_AMBIGUOUS: dict[str, str] = {
    "Qwen2VLForConditionalGeneration": "visual.merger.",
    "Qwen2_5_VLForConditionalGeneration": "visual.merger.",
}

#: architectures whose mergekit 0.1.5 JSON definition was checked against the rule above
MERGEKIT_CHECKED = frozenset(
    [
        "LlamaForCausalLM",
        "LLaMaForCausalLM",
        "LlamaForSequenceClassification",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "QWenLMHeadModel",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
        "Llama4ForConditionalGeneration",
        "Mistral3ForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
        "Phi3ForCausalLM",
        "Phi3SmallForCausalLM",
        "PhiForCausalLM",
        "MixFormerSequentialForCausalLM",
        "GPT2LMHeadModel",
        "GPT2ForSequenceClassification",
        "GPTNeoXForCausalLM",
        "GPTBigCodeForCausalLM",
        "JAISLMHeadModel",
        "FalconForCausalLM",
        "Starcoder2ForCausalLM",
        "CohereForCausalLM",
        "Cohere2ForCausalLM",
        "Olmo2ForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "SolarForCausalLM",
        "StableLmForCausalLM",
        "StableLMEpochForCausalLM",
        "ExaoneForCausalLM",
        "InternLM2ForCausalLM",
        "BaichuanForCausalLM",
        "ChatGLMModel",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "ArceeForCausalLM",
        "ApertusForCausalLM",
        "Lfm2ForCausalLM",
        "MambaForCausalLM",
        "T5ForConditionalGeneration",
        "WhisperForConditionalGeneration",
        "BertModel",
        "BertForMaskedLM",
        "BertForSequenceClassification",
        "RobertaModel",
        "RobertaForMaskedLM",
        "RobertaForSequenceClassification",
        "DistilBertModel",
        "DistilBertForMaskedLM",
        "DistilBertForSequenceClassification",
    ]
)

#: config keys mergekit reads for a tower's layer count (its `num_layers_config_key`s)
_TEXT_KEYS = ("text_config.num_hidden_layers", "num_hidden_layers", "n_layer")
_VISION_KEYS = ("vision_config.num_hidden_layers", "vision_config.depth")


@dataclass(frozen=True)
class Slot:
    """A tensor's place: block `index` of `tower` (the name before the block number)."""

    tower: str
    index: int


def layer_slot(name: str) -> Slot | None:
    """The block of a tensor by the naming rule alone (no architecture exceptions)."""
    match = _INDEX.search(name)
    if match is None:
        return None
    return Slot(name[: match.start()], int(match.group(1)))


def is_vision(tower: str) -> bool:
    return bool(_VISION.search(tower))


def _config_value(config: Mapping[str, Any], dotted: str) -> int | None:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LayerMap:
    """Blocks and towers of one checkpoint, and each tensor's gradient position t."""

    architecture: str | None
    towers: dict[str, int]  # tower -> number of blocks, in order of first appearance
    shift: tuple[str, int] | None = None
    ambiguous: str | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def build(cls, names: Iterable[str], config: Mapping[str, Any] | None = None) -> LayerMap:
        config = config or {}
        archs = config.get("architectures") or []
        arch = archs[0] if isinstance(archs, list) and len(archs) == 1 else None
        shift = _SHIFTED.get(arch or "")
        ambiguous = _AMBIGUOUS.get(arch or "")
        towers: dict[str, int] = {}
        for name in names:
            if ambiguous and name.startswith(ambiguous):
                continue
            slot = layer_slot(name)
            if slot is not None:
                towers[slot.tower] = max(towers.get(slot.tower, 0), slot.index + 1)
        notes: list[str] = []
        if shift and shift[0] in towers:
            n = _config_value(config, "n_layer") or towers[shift[0]] - 2
            towers[shift[0]] = max(n, 0)
        text = [t for t in towers if not is_vision(t)]
        vision = [t for t in towers if is_vision(t)]
        for group, keys in ((text, _TEXT_KEYS), (vision, _VISION_KEYS)):
            want = next((v for k in keys if (v := _config_value(config, k)) is not None), None)
            if want is None or not group:
                continue
            main = max(group, key=lambda t: towers[t])
            if towers[main] != want and not shift:
                notes.append(
                    f"'{main}' has {towers[main]} blocks but the config says {want}:"
                    f" mergekit numbers gradients over {want}, calmerge over {towers[main]}"
                )
        if arch not in MERGEKIT_CHECKED and towers:
            listed = ", ".join(f"{t}.N ({n})" for t, n in towers.items())
            notes.append(
                f"architecture {arch or '(unnamed)'} is not in calmerge's checked table: gradient"
                f" positions follow mergekit's inferred numbering, per tower: {listed}"
            )
        if ambiguous:
            notes.append(
                f"'{ambiguous}*' tensors get t = 0; mergekit plans them once per projector"
                " layer, so its gradient value there is not well defined"
            )
        return cls(arch, towers, shift, ambiguous, tuple(notes))

    def slot(self, name: str) -> Slot | None:
        """The tensor's block and tower, or None for embeddings, norms, heads, projectors."""
        if self.ambiguous and name.startswith(self.ambiguous):
            return None
        slot = layer_slot(name)
        if slot is None or slot.tower not in self.towers:
            return None
        if self.shift and slot.tower == self.shift[0]:
            index = slot.index - self.shift[1]
            if not 0 <= index < self.towers[slot.tower]:
                return None
            return Slot(slot.tower, index)
        return slot

    def num_layers(self, tower: str) -> int:
        return self.towers.get(tower, 0)

    def position(self, name: str) -> float:
        """Gradient position t: i/(L−1) in a tower of L blocks (1 when L = 1), else 0."""
        slot = self.slot(name)
        if slot is None:
            return 0.0
        n = self.towers[slot.tower]
        return slot.index / (n - 1) if n > 1 else 1.0

    @property
    def main_tower(self) -> str | None:
        """The language model's blocks: the non-vision tower with most blocks."""
        text = [t for t in self.towers if not is_vision(t)]
        pool = text or list(self.towers)
        return max(pool, key=lambda t: self.towers[t]) if pool else None

    def tower_label(self, tower: str) -> str:
        """'' for the language model, 'vision' for a vision tower, else the tower's name."""
        if tower == self.main_tower:
            return ""
        if is_vision(tower):
            vision = [t for t in self.towers if is_vision(t)]
            return "vision" if len(vision) == 1 else f"vision {tower}"
        return tower

    def group(self, name: str) -> str:
        """'layer 3', 'vision layer 1', 'encoder.block layer 0', 'embeddings', 'head/norm'…"""
        slot = self.slot(name)
        if slot is not None:
            label = self.tower_label(slot.tower)
            return f"{label} layer {slot.index}" if label else f"layer {slot.index}"
        if "projector" in name or (self.ambiguous and name.startswith(self.ambiguous)):
            return "projector"
        prefix = "vision " if _VISION.search(name) else ""
        return prefix + ("embeddings" if _EMBED.search(name) else "head/norm")
