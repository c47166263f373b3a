"""LoRA adapters (peft's `adapter_config.json` + `adapter_model.safetensors`) opened as a
*virtual aligned checkpoint*: the base's tensor names, each read as peft's merged weight.

Why virtual: users ship aligned models as adapters, and the merge engine, the λ-families,
validation, the live interpolator and `diff` only use the `Checkpoint` interface. An
`AdapterCheckpoint` is that interface over (base checkpoint, adapter file): `get(name)` returns
θ_base + scale·B·A for a target module, a `modules_to_save` replacement, or the base tensor, one
tensor at a time — no dense aligned checkpoint is ever written.

The arithmetic is peft's (`tuners/lora/layer.py`, `Linear.get_delta_weight` and `merge` with
`safe_merge=False`, as `merge_and_unload()` runs it), step for step, so a λ=1 merge is bitwise
equal to peft's merged model:

- A and B are cast to the base weight's dtype (peft creates the LoRA layers in the base layer's
  dtype and copies the stored values into them), then fp16/bf16 up to fp32 (peft's default
  `autocast_adapter_dtype=True`);
- Δ = (B @ A), transposed for `fan_in_fan_out` (GPT-2's Conv1D), times `scaling` =
  alpha / r (alpha / √r with `use_rslora`; r and alpha per module from `rank_pattern` /
  `alpha_pattern` by peft's own pattern rule); embeddings: (B @ A)ᵀ · scaling;
- W += Δ in place (a bf16 W is computed in fp32 and rounded once, as torch's in-place add
  with a wider operand does); `lora_bias`: b += B.bias · scaling.

Refused with one line: other peft types (LoHa, IA³, …), DoRA, adapters on modules the base
checkpoint has no tensor for (layouts transformers renames on load), and anything the file
holds that is none of the above.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.errors import CalmergeError, CheckpointError
from calmerge.io.checkpoint import Checkpoint
from calmerge.io.safetensors import TensorInfo, read_safetensors_header, read_tensor

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFE = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PREFIX = "base_model.model."  # peft's key prefix: PeftModel.base_model (LoraModel).model
_SUFFIXES = {  # key suffix -> role of the tensor in the adapted module
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "bias",
    ".lora_embedding_A": "A",
    ".lora_embedding_B": "B",
}
_UNSUPPORTED_CONFIG = {  # config key -> what it is, for the refusal
    "use_dora": "DoRA (use_dora)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_bdlora": "BD-LoRA",
}


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def read_adapter_config(path: Path) -> dict[str, Any]:
    f = path / ADAPTER_CONFIG
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{f}: not readable JSON", "re-save the adapter") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f}: expected a JSON object", "re-save the adapter")
    return data


def _pattern_key(keys: Any, module: str) -> str:
    """peft's `utils.other.get_pattern_key`: the first pattern matching the module's tail."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: the base tensor it changes and how (peft's per-layer settings)."""

    module: str
    weight: str  # base tensor name (`<module>.weight`)
    a: str
    b: str
    bias: str | None
    embedding: bool
    rank: int
    alpha: float
    scaling: float


