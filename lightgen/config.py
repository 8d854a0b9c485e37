"""One pydantic schema for an experiment, loaded from YAML with dotted command-line overrides.

An experiment has eight sections (world, data, model, train, dpo, eval, tracking, sweep) plus a
top-level ``seed`` and ``preset`` name. Presets live in ``experiments/*.yaml``; ``load_config`` reads
one (by path or by preset name), applies ``--set key=value`` overrides and validates the result.

Every rejection is a :class:`ConfigError` whose message names the dotted key, the offending value and
what is allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lightgen.errors import ConfigError  # noqa: F401 - defined with the other user errors
from lightgen.sizes import parse_size, size_label  # noqa: F401 - sizes ("100k", "2M") live there
from lightgen.yamlfile import _yaml_problem, load_yaml, read_yaml_text  # noqa: F401 - YAML files

REPO_ROOT = Path(__file__).resolve().parent.parent
PRESET_DIR = REPO_ROOT / "experiments"


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite float (lr, temperature, cfg …) validates no range and can
    # never work, so every float knob of every section must be finite
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Bounds of values that validate as numbers but cannot work (the bound is in the message)
MAX_SCALE = 1_000_000_000  # nominal dataset size: the paper's largest is 2M
TOY_MAX_RESOLUTION = 256  # the toy world renders 32-256 px (shapes are rasterised per size)
MAX_TOKENS = 4096  # image tokens per sample: a 64 x 64 grid (the paper's 512 px VAE grid is 32 x 32)
MAX_BOOTSTRAP = 100_000  # bootstrap draws of a CI (each draw resamples every prompt)


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
class WorldConfig(_Section):
    """Which world the pipeline runs in, and the toy world's complexity."""

    kind: Literal["toy", "real"] = "toy"
    seed: int = Field(0, ge=0, description="world seed: fixes the global held-out compositions")
    n_classes: int = Field(12, ge=2, le=16, description="toy object classes (distinct silhouettes)")
    n_colors: int = Field(10, ge=2, le=10, description="toy colours (GenEval's 10)")
    max_objects: int = Field(5, ge=1, le=5, description="largest count per object")
    n_relations: int = Field(4, ge=0, le=4, description="left of / right of / above / below")
    n_backgrounds: int = Field(1, ge=1, le=8, description="background variants (1 = plain grey)")
    heldout_fraction: float = Field(
        0.1, ge=0.0, le=0.5, description="share of compositions held out (at most half: the rest are trained on)")
    layout: Literal["free", "grid"] = Field(
        "free", description="toy object placement: 'free' (anywhere, any size) or 'grid' (each object inside one "
        "cell of a grid_cells x grid_cells grid, so with tokens of one cell each object is one token)")
    grid_cells: int = Field(2, ge=2, le=4, description="cells per side of the 'grid' layout")
    pose: Literal["varied", "fixed"] = Field(
        "varied", description="toy object poses: 'varied' (random size, rotation and offset) or 'fixed' (upright, "
        "one size per scene type, centred in its grid cell): a class/colour then looks the same in every image")

    @model_validator(mode="after")
    def _grid_fits(self) -> "WorldConfig":
        if self.layout == "grid" and self.max_objects > self.grid_cells**2:
            raise ValueError(f"max_objects={self.max_objects} objects do not fit in a {self.grid_cells}x{self.grid_cells} "
                             "grid layout (one object per cell): lower world.max_objects or raise world.grid_cells")
        return self
    # real world
    teacher: str | None = Field(None, description="diffusers pipeline path or hub id (real world)")
    caption_file: str | None = Field(None, description="captions .txt/.csv/.jsonl (real world)")
    teacher_steps: int = Field(25, ge=1)
    teacher_guidance: float = Field(7.5, ge=0.0)
    teacher_batch_size: int = Field(8, ge=1, description="captions per teacher call (real world)")
    teacher_device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1' …")


