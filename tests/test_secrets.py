"""Secrets: storage passwords never in messages, params, artifacts, checkpoints, manifests or argv; every
model loaded with use_safetensors=True; the trial-runner hook limited to the project's own modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightgen.config import ConfigError, load_config
from lightgen.redact import redact

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3tPW"
URL = f"postgresql://bob:{SECRET}@127.0.0.1:1/optuna"


def test_redact_masks_url_passwords_and_keeps_the_rest():
    assert redact(URL) == "postgresql://bob:***@127.0.0.1:1/optuna"
    assert redact("http://h/x?token=abc&y=2") == "http://h/x?token=***&y=2"
    for plain in ("journal:mlruns/optuna/journal.log", "sqlite:///mlflow.db", "postgresql://bob@db/x", "a=b"):
        assert redact(plain) == plain


def test_unreachable_storage_error_does_not_print_the_password():
    from lightgen.sweep import open_storage

    with pytest.raises(ConnectionError) as e:
        open_storage(URL, heartbeat=False)
    assert SECRET not in str(e.value) and "bob:***@" in str(e.value)


def test_workers_get_the_storage_url_by_environment_not_argv(monkeypatch):
    import subprocess

    from lightgen import sweep as sw

    seen = {}

    class FakePopen:
        def __init__(self, cmd, env=None, cwd=None):
            seen.update(cmd=cmd, env=env)
            self.pid = 1

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    opts = sw.LaunchOptions(preset="smoke", sets={"sweep.storage": URL})
    sw._spawn_worker("data-scale", opts, URL, f"http://u:{SECRET}@mlflow:5000", "p" * 32, {})
    assert not any(SECRET in a for a in seen["cmd"]), seen["cmd"]
    assert seen["env"][sw.ENV_STORAGE] == URL and SECRET in seen["env"][sw.ENV_SETS]


def test_config_passwords_are_not_stored_in_params_artifacts_or_checkpoints(tmp_path):
    import torch
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import tracked_run
    from lightgen.train import checkpoint as ckpt
    from lightgen.train.pretrain import train
    from lightgen.train.squares import SquaresDataset
    from tests.tiny_models import MICRO

    torch.set_num_threads(1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config("smoke", [*MICRO, "train.iterations=1", f"sweep.storage={URL}", f"tracking.tracking_uri={uri}"])
    with tracked_run(cfg, experiment="t", kind="train") as tracker:
        res = train(cfg, SquaresDataset(8, resolution=32), tmp_path / "ck", tracker=tracker, count_flops=False)
        run_id = tracker.run_id
    client = MlflowClient(uri)
    params = client.get_run(run_id).data.params
    assert params["sweep.storage"] == "postgresql://bob:***@127.0.0.1:1/optuna"
    assert not any(SECRET in v for v in params.values())
    assert SECRET not in Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert SECRET not in (res.checkpoint / "config.yaml").read_text()
    assert ckpt.load_checkpoint(res.checkpoint)[1].model.width == 32  # the redacted config still loads


def test_toy_dataset_manifest_holds_no_password(tmp_path):
    from lightgen.data import get_dataset

    cfg = load_config("smoke", ["data.scale=20k", f"tracking.root={tmp_path}", f"sweep.storage={URL}",
                                "data.diversity_subsample=10"])
    ds = get_dataset(cfg, progress=False)
    assert SECRET not in repr(ds.manifest)
    assert not any(SECRET in p.read_text(errors="ignore") for p in tmp_path.rglob("*.json"))


def test_trial_runner_hook_is_limited_to_the_projects_modules(monkeypatch):
    from lightgen.sweep import _resolve_runner

    monkeypatch.setenv("LIGHTGEN_TRIAL_RUNNER", "os:system")
    assert _resolve_runner(None).__name__ == "run_trial"  # the environment no longer swaps the runner
    with pytest.raises(ConfigError, match="trial runner must come from"):
        _resolve_runner("os:system")
    assert _resolve_runner("lightgen.testing:fake_trial").__name__ == "fake_trial"


def test_every_model_from_pretrained_uses_safetensors():
    call = re.compile(r"(?<!`)\b(\w+)\.from_pretrained\((.*)")
    offenders = []
    for path in (REPO / "lightgen").rglob("*.py"):
        for line in path.read_text().splitlines():
            m = call.search(line)
            if not m or line.lstrip().startswith("def "):
                continue
            cls, rest = m.group(1), m.group(2)
            if cls.endswith(("Tokenizer", "Processor")) or cls in ("cls", "RealDetector"):
                continue  # tokenizers/processors load no weights; RealDetector's own loader is checked inside
            if "use_safetensors=True" not in rest:
                offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert not offenders, offenders