class AdapterCheckpoint(Checkpoint):
    """A LoRA adapter over its base, read as the merged (aligned) checkpoint.

    `path` is the adapter directory (runs and plans are keyed by it); names, shapes, dtypes and
    the config are the base's. `is_safetensors` is False: the kernel road preads tensor bytes
    from files, and these tensors exist only once computed, so the torch path is taken.
    """

    def __init__(
        self,
        path: Path,
        adapter_config: dict[str, Any],
        base: Checkpoint,
        tensors: dict[str, TensorInfo] | None,
        loaded: dict[str, torch.Tensor] | None,
        files: list[Path],
    ) -> None:
        super().__init__(path, base.config, {}, [])
        self.adapter_config = adapter_config
        self.base = base
        self._adapter_tensors = tensors
        self._adapter_loaded = loaded
        self.adapter_files = files
        self.modules, self.replaced = self._parse()

    # -- the adapter ----------------------------------------------------------------------
    @property
    def adapter_keys(self) -> list[str]:
        if self._adapter_loaded is not None:
            return list(self._adapter_loaded)
        return list(self._adapter_tensors or {})

    def _read(self, key: str) -> torch.Tensor:
        if self._adapter_loaded is not None:
            return self._adapter_loaded[key]
        return read_tensor((self._adapter_tensors or {})[key])

    def _adapter_shape(self, key: str) -> tuple[int, ...]:
        if self._adapter_loaded is not None:
            return tuple(self._adapter_loaded[key].shape)
        return (self._adapter_tensors or {})[key].shape

    def _refuse(self, what: str, hint: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}", hint)

    def _parse(self) -> tuple[dict[str, LoraModule], dict[str, str]]:
        """{base tensor: its LoRA module}, {base tensor: adapter key replacing it}."""
        cfg = self.adapter_config
        parts: dict[str, dict[str, str]] = {}
        replaced: dict[str, str] = {}
        base_names = set(self.base.tensor_names)
        for key in self.adapter_keys:
            if "lora_magnitude_vector" in key:
                raise self._refuse("DoRA adapters are not supported", "merge it with peft first")
            if not key.startswith(PREFIX):
                raise self._refuse(f"adapter tensor '{key}' is not in peft's layout", "re-save it")
            rest = key[len(PREFIX) :]
            suffix = next((s for s in _SUFFIXES if rest.endswith(s)), None)
            if suffix is None:
                if rest not in base_names:
                    raise self._refuse(
                        f"adapter tensor '{key}' matches no tensor of the base {self.base.path}",
                        "is --base the model the adapter was trained on?",
                    )
                replaced[rest] = key  # modules_to_save, or a trained bias (bias='all')
                continue
            module = rest[: -len(suffix)]
            role = _SUFFIXES[suffix] + ("e" if "embedding" in suffix else "")
            parts.setdefault(module, {})[role] = key
        modules: dict[str, LoraModule] = {}
        use_rslora = bool(cfg.get("use_rslora"))
        ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
        for module, roles in parts.items():
            embedding = "Ae" in roles or "Be" in roles
            a, b = roles.get("Ae" if embedding else "A"), roles.get("Be" if embedding else "B")
            weight = f"{module}.weight"
            if a is None or b is None:
                raise self._refuse(f"module '{module}' lacks lora_A or lora_B", "re-save it")
            if weight not in base_names:
                raise self._refuse(
                    f"adapter module '{module}' has no tensor '{weight}' in the base"
                    f" {self.base.path}",
                    "is --base the model the adapter was trained on?",
                )
            r = ranks.get(_pattern_key(ranks, module), cfg.get("r"))
            alpha = alphas.get(_pattern_key(alphas, module), cfg.get("lora_alpha"))
            sa = self._adapter_shape(a)
            rank = sa[1] if embedding else sa[0]
            if not isinstance(r, int) or r != rank or not isinstance(alpha, int | float):
                raise self._refuse(
                    f"module '{module}': rank {rank} in the weights, r={r!r} lora_alpha={alpha!r}"
                    " in adapter_config.json",
                    "the adapter's config and weights do not belong together",
                )
            scaling = alpha / math.sqrt(r) if use_rslora else alpha / r  # peft's update_layer
            if weight in replaced:
                raise self._refuse(f"'{weight}' is both adapted and replaced", "re-save it")
            modules[weight] = LoraModule(
                module, weight, a, b, roles.get("bias"), embedding, r, alpha, scaling
            )
            self._check_shapes(modules[weight])
        for name, key in replaced.items():
            if self._adapter_shape(key) != self.base.shape(name):
                raise self._refuse(
                    f"'{key}' has shape {self._adapter_shape(key)}, the base's '{name}' has"
                    f" {self.base.shape(name)}",
                    "is --base the model the adapter was trained on?",
                )
        self._bias_targets = {f"{m.module}.bias": m for m in modules.values() if m.bias}
        for name in self._bias_targets:
            if name not in base_names:
                raise self._refuse(f"lora_bias needs '{name}', which the base lacks", "re-save it")
        return modules, replaced

    def _transposed(self, mod: LoraModule) -> bool:
        """Whether Δ = (B@A)ᵀ: embeddings always; Conv1D (weights stored in × out) by shape,
        square matrices by the config's `fan_in_fan_out` (peft sets it per layer type)."""
        if mod.embedding:
            return True
        out_f, in_f = self._adapter_shape(mod.b)[0], self._adapter_shape(mod.a)[1]
        shape = self.base.shape(mod.weight)
        if out_f != in_f:
            return shape == (in_f, out_f)
        return bool(self.adapter_config.get("fan_in_fan_out"))

    def _check_shapes(self, mod: LoraModule) -> None:
        sa, sb = self._adapter_shape(mod.a), self._adapter_shape(mod.b)
        shape = self.base.shape(mod.weight)
        if mod.embedding:
            want = (sa[1], sb[0])  # A: (r, num_embeddings), B: (dim, r); Δ = (B@A)ᵀ
        else:
            want = (sb[0], sa[1])
            want = (want[1], want[0]) if self._transposed(mod) else want
        if len(sa) != 2 or len(sb) != 2 or tuple(shape) != want:
            raise self._refuse(
                f"module '{mod.module}': LoRA A{list(sa)} B{list(sb)} do not fit the base's"
                f" '{mod.weight}' {list(shape)}",
                "only Linear, Conv1D and Embedding LoRA layers are supported; is --base right?",
            )

    @property
    def rank(self) -> int | None:
        ranks = sorted({m.rank for m in self.modules.values()})
        return ranks[0] if len(ranks) == 1 else (max(ranks) if ranks else None)

    @property
    def target_modules(self) -> list[str]:
        """The module names adapted (their last component: q_proj, c_attn, …), sorted."""
        return sorted({m.module.rsplit(".", 1)[-1] for m in self.modules.values()})

    # -- the Checkpoint interface (names, shapes, dtypes are the base's) ------------------
    @property
    def tensor_names(self) -> list[str]:
        return self.base.tensor_names

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    def tag(self, name: str) -> str:
        return self.base.tag(name)

    def nbytes(self, name: str) -> int:
        return self.base.nbytes(name)

    @property
    def is_safetensors(self) -> bool:
        return False

    @property
    def shard_files(self) -> list[Path]:
        return list(self.adapter_files)

    def file(self, name: str) -> Path:
        """A side file (tokenizer, generation config): the adapter directory's, else the base's
        (what `io.export` copies into a merge of the adapter)."""
        own = self.path / name
        return own if own.is_file() else self.base.path / name

    @cached_property
    def chat_template(self) -> str | None:
        """The adapter directory's template (trainers save the tokenizer there), else the base's."""
        own = Checkpoint.chat_template.func(self)  # type: ignore[attr-defined]
        return own if own is not None else self.base.chat_template

    def get(self, name: str) -> torch.Tensor:
        """peft's merged weight for `name` (a fresh tensor in the base tensor's dtype)."""
        base = self.base.get(name)
        if name in self.replaced:  # modules_to_save: peft loads the copy in the base's dtype
            return self._read(self.replaced[name]).to(base.dtype)
        mod = self.modules.get(name)
        bias_mod = self._bias_targets.get(name)
        if mod is None and bias_mod is None:
            return base
        out = base.clone()
        if mod is not None:
            out += self._delta(mod, base.dtype)
        else:  # peft: bias.data += lora_B.bias * scaling
            out += self._lora_cast(self._read(bias_mod.bias), base.dtype) * bias_mod.scaling
        return out

    @staticmethod
    def _lora_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Stored value → the LoRA layer's dtype: the base layer's, fp16/bf16 upcast to fp32."""
        import torch

        t = t.to(dtype)
        return t.float() if dtype in (torch.float16, torch.bfloat16) else t

    def _delta(self, mod: LoraModule, dtype: torch.dtype) -> torch.Tensor:
        """peft's get_delta_weight: transpose(B @ A, fan_in_fan_out) * scaling."""
        a = self._lora_cast(self._read(mod.a), dtype)
        b = self._lora_cast(self._read(mod.b), dtype)
        delta = b @ a
        if self._transposed(mod):
            delta = delta.T
        return delta * mod.scaling

    def delta(self, name: str) -> torch.Tensor | None:
        """Δ of one tensor as peft adds it (None where the adapter leaves the base as is)."""
        mod = self.modules.get(name)
        return None if mod is None else self._delta(mod, self.base.dtype(name))

    def fingerprint(self) -> str:
        """sha256 of the adapter's config and weight files, plus the base's fingerprint."""
        h = hashlib.sha256()
        h.update(json.dumps(self.adapter_config, sort_keys=True).encode())
        for f in self.adapter_files:
            h.update(f"{f.name}:".encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        h.update(self.base.fingerprint().encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"AdapterCheckpoint({str(self.path)!r}, base={str(self.base.path)!r})"


def adapter_base_ref(path: Path, base: str | Path | None) -> str:
    """The base an adapter applies to: `base` when given, else its config's base path."""
    if base is not None:
        return str(base)
    ref = read_adapter_config(path).get("base_model_name_or_path")
    if not ref:
        raise CheckpointError(
            f"{path}: adapter_config.json names no base model (base_model_name_or_path)",
            "pass --base with the base model's directory",
        )
    return str(ref)


def open_adapter(
    path: Path,
    open_base: Callable[[str], Checkpoint],
    *,
    base: str | Path | None = None,
    allow_pickle: bool = False,
) -> AdapterCheckpoint:
    """Open a peft LoRA directory over its base (`base`, else the config's) as a checkpoint;
    `open_base` opens the base reference (`io.models.open_checkpoint`, handed in so the two
    modules do not import each other)."""
    cfg = read_adapter_config(path)
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise CheckpointError(
            f"{path}: peft adapter type {kind!r} is not supported (only LORA)",
            "merge it with peft's merge_and_unload() and pass the merged model",
        )
    for key, what in _UNSUPPORTED_CONFIG.items():
        if cfg.get(key):
            raise CheckpointError(
                f"{path}: {what} adapters are not supported",
                "merge it with peft's merge_and_unload() and pass the merged model",
            )
    ref = adapter_base_ref(path, base)
    try:
        base_ckpt = open_base(ref)
    except CalmergeError as exc:
        raise CheckpointError(
            f"{path}: the adapter's base model '{ref}' cannot be opened ({exc.message})",
            "pass --base with the base model's directory",
        ) from None
    if isinstance(base_ckpt, AdapterCheckpoint):
        raise CheckpointError(f"{path}: its base '{ref}' is itself an adapter", "pass --base")
    files = [path / ADAPTER_SAFE]
    if files[0].is_file():
        tensors, _raw = read_safetensors_header(files[0])
        return AdapterCheckpoint(path, cfg, base_ckpt, tensors, None, files)
    files = [path / ADAPTER_BIN]
    if not files[0].is_file():
        raise CheckpointError(f"{path}: no {ADAPTER_SAFE}", "is the adapter download complete?")
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: adapter weights are pickled ({ADAPTER_BIN}), which can run arbitrary code",
            "convert to safetensors, or pass --allow-pickle if you trust the source",
        )
    import torch

    try:
        loaded = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise CheckpointError(
            f"{files[0]}: cannot be loaded ({type(exc).__name__})", "the file is corrupt"
        ) from None
    return AdapterCheckpoint(path, cfg, base_ckpt, None, loaded, files)
