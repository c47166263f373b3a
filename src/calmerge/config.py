"""Pydantic models for every config file: YAML in, frozen validated objects out.

Errors name the file and the field, and suggest the closest key for typos.
Sections, one per subsystem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calmerge.dtypes import Device, EvalDtype, MergeDtype
from calmerge.errors import CalmergeError, ConfigError, did_you_mean
from calmerge.io.text import utf8_text
from calmerge.merge.families import FAMILIES
from calmerge.merge.methods import get_method


class Choice(ValueError):
    """A registry's refusal inside a validator: pydantic only catches ValueError, and
    `config_error` turns it into one line carrying the registry's own hint ("did you mean")."""

    def __init__(self, exc: CalmergeError) -> None:
        super().__init__(exc.message)
        self.hint = exc.hint


def choice(check: Any, name: Any) -> Any:
    """Run a registry check on `name` at config time; a refusal becomes a `Choice` error."""
    try:
        check(name)
    except CalmergeError as exc:
        raise Choice(exc) from None
    return name


class Frozen(BaseModel):
    """Base for all configs: immutable, unknown keys rejected."""

    # defer_build: a model's validator is built on first use, so the CLI start-up pays only
    # for the configs its command needs
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


#: bounds on a config file, checked before it is parsed or built: a config is a few KB, so a
#: file past 1 MiB, an alias "bomb" (anchors whose expansion multiplies) or deep nesting is a
#: mistake or an attack, and parsing it would take minutes and gigabytes (PyYAML builds ~80
#: bytes of nodes per input byte)
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 1_000_000  # nodes after expanding every alias (a 1 MiB flat list has ~500k)
MAX_YAML_DEPTH = 64


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for missing/malformed/oversized files.

    Anchors and aliases are allowed (mergekit configs use them to repeat a parameter block),
    but the document is measured *as expanded* before anything is constructed: PyYAML shares
    an aliased node, so the file parses in linear time, yet everything that walks the result
    (validation, the run's identity hash, the export card) pays for the expansion.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", "check the path")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {size:,} bytes; a config file is at most {MAX_YAML_BYTES:,}",
            "is this the right file? configs are a few KB",
        )
    text = utf8_text(path, path.read_bytes(), ConfigError, "save the file as UTF-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_yaml_size(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML", "check indentation and quoting") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to parse", f"a config nests at most {MAX_YAML_DEPTH} levels"
        ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level", "see README examples")
    return data


