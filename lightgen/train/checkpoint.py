"""Checkpoints: a folder of safetensors files plus JSON/YAML, never pickle.

Layout (``docs/ARCHITECTURE.md``)::

    step-0000300/
      model.safetensors      trainable + frozen-toy weights (a frozen hub T5 and the VAE are not copied)
      ema.safetensors        EMA of the trainable weights (used for sampling and evaluation)
      optimizer.safetensors  AdamW moments, keyed "<param index>.<name>"
      state.json             step, optimizer param groups, RNG states (as lists), vocabulary
      config.yaml            the resolved ExperimentConfig
      checksums.json         SHA-256 of each file above, written with the checkpoint, verified on load

A checkpoint is written into ``.step-0000300.tmp`` and renamed when complete, so a crash never leaves a
half-written folder that looks valid. A folder whose files do not match ``checksums.json`` (bit rot, a
partial copy, a garbled file) is *corrupt*: resuming skips it for the newest verified checkpoint and moves
it aside as ``corrupt-step-0000300`` (see ``latest_verified_checkpoint``); loading it by name is refused.
Checkpoints written before checksums existed (no ``checksums.json``) are accepted unverified.
"""

from __future__ import annotations

import json
import re
import os
import sys
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lightgen import redact
from lightgen.errors import UserError
from lightgen.config import ExperimentConfig, load_config, read_yaml
from lightgen.tracking import TAG_CHECKPOINT, TAG_CORRUPT  # noqa: F401 - run tags (folder; corrupt ones skipped)
from lightgen.utils import sha256_file

FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "config.yaml")
CHECKSUMS = "checksums.json"
CORRUPT_PREFIX = "corrupt-"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
# config keys that change the architecture or the data a checkpoint was trained on
COMPAT_PREFIXES = ("model.", "data.resolution", "world.kind")
COMPAT_EXEMPT = ("model.text_dropout", "model.attn_dropout", "model.proj_dropout", "model.diffusion_sampler",
                 "model.mask_ratio_min", "model.mask_ratio_mean", "model.mask_ratio_std")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` (or ``root`` itself), oldest first."""
    root = Path(root)
    if (root / "state.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and all((p / f).is_file() for f in FILES)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: str | Path) -> Path | None:
    cps = list_checkpoints(root)
    return cps[-1] if cps else None


def write_checksums(folder: Path) -> None:
    sums = {f: sha256_file(folder / f) for f in FILES if (folder / f).is_file()}
    (folder / CHECKSUMS).write_text(json.dumps({"algorithm": "sha256", "files": sums}, indent=1))


def verify_checkpoint(cp: str | Path) -> str | None:
    """``None`` when every file of the checkpoint matches its recorded SHA-256, else what is wrong.

    A checkpoint without ``checksums.json`` (written before checksums existed) is accepted.
    """
    cp = Path(cp)
    sums_file = cp / CHECKSUMS
    if not sums_file.is_file():
        return None
    try:
        sums = json.loads(sums_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{sums_file} is unreadable ({e})"
    for name in FILES:
        want = sums.get(name)
        if want is None:
            return f"{cp / name} has no recorded checksum"
        if not (cp / name).is_file():
            return f"{cp / name} is missing"
        if sha256_file(cp / name) != want:
            return f"{cp / name} does not match its checksum (the file is corrupt)"
    return None


def quarantine(cp: Path) -> Path:
    """Move a corrupt checkpoint folder aside (``corrupt-step-…``) so nothing resumes from it again."""
    dest = cp.with_name(CORRUPT_PREFIX + cp.name)
    n = 1
    while dest.exists():
        n += 1
        dest = cp.with_name(f"{CORRUPT_PREFIX}{cp.name}.{n}")
    os.replace(cp, dest)
    return dest


def latest_verified_checkpoint(root: str | Path, *, move_aside: bool = True,
                               log: Any = None) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` whose checksums hold, and a note per corrupt one skipped.

    Corrupt folders are moved aside (``move_aside``) so that the checkpoint rotation and later resumes do
    not meet them again; each is reported through ``log`` (default: stderr).
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    skipped: list[str] = []
    for cp in reversed(list_checkpoints(root)):
        problem = verify_checkpoint(cp)
        if problem is None:
            return cp, skipped
        where = quarantine(cp) if move_aside and cp != Path(root) else cp
        note = f"{cp.name}: {problem}; skipped" + (f" (moved to {where})" if where != cp else "")
        log(f"warning: corrupt checkpoint {note}")
        skipped.append(note)
    return None, skipped


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights worth saving: everything except a frozen pretrained (hub) text encoder."""
    te = model.text_encoder
    skip_te = te.t5 is not None and te.frozen and te.source != "toy"
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        if (skip_te and k.startswith("text_encoder.")) or k.startswith("tokenizer."):
            continue  # frozen hub models (T5, VAE) are reloaded from their paths, not copied
        if v.numel() and v.data_ptr() in seen:  # tied weights (T5's shared/embed_tokens) are stored once
            continue
        seen.add(v.data_ptr())
        out[k] = v.detach().contiguous().cpu()
    return out


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _opt_load(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))
    n = s["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, ema: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None, cfg: ExperimentConfig, vocab: list[str] | None,
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``root/step-XXXXXXX`` atomically (temp folder + rename); keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / "model.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    opt_t, opt_meta = _opt_tensors(optimizer) if optimizer is not None else ({}, {"param_groups": [], "scalars": {}})
    save_file(opt_t, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "rng": rng_state(), "vocab": vocab, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(redact.config_yaml(cfg))  # no credentials in checkpoints
    write_checksums(tmp)
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _check_safe(path: Path) -> None:
    bad = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if bad:
        raise UserError(f"{path}: refusing pickle-based files {bad}; checkpoints must be safetensors")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a complete LightGen checkpoint (missing {', '.join(missing)})")


def _check_verified(path: Path) -> None:
    problem = verify_checkpoint(path)
    if problem:
        raise UserError(f"corrupt checkpoint {path}: {problem}; use an older checkpoint "
                        f"(its run folder holds the previous ones) or retrain")


def resolve_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        raise UserError(f"{p}: a checkpoint is a folder of safetensors files, not a single file")
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if (p / "state.json").is_file():  # one named checkpoint: it must verify
        _check_safe(p)
        _check_verified(p)
        return p
    cp = latest_checkpoint(p)
    if cp is None:
        if p.is_dir():
            _check_safe(p)
        raise UserError(f"no checkpoint found under {p}")
    # a run folder: its newest checkpoint that verifies (corrupt ones are reported, left in place)
    good, skipped = latest_verified_checkpoint(p, move_aside=False)
    if good is None:
        raise UserError(f"no verified checkpoint under {p}: " + "; ".join(skipped))
    _check_safe(good)
    return good


RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def resolve_source(spec: str | Path, tracking_uri: str | None = None, *, what: str = "checkpoint") -> tuple[Path, str | None]:
    """A checkpoint folder, run folder or MLflow run id → (checkpoint folder, run id or None).

    ``what`` names the option in errors (``--base``, ``train.init_from``).
    """
    p = Path(spec)
    if p.exists():
        return resolve_checkpoint(p), None
    if not RUN_ID_RE.match(str(spec)):
        raise UserError(f"{what} {str(spec)!r}: neither an existing checkpoint folder nor an MLflow run id (32 hex digits)")
    return checkpoint_of_run(str(spec), tracking_uri, what=what), str(spec)


def checkpoint_of_run(run_id: str, tracking_uri: str | None, *, what: str = "checkpoint") -> Path:
    """The newest checkpoint of an MLflow run: its ``lightgen.checkpoint`` tag or param, a ``checkpoint``
    artifact folder, or the default checkpoint folder of its config (``tracking.root``/point/seed)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import TAG_POINT, TAG_SEED, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise UserError(f"{what} {run_id}: no such MLflow run in {uri} ({getattr(e, 'message', e)})") from None
    tags, params = run.data.tags, run.data.params
    candidates: list[tuple[str, Path]] = []
    for where, src in (("tag", tags), ("param", params)):
        if src.get(TAG_CHECKPOINT):
            candidates.append((f"{where} {TAG_CHECKPOINT}", Path(src[TAG_CHECKPOINT])))
    art = run.info.artifact_uri or ""
    if art.startswith("file://"):
        art = art[len("file://"):]
    if art and "://" not in art:
        candidates.append(("artifact folder 'checkpoint'", Path(art) / "checkpoint"))
    if params.get("tracking.root") and tags.get(TAG_POINT) and tags.get(TAG_SEED) is not None:
        candidates.append(("default checkpoint folder of its config",
                           Path(params["tracking.root"]) / "checkpoints" / tags[TAG_POINT] / f"seed{tags[TAG_SEED]}"))
    for _, path in candidates:
        if latest_checkpoint(path) is not None:
            return resolve_checkpoint(path)
    tried = "; ".join(f"{w}: {p}" for w, p in candidates) or "nothing to try"
    raise UserError(f"{what} {run_id}: found no checkpoint for this MLflow run (tried {tried})")