class DataConfig(_Section):
    """Dataset volume and caption diversity (independent knobs)."""

    scale: int = Field(100_000, gt=0, le=MAX_SCALE, description="nominal dataset size (100k … 2M; at most 1B)")
    scale_divisor: int = Field(1, ge=1, description="actual size = scale / scale_divisor (smoke)")
    caption_diversity: float = Field(1.0, ge=0.0, le=1.0, description="normalised diversity in [0,1]")
    coverage: float | None = Field(None, gt=0.0, le=1.0, description="knob (a): compositional coverage")
    variety: float | None = Field(None, ge=0.0, le=1.0, description="knob (b): linguistic variety")
    density: float | None = Field(None, ge=0.0, le=1.0, description="knob (c): caption density")
    resolution: int = Field(64, ge=32, le=1024)
    seed: int = Field(0, ge=0, description="seed of the data stream (nested prefixes)")
    storage: Literal["auto", "stream", "shards"] = "auto"
    shard_size: int = Field(8192, ge=16)
    diversity_subsample: int = Field(2000, ge=10, description="fixed subsample for diversity metrics")
    cache_dir: str | None = Field(None, description="default: <root>/datasets")
    num_workers: int = Field(0, ge=0)
    cache_dtype: Literal["bf16", "fp16"] = Field("bf16", description="real world: latent/text cache dtype")
    keep_images: bool | None = Field(
        None, description="real world: also store teacher images (None = only when no model.vae is set)")
    n_clusters: int | None = Field(
        None, ge=1, description="real world: k-means clusters for caption selection (None = sqrt of captions)")
    auto_max_gib: float = Field(
        4.0, ge=0.0, description="storage=auto stores toy image shards up to this many GiB, else streams")

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v: Any) -> int:
        return parse_size(v)

    @property
    def actual_size(self) -> int:
        return max(1, self.scale // self.scale_divisor)

    @property
    def scale_label(self) -> str:
        return size_label(self.scale)


class ModelConfig(_Section):
    """The MAR student. ``size`` picks the architecture; explicit fields override it."""

    size: Literal["tiny", "small", "L"] = "tiny"
    tokenizer: Literal["patch", "vae"] = "patch"
    patch_size: int = Field(4, ge=1)
    vae: str | None = Field(
        None, description="AutoencoderKL path or hub id (tokenizer=vae); 'toy' = a small AutoencoderKL trained "
        "once per toy world on teacher renders and cached under <tracking.root>/tokenizers/ (lightgen.model.toy_vae)")
    vae_stride: Literal[2, 4, 8] = Field(4, description="model.vae=toy: downsampling factor of the autoencoder")
    vae_latent_channels: int = Field(4, ge=1, le=64, description="model.vae=toy: latent channels")
    vae_width: int = Field(16, ge=8, le=256, description="model.vae=toy: channels of its first block")
    vae_train_steps: int = Field(1000, ge=1, le=200_000, description="model.vae=toy: training steps (batch 32)")
    vae_decoder: Literal["rgb", "palette"] = Field(
        "rgb", description="model.vae=toy: decode to RGB (MSE) or to per-pixel logits over the world's palette "
        "(cross-entropy; flat colours and crisp edges, as the teacher draws)")
    vae_latent_noise: float = Field(
        0.2, ge=0.0, le=2.0, description="model.vae=toy: latent noise (× latent std) the decoder learns to undo")
    text_encoder: str = Field("toy", description="'toy' or a T5EncoderModel path/hub id")
    text_encoder_mode: Literal["frozen", "trainable", "pretrained-toy"] = "trainable"
    max_text_len: int = Field(32, ge=4, le=512)
    width: int | None = Field(None, ge=16)
    encoder_depth: int | None = Field(None, ge=1)
    decoder_depth: int | None = Field(None, ge=1)
    cross_depth: int | None = Field(None, ge=0)
    heads: int | None = Field(None, ge=1)
    aligner_depth: int | None = Field(None, ge=0)
    mlp_ratio: float = Field(4.0, gt=0)
    head_width: int | None = Field(None, ge=16, description="diffusion MLP width")
    head_depth: int | None = Field(None, ge=1, description="diffusion MLP blocks")
    diffusion_batch_mul: int = Field(4, ge=1)
    mask_ratio_min: float = Field(0.7, ge=0.0, le=1.0)
    mask_ratio_mean: float = Field(1.0, ge=0.0, le=2.0)
    mask_ratio_std: float = Field(0.25, gt=0.0)
    text_dropout: float = Field(0.1, ge=0.0, le=1.0)
    attn_dropout: float = Field(0.0, ge=0.0, le=1.0)
    proj_dropout: float = Field(0.0, ge=0.0, le=1.0)
    buffer_size: int | None = Field(None, ge=0, description="learned buffer tokens in the encoder (MAR)")
    text_pool_buffer: bool = Field(
        False, description="also add the pooled text (masked mean of the aligned text) to the buffer tokens, as MAR "
        "puts its class embedding there; the text cross-attention stays")
    text_dim: int | None = Field(None, ge=8, description="width of the text features (cached embeddings)")
    toy_text_width: int = Field(64, ge=8, description="d_model of the toy T5 encoder")
    toy_text_depth: int = Field(2, ge=1, description="layers of the toy T5 encoder")
    text_encoder_weights: str | None = Field(
        None, description="safetensors weights of a toy T5 (text_encoder_mode=pretrained-toy); 'toy' = pre-trained "
        "once per world on captions alone and cached under <tracking.root>/tokenizers/ (lightgen.model.toy_text)"
    )
    toy_text_pretrain_steps: int = Field(
        1500, ge=1, le=200_000, description="text_encoder_weights=toy: pre-training steps (batch 64)")
    diffusion_sampler: Literal["ddpm", "ddim"] = Field(
        "ddpm", description="ddpm = stochastic (DDIM eta=1, temperature scales the noise); ddim = eta 0"
    )
    train_diffusion_steps: int = Field(1000, ge=10, description="DDPM training timesteps (cosine)")
    pos_embed_init: Literal["normal", "sincos"] = Field(
        "normal", description="initial image position embeddings (learned either way): normal = N(0, 0.02) as in "
        "MAR; sincos = 2-D sin-cos (MAE), which gives short runs spatial structure from the first step"
    )
    noise_shift: float = Field(
        1.0, ge=1.0, le=64.0, description="divide the cosine schedule's SNR by noise_shift² at every step (simple "
        "diffusion's shifted schedule): redundant tokens (flat pixel patches) stay informative at high noise otherwise"
    )
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon", description="what the diffusion head predicts (diffusers' names): epsilon (MAR, the paper) or "
        "v_prediction, which weights the high-noise steps that decide layout (toy pixel tokens need it)"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.width is not None and self.heads is not None and self.width % self.heads:
            raise ValueError(f"model.width={self.width} must be a multiple of model.heads={self.heads}")
        if self.text_encoder_mode == "pretrained-toy" and self.text_encoder != "toy":
            raise ValueError("model.text_encoder_mode=pretrained-toy needs model.text_encoder=toy")
        return self


class TrainConfig(_Section):
    iterations: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.02, ge=0)
    grad_clip: float = Field(3.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    ema_warmup: bool = Field(True, description="decay ramps up as (1+s)/(10+s) until ema_decay")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False
    device: str = "auto"
    checkpoint_every: int = Field(0, ge=0, description="0 = only at the end")
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0)
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch default)")
    init_from: str | None = Field(
        None, description="start from this checkpoint's weights — a checkpoint or run folder, or an MLflow run id "
        "(e.g. 256 px → 512 px; position embeddings are interpolated when data.resolution differs)"
    )

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {v}")
        return v