def _check_yaml_size(root: Any, path: Path) -> None:
    """Refuse a composed YAML graph whose expansion (aliases followed) is too big, too deep or
    recursive. Linear in the file: each node's expanded size is computed once."""
    import yaml

    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"{path}:{line}: nested more than {MAX_YAML_DEPTH} levels deep",
                "flatten the config",
            )
        if key in open_:
            raise ConfigError(f"{path}:{line}: an alias refers to itself", "remove the recursive alias")
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            open_.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [
                n for pair in node.value for n in pair
            ]
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_YAML_NODES:
                    raise ConfigError(
                        f"{path}:{line}: expands to more than {MAX_YAML_NODES:,} values "
                        "(anchors and aliases multiply)",
                        "write the values out, or use fewer nested aliases",
                    )
            open_.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def validate(model: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    """Build `model` from `data`; turn pydantic's error into one line naming source and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, source) from None


_BRANCH = re.compile(r"^(str|int|float|bool|(tuple|list|dict)\[.*\])$")


def config_error(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    """The first pydantic error as a ConfigError with 'did you mean' for unknown keys."""
    # a union field (`data`: one reference or a list of tasks) reports one error per branch:
    # the deepest is the one about what the user wrote, and the branch names are not theirs
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    err = {**err, "loc": tuple(p for p in err["loc"] if not _BRANCH.match(str(p)))}
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        fields = _fields_at(model, err["loc"][:-1])
        return ConfigError(
            f"{source}: unknown key '{loc}'", did_you_mean(key, fields) or f"allowed: {sorted(fields)}"
        )
    msg = str(err["msg"]).removeprefix("Value error, ")
    hint = getattr(err.get("ctx", {}).get("error"), "hint", None) or "fix the value and re-run"
    if not err["loc"]:
        return ConfigError(f"{source}: {msg}", hint)
    return ConfigError(f"{source}: '{loc}': {msg}", hint)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`, best effort for suggestions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        nxt = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            for a in args:
                for b in getattr(a, "__args__", ()):
                    if isinstance(b, type) and issubclass(b, BaseModel):
                        nxt = b
        if nxt is None:
            return []
        current = nxt
    return list(getattr(current, "model_fields", {}))


# ───────────────────────────── merge engine ─────────────────────────────

class MergeModel(Frozen):
    """One input model and its own parameters (highest precedence)."""

    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class MergeConfig(Frozen):
    """A merge recipe (our YAML; mergekit YAML is converted into this).

    compute_dtype None = compute in the inputs' stored dtype (mergekit's default when its YAML
    has no `dtype`); out_dtype None = the reference (first non-base) model's dtype.
    """

    method: str
    base: str | None = None
    models: tuple[MergeModel, ...] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    compute_dtype: MergeDtype | None = "float32"
    out_dtype: MergeDtype | None = None
    seed: int = 0
    tokenizer_source: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return [{"model": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return choice(get_method, v)


# ───────────────────────────── evaluation ─────────────────────────────


class EvalSettings(Frozen):
    """How items are prompted and scored and how generations are sampled.

    Shared by `calmerge eval` and `calmerge sweep`, so one flag means the same in both.
    """

    dev: str | None = None
    prompts: str | None = None
    fewshot: int = Field(0, ge=0, le=64)
    mode: Literal["loglik", "letter"] = "loglik"
    prompt_template: str | None = None
    prompt_format: Literal["plain", "chat"] = "plain"
    #: "auto": the checkpoint's own dtype (bf16 for the paper's models), as lm-eval's default
    dtype: EvalDtype = "auto"
    device: Device = "auto"
    #: accelerate's dispatch for models bigger than one device (then `device` is not used)
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = None
    #: caps per device for `device_map`, accelerate's form: "0=20GiB,1=20GiB,cpu=60GiB"
    max_memory: str | None = Field(None, max_length=400)
    #: questions per forward; "auto": the most that fit the device's free memory, backing off
    #: on out-of-memory
    batch_size: int | Literal["auto"] = "auto"
    #: how choices read their context: packed (one sequence per question, block mask), prefix
    #: (the context's KV cache), or auto (on a GPU both timed on the first batch and the faster
    #: kept; on a CPU packed, untimed, so runs stay reproducible bit for bit)
    scoring_form: Literal["auto", "packed", "prefix"] = "auto"
    samples: int = Field(8, ge=2, le=256)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(24, ge=1, le=4096)  # short answers keep a sweep point cheap
    #: token ids that end a sample; None: the model's own generation config (`eval`), the union
    #: of both parents' (`sweep`, resolved when it starts so every λ stops at the same ids)
    stop_token_ids: tuple[int, ...] | None = None
    embed_diversity: bool = True
    seed: int = 0
    n_boot: int = Field(1000, ge=0, le=100000)
    n_bins: int = Field(10, ge=2, le=100)
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65536:
            raise ValueError(f"{v!r}: use auto or a whole number from 1 to 65536")
        return v

    @field_validator("max_memory")
    @classmethod
    def _max_memory(cls, v: str | None) -> str | None:
        try:
            parse_max_memory(v)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return v

    @model_validator(mode="after")
    def _max_memory_needs_a_map(self) -> EvalSettings:
        if self.max_memory and self.device_map is None:  # accelerate would ignore it silently
            raise ValueError("--max-memory caps a dispatch: pass --device-map auto too")
        return self


def _check_fewshot(fewshot: int | None, dev: str | None, where: str = "") -> None:
    if fewshot and not dev:
        raise ValueError(f"few-shot examples come from a dev split: pass --dev too{where}")


class EvalConfig(EvalSettings):
    """One `calmerge eval` run: which model, which data, how to prompt and score."""

    model: str
    data: str
    output: str | None = None

    @model_validator(mode="after")
    def _fewshot_needs_dev(self) -> EvalConfig:
        _check_fewshot(self.fewshot, self.dev)
        return self


class TaskSpec(Frozen):
    """One task of a multi-task sweep: its data, its own dev split and prompt settings.

    A setting left None takes the sweep's top-level value, so a sweep YAML states only what
    differs per task (an lm-eval task wants `{question}` and loglik, a letter-scored file
    another template).
    """

    data: str
    dev: str | None = None
    name: str | None = Field(None, min_length=1, max_length=80, pattern=r"^[^@\s/][^@/]*$")
    fewshot: int | None = Field(None, ge=0, le=64)
    mode: Literal["loglik", "letter"] | None = None
    prompt_template: str | None = None
    prompt_format: Literal["plain", "chat"] | None = None


#: the TaskSpec fields a task inherits from the sweep when it leaves them unset
TASK_SETTINGS: tuple[str, ...] = ("fewshot", "mode", "prompt_template", "prompt_format")


# ───────────────────────────── sweep ─────────────────────────────

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_EXTRAPOLATION: tuple[float, ...] = (1.1, 1.2)


class NamedModel(Frozen):
    """One checkpoint of a sweep over several models: the name its weight goes by, its path."""

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    path: str = Field(min_length=1)


def parse_models(value: Any) -> Any:
    """`--models base=B sft=S dpo=A` (strings), a YAML mapping {base: B, …} or a list of
    {name, path}: the models of a simplex sweep, in order, as NamedModel fields."""
    if isinstance(value, dict):
        return tuple({"name": k, "path": v} for k, v in value.items())
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            if isinstance(item, str):
                name, sep, path = item.partition("=")
                if not sep or not name.strip() or not path.strip():
                    raise ValueError(f"'{item}' is not NAME=PATH (e.g. sft=./sft-model)")
                out.append({"name": name.strip(), "path": path.strip()})
            else:
                out.append(item)
        return tuple(out)
    return value


class SweepConfig(EvalSettings):
    """Everything a sweep needs; the eval-relevant part is hashed to identify (and resume) a run."""

    base: str
    aligned: str
    #: one data reference (a single-task sweep, splits "test"/"dev"), or several tasks
    #: (references or TaskSpec mappings): each scored at every point under its own name
    data: str | tuple[TaskSpec, ...]
    #: what the aggregate `acc` of a multi-task sweep is: the mean of the tasks' accuracies
    #: (macro, every task counts the same) or of all items (micro, big tasks count more)
    aggregate: Literal["macro", "micro"] = "macro"
    name: str | None = None
    grid: tuple[float, ...] = DEFAULT_GRID
    #: None: the extrapolation points 1.1, 1.2 with the default grid, none with a grid the user
    #: gave (what they typed is what is evaluated); a tuple: exactly those points.
    extrapolate: tuple[float, ...] | None = None
    refine: bool = True
    resolution: float = Field(0.025, gt=0, le=0.5)
    max_refine_points: int = Field(6, ge=0, le=100)
    families: tuple[str, ...] = ("linear",)
    #: a sweep over N ≥ 3 checkpoints (`sweep.simplex`): the models in order, the first the
    #: base (the origin of task-vector families); `base`/`aligned` are then its first and last
    models: tuple[NamedModel, ...] | None = None
    #: the simplex grid's spacing (each weight a multiple of it)
    simplex_step: float = Field(0.1, gt=0, le=1)
    #: task-vector families: the largest coefficient λ_i of the box [0, max]^(N−1)
    simplex_max: float = Field(1.0, gt=0, le=4)
    density: float = Field(0.5, gt=0, le=1)
    #: where the parents live between points (`sweep.parents`): held in memory when they fit
    #: (auto), always (resident), or streamed (pinned host memory on a GPU, else disk)
    parents: Literal["auto", "resident", "streamed"] = "auto"
    #: a Ray cluster to spread the points over (`sweep.distributed`): "local" starts one on this
    #: machine, "auto" joins the one `ray start` runs here, HOST:PORT joins a head node
    ray: str | None = Field(None, min_length=1, max_length=300)
    #: Ray workers, each one live model (one GPU each with CUDA); None: one per device
    workers: int | None = Field(None, ge=1, le=4096)
    #: dev item-evaluations to spend (`sweep.anchors`): every λ on anchor items first, full
    #: scoring where racing cannot rule a λ out; None: every λ fully scored
    budget: int | None = Field(None, ge=1, le=10**12)
    #: anchor items of a budgeted sweep; None: 10% of dev, at least 16
    anchors: int | None = Field(None, ge=2, le=100_000)
    objectives: tuple[str, ...] | None = None
    pick: str = "max-acc"
    store: str = "calmerge-runs.db"
    out: str = "calmerge-report"

    @model_validator(mode="before")
    @classmethod
    def _models_fill_pair(cls, data: Any) -> Any:
        """With `models`, the pair fields are the first and last model (the base every point
        starts from, the model whose architecture and tokenizer are loaded)."""
        if not isinstance(data, dict) or data.get("models") is None:
            return data
        models = parse_models(data["models"])

        def path(m: Any) -> Any:
            return m.get("path") if isinstance(m, dict) else getattr(m, "path", None)

        derived = {"base": path(models[0]), "aligned": path(models[-1])} if models else {}
        for key in ("base", "aligned"):  # a stored config carries both, equal
            if data.get(key) is not None and data[key] != derived.get(key):
                raise ValueError(
                    f"'models' and '{key}' are both given: a sweep over several models names"
                    " every model in 'models' (the first is the base)"
                )
        return {**data, "models": models, **derived}

    @field_validator("models")
    @classmethod
    def _models(cls, v: tuple[NamedModel, ...] | None) -> tuple[NamedModel, ...] | None:
        if v is None:
            return v
        if len(v) < 3:
            raise ValueError(
                f"{len(v)} model(s): a sweep over several models needs at least 3"
                " (for two, give --base and --aligned)"
            )
        names = [m.name for m in v]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"model name '{dup}' is given twice: each model needs its own name")
        paths = [str(Path(m.path).expanduser().resolve()) if Path(m.path).expanduser().exists()
                 else m.path for m in v]
        for i, path in enumerate(paths):
            if paths.index(path) != i:
                raise ValueError(
                    f"models '{names[paths.index(path)]}' and '{names[i]}' are the same checkpoint"
                    f" ({v[i].path})"
                )
        return v

    @model_validator(mode="after")
    def _simplex_settings(self) -> SweepConfig:
        if self.models is None:
            return self
        from calmerge.merge.families import get_family, simplex_families
        from calmerge.sweep.simplex import check_step, grid_size

        for name in self.families:
            if get_family(name).simplex is None:
                raise ValueError(
                    f"family '{name}' has no simplex form; a sweep over several models runs"
                    f" {' or '.join(simplex_families())}"
                )
        if "extrapolate" not in self.model_fields_set:
            object.__setattr__(self, "extrapolate", ())
        if any(t <= 1 for t in self.extrapolate or ()):
            raise ValueError("extrapolation points of a simplex sweep lie past the ends of an"
                             " edge: each must be > 1 (e.g. 1.2)")
        n = len(self.models)
        for name in self.families:
            tv = get_family(name).task_vectors
            choice(lambda s, tv=tv: check_step(s, tv, self.simplex_max), self.simplex_step)
            count = grid_size(n - 1 if tv else n, self.simplex_step, tv, self.simplex_max)
            if count > MAX_GRID_POINTS:
                raise ValueError(
                    f"simplex step {self.simplex_step:g} over {n} models makes {count:,} points;"
                    f" at most {MAX_GRID_POINTS:,} (use a coarser --simplex-step)"
                )
        return self

    @model_validator(mode="after")
    def _budget_settings(self) -> SweepConfig:
        if self.budget is None:
            return self
        if self.models is not None or self.multi_task:
            raise ValueError("--budget races the λ points of one pair on one task; give a single"
                             " --data and --base/--aligned (or drop --budget)")
        if self.dev is None:
            raise ValueError("--budget chooses on dev: pass --dev too")
        bad = [o for o in self.objectives or () if o not in ("acc", "ece")]
        if bad:
            raise ValueError(f"--budget races on acc and ece; objective '{bad[0]}' is not raced")
        return self

    @property
    def simplex(self) -> bool:
        """Whether this is a sweep over several models (weight vectors, not λ)."""
        return self.models is not None

    @field_validator("data", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            if not v:
                raise ValueError("no data: give at least one task")
            if len(v) > MAX_TASKS:
                raise ValueError(f"{len(v):,} tasks; at most {MAX_TASKS}")
            return tuple({"data": t} if isinstance(t, str) else t for t in v)
        return v

    @model_validator(mode="after")
    def _task_settings(self) -> SweepConfig:
        if isinstance(self.data, tuple):
            if self.dev is not None:
                raise Choice(ConfigError(
                    "'dev' is given at the top level while 'data' lists tasks",
                    "give each task its own dev split (data: [{data: X, dev: Y}, …], or"
                    " --dev once per --data, in the same order)",
                ))
            for i, t in enumerate(self.data):
                fewshot = self.fewshot if t.fewshot is None else t.fewshot
                _check_fewshot(fewshot, t.dev, f" for task {i + 1} ({t.data})")
        else:
            _check_fewshot(self.fewshot, self.dev)
        return self

    def tasks(self) -> tuple[TaskSpec, ...]:
        """Every task with the sweep's settings filled in where it left them unset.

        A single data reference is one task with the top-level dev and settings; its splits
        keep their plain names ("test", "dev"), as in a store written before multi-task sweeps.
        """
        if isinstance(self.data, str):
            specs = (TaskSpec(data=self.data, dev=self.dev),)
        else:
            specs = self.data
        return tuple(
            t.model_copy(update={
                k: getattr(self, k) for k in TASK_SETTINGS if getattr(t, k) is None
            })
            for t in specs
        )

    @property
    def multi_task(self) -> bool:
        return isinstance(self.data, tuple) and len(self.data) > 1

    @field_validator("grid", "extrapolate", mode="before")
    @classmethod
    def _bounded(cls, v: Any) -> Any:
        if isinstance(v, list | tuple) and len(v) > MAX_GRID_POINTS:
            raise ValueError(f"{len(v):,} λ points; at most {MAX_GRID_POINTS:,}")
        return v

    @field_validator("grid", "extrapolate")
    @classmethod
    def _finite(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is None:
            return v
        if any(x != x or x in (float("inf"), float("-inf")) for x in v):
            raise ValueError("λ values must be finite numbers")
        return tuple(sorted({round(float(x), 6) for x in v}))

    @field_validator("families")
    @classmethod
    def _families(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one family is needed")
        for name in v:
            choice(FAMILIES.get, name)
        return tuple(dict.fromkeys(v))

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from calmerge.analysis.pareto import check_objectives  # numpy: only when validating

        return choice(check_objectives, v) if v is not None else v

    @field_validator("pick")
    @classmethod
    def _pick(cls, v: str) -> str:
        from calmerge.analysis.pick import check_rule

        return choice(check_rule, v)

    @model_validator(mode="after")
    def _parents_in_grid(self) -> SweepConfig:
        if not {0.0, 1.0} <= set(self.grid):
            raise ValueError("the grid must include 0 and 1: the parents every merge is compared with")
        return self

    @model_validator(mode="after")
    def _extrapolation(self) -> SweepConfig:
        if self.extrapolate is None:  # frozen model: set the resolved default once, here
            default = DEFAULT_EXTRAPOLATION if "grid" not in self.model_fields_set else ()
            object.__setattr__(self, "extrapolate", default)
        return self

    def lambdas(self) -> tuple[float, ...]:
        """The initial grid: grid plus the extrapolation points."""
        return tuple(sorted(set(self.grid) | set(self.extrapolate or ())))

    def eval_identity(self) -> dict[str, Any]:
        """The settings that change a point's numbers: every field not in IDENTITY_EXCLUDED.

        Derived rather than listed, so a new setting is part of the identity (a changed value
        starts a new run) unless it is excluded here with a reason — a setting forgotten on a
        hand-kept list would silently reuse results computed under another value.
        """
        identity = {
            k: getattr(self, k) for k in type(self).model_fields if k not in IDENTITY_EXCLUDED
        }
        if isinstance(self.data, tuple):  # each task's own settings change its numbers
            identity["tasks"] = [
                t.model_dump(exclude={"data", "dev"}) for t in self.tasks()
            ]
        else:  # a single-task sweep's identity is what it was before multi-task sweeps
            identity.pop("aggregate")
        return identity


#: SweepConfig fields that do not change any stored number, each with the reason.
IDENTITY_EXCLUDED: dict[str, str] = {
    "base": "identified by the checkpoint's fingerprint, not its path",
    "aligned": "identified by the checkpoint's fingerprint, not its path",
    "data": "identified by the sha256 of the items, not the path (a task's settings are"
    " added by eval_identity)",
    "dev": "identified by the sha256 of the items, not the path",
    "prompts": "identified by the sha256 of the file, not the path",
    "name": "a label",
    "grid": "which points are computed, not what a point is (points are keyed by λ)",
    "extrapolate": "which points are computed, not what a point is",
    "refine": "which points are computed, not what a point is",
    "resolution": "which points are computed, not what a point is",
    "max_refine_points": "which points are computed, not what a point is",
    "families": "points are keyed by family",
    "models": "identified by each named model's fingerprint (names key the weights)",
    "simplex_step": "which points are computed, not what a point is (points are keyed by"
    " their weights)",
    "simplex_max": "which points are computed, not what a point is",
    "objectives": "analysis of stored points only",
    "pick": "analysis of stored points only",
    "store": "where results go",
    "out": "where the report goes",
    "allow_pickle": "a permission to load a format, not a setting of the computation",
    "trust_remote_code": "a permission to run the checkpoint's code, not a setting",
    "device": "where it runs; scores agree across devices within float tolerance",
    "batch_size": "how many questions share a forward pass; packing is exact per question",
    "device_map": "where the same weights are placed; the arithmetic is the same",
    "max_memory": "where the same weights are placed; the arithmetic is the same",
    "scoring_form": "how the same log-likelihoods are computed; equal within 1e-5 (tested)",
    "ray": "where points are computed, not what they are (tested equal to a local sweep)",
    "workers": "where points are computed, not what they are",
    "parents": "where the parents live between points; a point's weights are identical (tested)",
    "budget": "which points are fully scored, not what a point is (a budgeted and a full sweep"
    " share their points)",
    "anchors": "which items a point is first looked at on; a fully scored point is the same",
}


class SearchConfig(EvalSettings):
    """A per-layer search (`calmerge search`): the pair, the data, the space, the budget.

    `budget` counts item-evaluations on dev (one candidate scored on one dev item is one):
    the parents' full-dev scoring, every candidate's anchor items, every promotion to the full
    dev split. None: 40 full-dev evaluations' worth. Test items are scored only for the final
    frontiers and do not count.
    """

    base: str
    aligned: str
    data: str
    dev: str
    name: str | None = None
    space: str = "blocks:8"
    objectives: tuple[str, ...] = ("acc", "ece")
    budget: int | None = Field(None, ge=1, le=10**12)
    algorithm: Literal["nsga2"] = "nsga2"
    population: int = Field(12, ge=4, le=1024)
    #: anchor items (the cheap first look at a candidate); None: 10% of dev, at least 16
    anchors: int | None = Field(None, ge=2, le=100_000)
    #: successive halving: at most this share of a generation is promoted to all of dev, the
    #: most promising of those racing keeps first
    promote: float = Field(0.25, gt=0, le=1)
    #: the largest λ a gene may take (1: interpolation only; up to 2: extrapolation)
    upper: float = Field(1.0, gt=0, le=2)
    #: anchor prompts (a diversity objective's cheap first look); None: a quarter of the dev
    #: prompts, at least 4
    anchor_prompts: int | None = Field(None, ge=2, le=100_000)
    store: str = "calmerge-runs.db"
    out: str = "calmerge-search"

    @field_validator("space")
    @classmethod
    def _space(cls, v: str) -> str:
        from calmerge.merge.genome import parse_space

        choice(parse_space, v)
        return v.strip()

    @field_validator("objectives", mode="before")
    @classmethod
    def _split_objectives(cls, v: Any) -> Any:
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else v

    @field_validator("objectives")
    @classmethod
    def _search_objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from calmerge.eval.metrics import METRICS, generation_objective

        out = []
        for name in v:
            if name not in ("acc", "ece", "diversity"):
                from calmerge.analysis.pareto import check_objectives

                choice(check_objectives, (name,))  # a typo gets the registry's "did you mean"
                if METRICS.get(name).source != "generations":
                    raise ValueError(
                        f"objective '{name}': a search's candidates are raced on their dev items"
                        " and anchor prompts, so its objectives are acc, ece and one diversity"
                        " metric of sampled generations (diversity = distinct_2, or name one)"
                    )
            out.append(generation_objective(name))
        if len(set(out)) != len(out) or not out:
            raise ValueError("objectives: name each objective at most once")
        if len([o for o in out if o not in ("acc", "ece")]) > 1:
            raise ValueError("objectives: at most one diversity metric")
        return tuple(out)

    @property
    def diversity(self) -> str | None:
        """The diversity objective (a generation metric), if the search has one."""
        from calmerge.eval.metrics import diversity_of

        return diversity_of(self.objectives)

    @model_validator(mode="after")
    def _diversity_needs_prompts(self) -> SearchConfig:
        if self.diversity and not self.prompts:
            raise ValueError(
                f"objective '{self.diversity}' is measured on sampled generations: pass"
                " --prompts FILE (open-ended prompts, JSONL), split in halves into dev and test"
                " prompts"
            )
        if self.diversity and self.diversity == "embed_distance" and not self.embed_diversity:
            raise ValueError("objective 'embed_distance' needs the embedding model: drop --no-embed")
        return self

    def sweep_config(self) -> SweepConfig:
        """The same pair, data and evaluation as a plain sweep: the search evaluates its
        candidates and its scalar-λ baseline with the sweep's own machinery."""
        shared = {k: getattr(self, k) for k in EvalSettings.model_fields}
        return SweepConfig(
            **shared, base=self.base, aligned=self.aligned, data=self.data,
            name=self.name or (f"{Path(self.aligned).name} vs {Path(self.base).name},"
                               f" search {self.space}"),
            grid=(0.0, 1.0), extrapolate=(), refine=False,
            objectives=self.objectives, store=self.store, out=self.out,
        )

    def study(self) -> dict[str, Any]:
        """What makes a search its own run beside a plain sweep of the same pair: everything
        that shapes which candidates are evaluated and how (not where results go)."""
        keys = ["space", "objectives", "budget", "algorithm", "population", "anchors", "upper",
                "promote"]
        if self.diversity:  # only then: a search without diversity keeps the identity it had
            keys.append("anchor_prompts")
        return {k: getattr(self, k) for k in keys}