def read_state(cp: Path) -> dict[str, Any]:
    try:
        return json.loads((cp / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cp / 'state.json'}: unreadable checkpoint state: {e}") from e


def incompatible_keys(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    fa, fb = a.flat(), b.flat()
    keys = [k for k in sorted(set(fa) | set(fb)) if k.startswith(COMPAT_PREFIXES) and k not in COMPAT_EXEMPT]
    return [f"{k}: checkpoint {fa.get(k)!r} vs config {fb.get(k)!r}" for k in keys if fa.get(k) != fb.get(k)]


def check_compatible(ckpt_cfg: ExperimentConfig, cfg: ExperimentConfig, where: Path) -> None:
    diff = incompatible_keys(ckpt_cfg, cfg)
    if diff:
        raise UserError(f"checkpoint {where} was trained with an incompatible config:\n  " + "\n  ".join(diff))


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path, strict_keys: bool = True) -> None:
    own = model.state_dict()
    bad_shape = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in tensors if k not in own]
    if bad_shape or unknown:
        raise UserError(f"{where}: weights do not fit the model (shape mismatch: {bad_shape[:5]}, unknown: {unknown[:5]})")
    missing = [k for k in own if k not in tensors and not k.startswith(("text_encoder.", "tokenizer."))]
    if strict_keys and missing:
        raise UserError(f"{where}: weights missing for {missing[:5]}")
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(path: str | Path, *, weights: str = "ema", device: str | torch.device | None = None,
                    expect: ExperimentConfig | None = None) -> tuple[torch.nn.Module, ExperimentConfig]:
    """Rebuild the model from a checkpoint folder (or a run folder: its newest checkpoint).

    ``weights="ema"`` (default, what sampling and evaluation use) or ``"model"`` (raw weights).
    ``expect``: refuse the checkpoint unless its architecture matches this config.
    """
    from lightgen.model.mar import build_model

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    cp = resolve_checkpoint(path)
    cfg = load_config(read_yaml(cp / "config.yaml"))
    if expect is not None:
        check_compatible(cfg, expect, cp)
    state = read_state(cp)
    model = build_model(cfg, vocab=state.get("vocab"))
    load_state_into(model, load_file(str(cp / "model.safetensors")), cp)
    if weights == "ema":
        ema = load_file(str(cp / "ema.safetensors"))
        load_state_into(model, ema, cp, strict_keys=False)
    if device is not None:
        model.to(device)
    model.eval()
    return model, cfg


def interpolate_grid(pos: torch.Tensor, n_extra: int, new_grid: int) -> torch.Tensor:
    """Resize a [1, n_extra + g², W] position embedding to ``new_grid``² grid tokens (bicubic)."""
    extra, grid = pos[:, :n_extra], pos[:, n_extra:]
    g = int(round(grid.shape[1] ** 0.5))
    if g == new_grid:
        return pos
    w = grid.shape[-1]
    img = grid.reshape(1, g, g, w).permute(0, 3, 1, 2).float()
    img = torch.nn.functional.interpolate(img, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([extra, img.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, w).to(pos.dtype)], dim=1)


def init_weights_from(model: torch.nn.Module, path: str | Path, cfg: ExperimentConfig, *, weights: str = "ema") -> Path:
    """Load a checkpoint's weights into a freshly built ``model`` for a new run (e.g. 256 → 512 px).

    The architecture must match except ``data.resolution`` (and the tokenizer grid it implies): position
    embeddings are interpolated to the new grid. Returns the checkpoint folder used.
    """
    cp = resolve_checkpoint(path)
    src_cfg = load_config(read_yaml(cp / "config.yaml"))
    diff = [d for d in incompatible_keys(src_cfg, cfg) if not d.startswith("data.resolution")]
    if diff:
        raise UserError(f"train.init_from: {cp} has an incompatible architecture:\n  " + "\n  ".join(diff))
    tensors = load_file(str(cp / "model.safetensors"))
    if weights == "ema":
        tensors.update(load_file(str(cp / "ema.safetensors")))
    nb, grid = model.buffer_size, model.tokenizer.grid
    for key, extra in (("encoder_pos", nb), ("decoder_pos", nb), ("diffusion_pos", 0)):
        if key in tensors:
            tensors[key] = interpolate_grid(tensors[key], extra, grid)
    load_state_into(model, tensors, cp)
    return cp