class DPOConfig(_Section):
    """Diffusion-DPO post-training (``lightgen.train.dpo``) and its SFT control arm.

    Unset knobs fall back to the pre-training settings (``train.*``: AdamW betas, weight decay, grad
    clip, grad accumulation, EMA decay and warm-up, precision, device, logging/checkpoint cadence).
    """

    beta: float = Field(5000.0, gt=0, description="DPO β (paper: 5000); see lightgen.train.dpo for its scale")
    lr: float = Field(1e-8, gt=0, description="constant learning rate (paper: 1e-8)")
    warmup_steps: int = Field(0, ge=0, description="linear lr warm-up steps (paper: none, constant lr)")
    iterations: int = Field(500, ge=1)
    batch_size: int = Field(32, ge=1, description="preference pairs per step")
    num_pairs: int = Field(1000, ge=1, description="pairs built from the dataset by `lightgen dpo pairs`")
    mode: Literal["dpo", "sft"] = Field("dpo", description="sft = control arm: fine-tune on winners only")
    text_dropout: float | None = Field(
        None, ge=0.0, le=1.0, description="caption dropout during DPO (None = model.text_dropout)"
    )
    pairs: str | None = Field(None, description="JSONL of pos_image_path/neg_image_path/caption")
    base: str | None = Field(None, description="base checkpoint path or MLflow run id")

    @field_validator("pairs")
    @classmethod
    def _pairs_file(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path to a .jsonl file (or a pairs folder), not an empty string")
        return v


class EvalConfig(_Section):
    prompt_set: Literal["toy", "official"] = "toy"
    n_prompts: int = Field(0, ge=0, description="toy prompts per task (0 = the set's default)")
    images_per_prompt: int = Field(4, ge=1)
    num_iter: int = Field(64, ge=1, description="unmasking steps")
    diffusion_steps: int = Field(100, ge=1)
    cfg: float = Field(4.0, ge=0.0)
    cfg_schedule: Literal["constant", "linear"] = "constant"
    temperature: float = Field(1.0, gt=0.0)
    batch_size: int = Field(64, ge=1)
    detector: Literal["toy", "real"] = "toy"
    segmenter: str | None = Field(None, description="Mask2Former path/hub id (real detector)")
    clip: str | None = Field(None, description="CLIP path/hub id (real detector)")
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP, description="bootstrap draws of the Overall CI")
    detector_train_images: int = Field(
        2400, ge=50, le=100_000, description="teacher renders the toy detector's classifier is trained on"
    )
    detector_augment: bool = Field(
        False, description="toy detector: learn classes from degraded renders too (blur, noise, small warps), so a "
        "student's slightly soft but right shape counts; held to the checks in benchmarks/bench_geneval.py")
    checkpoints: list[float] = Field(default_factory=lambda: [1.0], description="fractions of training")
    enabled: bool = True

    @field_validator("checkpoints")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not (0.0 < f <= 1.0) for f in v):
            raise ValueError(f"fractions must be in (0, 1], got {v}")
        return sorted(set(v))