#: the most λ points a grid may list or generate: each is a full evaluation of the model, so
#: more is a typo (a step of 1e-9), and it is refused before a single value is built
MAX_GRID_POINTS = 10_000
#: the most tasks one sweep scores: each is scored at every point; more is a generated list gone
#: wrong (lm-eval groups such as mmlu count as one task, however many subtasks they hold)
MAX_TASKS = 64


def parse_max_memory(text: str | None) -> dict[Any, str | int] | None:
    """`--max-memory "0=20GiB,cpu=60GiB"` → accelerate's {0: "20GiB", "cpu": "60GiB"}."""
    if not text:
        return None
    out: dict[Any, str | int] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        key = key.strip()
        if not sep or not value.strip() or not (
            key.isdigit() or key in ("cpu", "disk")
            or (key.startswith("cuda:") and key[5:].isdigit())
        ):
            raise ConfigError(
                f"--max-memory '{part.strip()}': expected DEVICE=SIZE",
                "e.g. --max-memory 0=20GiB,1=20GiB,cpu=60GiB",
            )
        if key.startswith("cuda:"):
            key = key.removeprefix("cuda:")
        size = value.strip()  # accelerate reads "20GiB"/"500MB" strings, and bare bytes as ints
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out


def parse_grid(text: str, flag: str = "--grid") -> tuple[float, ...]:
    """Parse '0,0.1,0.5' or '0:1:0.1' (start:stop:step, inclusive) into λ values.

    The number of points is known before any is built (counted from the commas, or
    (stop − start)/step), so `0:1:1e-9` is one line, not a billion floats.
    """
    import math

    text = text.strip()
    bad = ConfigError(f"{flag} '{text}': not a list of numbers", "use e.g. 0,0.25,0.5 or 0:1:0.1")
    if ":" in text:
        try:
            start, stop, step = (float(x) for x in text.split(":"))
        except ValueError:
            raise bad from None
        if not all(map(math.isfinite, (start, stop, step))) or step <= 0:
            raise bad
        count = round((stop - start) / step) + 1
    else:
        count = text.count(",") + 1
    if count > MAX_GRID_POINTS:
        raise ConfigError(
            f"{flag} '{text[:40]}': {count:,} λ points; at most {MAX_GRID_POINTS:,}",
            "use a coarser step: each point is a full evaluation, and refinement adds points near the best",
        )
    try:
        if ":" in text:
            return tuple(round(start + i * step, 6) for i in range(max(0, count)))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise bad from None