class TrackingConfig(_Section):
    tracking_uri: str | None = Field(None, description="None = MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str | None = None
    root: str = Field("mlruns", description="where datasets, checkpoints and Optuna storage live")
    log_system_metrics: bool = Field(True, description="MLflow's CPU/memory (and GPU, with nvidia-ml-py) sampler "
                                     "on every run; $LIGHTGEN_SYSTEM_METRICS=0 turns it off (the tests do)")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a folder path, not empty (an empty root would write under the current "
                             "folder's filesystem root)")
        return v


class SweepConfig(_Section):
    storage: str | None = Field(None, description="Optuna storage URL (default: journal under root)")
    gpus: list[int] = Field(default_factory=list)
    workers_per_gpu: int = Field(1, ge=1, le=64)
    workers: int = Field(1, ge=1, le=256, description="worker processes when no GPU is used")


class ExperimentConfig(_Section):
    preset: str = "custom"
    seed: int = Field(0, ge=0)
    world: WorldConfig = Field(default_factory=WorldConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        if self.model.tokenizer == "patch" and self.data.resolution % self.model.patch_size:
            raise ValueError(
                f"data.resolution={self.data.resolution} must be a multiple of "
                f"model.patch_size={self.model.patch_size}"
            )
        if self.world.kind == "toy" and self.data.resolution > TOY_MAX_RESOLUTION:
            raise ValueError(f"data.resolution={self.data.resolution}: the toy world renders at most "
                             f"{TOY_MAX_RESOLUTION} px")
        stride = self.model.patch_size * (8 if self.model.tokenizer == "vae" else 1)
        tokens = (self.data.resolution // stride) ** 2
        if tokens > MAX_TOKENS:
            raise ValueError(f"data.resolution={self.data.resolution} with model.patch_size={self.model.patch_size} "
                             f"({self.model.tokenizer} tokenizer) gives {tokens} image tokens; at most {MAX_TOKENS}")
        return self

    # ---- helpers -------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Every knob as ``{dotted.name: value}`` (the names MLflow params use)."""
        return flatten(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def point_id(self, exclude: tuple[str, ...] = ("seed", "data.seed", "preset", "tracking.", "sweep.")) -> str:
        """Hash of the resolved config without seeds and bookkeeping: a grid point's identity."""
        items = {
            k: v
            for k, v in self.flat().items()
            if not any(k == e or (e.endswith(".") and k.startswith(e)) for e in exclude)
        }
        blob = json.dumps(items, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def root_path(self) -> Path:
        return Path(self.tracking.root)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _format_validation_error(err: ValidationError, data: dict[str, Any], where: str | Path | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True)
        typ = e["type"]
        val = e.get("input")
        if typ == "extra_forbidden":
            section = ".".join(str(p) for p in e["loc"][:-1])
            allowed = _allowed_keys(section)
            lines.append(f"unknown key '{loc}' (value {val!r}); allowed keys here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        ctx = e.get("ctx") or {}
        if not e["loc"]:  # a check across sections: its message names the keys
            lines.append(msg.removeprefix("Value error, "))
            continue
        if typ in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"} or "literal" in typ:
            lines.append(f"{loc}: invalid value {val!r}: {msg}")
        else:
            lines.append(f"{loc}: invalid value {val!r}: {msg}" + (f" ({ctx})" if ctx and "error" not in ctx else ""))
    return f"invalid configuration{f' in {where}' if where else ''}:\n  " + "\n  ".join(lines)


def _allowed_keys(section: str) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in [p for p in section.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML's safe scalar rules (``2000`` → int, ``[1,2]`` → list)."""
    try:
        return yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (validation happens afterwards)."""
    if not overrides:
        return data
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    for key, value in items:
        parts = key.split(".")
        node = data
        model: type[BaseModel] | None = ExperimentConfig
        for i, part in enumerate(parts[:-1]):
            field = model.model_fields.get(part) if model else None
            if field is None:
                raise ConfigError(
                    f"unknown key '{'.'.join(parts[: i + 1])}' in override '{key}'; "
                    f"allowed: {', '.join(sorted(model.model_fields)) if model else '-'}"
                )
            model = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
            if model is None:
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is not a section; cannot set '{key}'")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{'.'.join(parts[: i + 1])}' is not a section; cannot set '{key}'")
        last = parts[-1]
        if model is not None and last not in model.model_fields:
            raise ConfigError(
                f"unknown key '{key}' (value {value!r}); allowed keys in "
                f"'{'.'.join(parts[:-1]) or '<top>'}': {', '.join(sorted(model.model_fields))}"
            )
        node[last] = _parse_scalar(value) if isinstance(value, str) else value
    return data


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return key, value


def resolve_preset_path(name_or_path: str | Path) -> Path:
    """A YAML path, or a preset name looked up in ./experiments then the repository's experiments/."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"}:
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder, expected a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    for base in (Path.cwd() / "experiments", PRESET_DIR):
        cand = base / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    raise ConfigError(f"unknown preset '{name_or_path}'; available: {', '.join(available_presets())}")


def available_presets() -> list[str]:
    names = set()
    for base in (Path.cwd() / "experiments", PRESET_DIR):
        if base.is_dir():
            names.update(p.stem for p in base.glob("*.yaml"))
    return sorted(names)


def read_yaml(path: Path) -> dict[str, Any]:
    return load_yaml(path, "config file", empty={}, not_mapping="top level must be a mapping of sections")


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Load a preset name, a YAML path or a dict, apply dotted overrides, validate."""
    if source is None:
        data: dict[str, Any] = {}
        name = "custom"
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
        name = data.get("preset", "custom")
    else:
        path = resolve_preset_path(source)
        data = read_yaml(path)
        name = data.get("preset", path.stem)
    data.setdefault("preset", name)
    data = apply_overrides(data, overrides)
    where = None if isinstance(source, dict) or source is None else str(path) + (" with overrides" if overrides else "")
    return validate_config(data, where=where)


def validate_config(data: dict[str, Any], where: str | Path | None = None) -> ExperimentConfig:
    """Validate a raw config; ``where`` (the YAML file it came from) is named in the message."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, data, where)) from None