def task_overrides(data: Sequence[str] | None, dev: Sequence[str] | None) -> dict[str, Any]:
    """`--data`/`--dev` as given on the command line → the config's `data` (and `dev`).

    One `--data`: a single-task sweep, as before. Several: one task each, the i-th `--dev`
    belonging to the i-th `--data` (so either no `--dev` or one per `--data`).
    """
    data, dev = list(data or []), list(dev or [])
    if len(data) <= 1:
        if len(dev) > 1:
            raise ConfigError(
                f"{len(dev)} --dev for {len(data) or 'no'} --data", "give one --dev per --data"
            )
        return {"data": data[0] if data else None, "dev": dev[0] if dev else None}
    if dev and len(dev) != len(data):
        raise ConfigError(
            f"{len(dev)} --dev for {len(data)} --data: which dev split belongs to which task?",
            "give one --dev per --data, in the same order (or none)",
        )
    return {"data": [{"data": d, **({"dev": dev[i]} if dev else {})} for i, d in enumerate(data)]}


def load_sweep_config(path: Path | None, overrides: dict[str, Any]) -> SweepConfig:
    """Merge a YAML file (optional) with CLI overrides (non-None win) into a SweepConfig."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    source = str(path) if path is not None else "command line"
    for key in ("data",) if data.get("models") is not None else ("base", "aligned", "data"):
        if key not in data:
            raise ConfigError(f"{source}: '{key}' is required", f"pass --{key} or set it in the YAML")
    return validate(SweepConfig, data, source)
