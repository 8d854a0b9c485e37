"""The bad-input corpus: every case gets a clear message naming the field or file, a non-zero exit code,
no traceback, and leaves nothing RUNNING in the tracking store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.fault


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "lightgen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_nothing_running(cwd: Path) -> None:
    db = cwd / "mlflow.db"
    if not db.exists():
        return
    import sqlite3

    with sqlite3.connect(db) as con:
        try:
            n = con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:  # no runs table: nothing was ever started
            return
    assert n == 0, "a run was left RUNNING"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every kind, plus a real tiny checkpoint and dataset to corrupt."""
    d = tmp_path_factory.mktemp("bad")
    (d / "malformed.yaml").write_text("train: [unclosed\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "unknown_key.yaml").write_text("train:\n  iteratons: 5\n")
    (d / "evil.yaml").write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "bad_sweep.yaml").write_text("name: bad\narms:\n  - name: a\n    grid:\n      model.sise: [tiny]\n")
    (d / "oor_sweep.yaml").write_text("name: oor\narms:\n  - name: a\n    grid:\n      data.caption_diversity: [2.0]\n")
    (d / "empty.txt").write_text("\n\n")
    (d / "captions.jsonl").write_text('{"caption": "a red circle"}\n{"caption": "x", "include": [{"class": "circle", "count": 1, "color": "mauve"}]}\n')
    good = {"filename": "00000/samples/0000.png", "tag": "colors", "prompt": "a photo of a red circle", "correct": True,
            "reason": "", "metadata": {"tag": "colors", "prompt": "a photo of a red circle",
                                       "include": [{"class": "circle", "count": 1, "color": "red"}]}, "details": {}}
    (d / "results_bad.jsonl").write_text(json.dumps(good) + "\nnot json at all\n")
    (d / "pickle.pt").write_bytes(b"\x80\x04\x95 not a safetensors file")
    ck = d / "ckpt_garbage"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"garbage")
    # GenEval folders: one with a missing sample, one with malformed metadata
    g1 = d / "geneval_missing" / "00000"
    (g1 / "samples").mkdir(parents=True)
    (g1 / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                                   "prompt": "a photo of a circle"}) + "\n")
    g2 = d / "geneval_badmeta" / "00000"
    (g2 / "samples").mkdir(parents=True)
    (g2 / "metadata.jsonl").write_text("{not json\n")
    # pairs escaping their folder
    (d / "pairs").mkdir()
    (d / "pairs" / "pairs.jsonl").write_text(json.dumps({"pos_image_path": "../evil.png", "neg_image_path": "b.png",
                                                          "caption": "a red circle"}) + "\n")
    (d / "a_file").write_text("not a folder")
    # a real tiny checkpoint (1 step) to test the incompatible-config path
    res = _run(d, "train", "smoke", "--set", "train.iterations=1", "--set", "eval.enabled=false",
               "--set", "data.scale=50k", "--set", f"tracking.root={d / 'root'}", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpts = sorted((d / "root" / "checkpoints").glob("*/seed0/step-*"))
    assert ckpts
    shards = sorted((d / "root" / "datasets").rglob("*.safetensors")) + sorted((d / "root" / "datasets").rglob("*.npz"))
    return {"dir": d, "ckpt": ckpts[-1], "root": d / "root", "shards": shards}


CASES = [
    # (id, args (with {d} for the files folder), expected code, needle)
    ("malformed-yaml", ["train", "{d}/malformed.yaml"], 2, "malformed YAML"),
    ("yaml-not-mapping", ["train", "{d}/list.yaml"], 2, "mapping"),
    ("unknown-key-in-file", ["train", "{d}/unknown_key.yaml"], 2, "train.iteratons"),
    ("yaml-python-tag", ["train", "{d}/evil.yaml"], 2, "malformed YAML"),
    ("missing-config-file", ["train", "{d}/nope.yaml"], 2, "not found"),
    ("unknown-preset", ["train", "nopreset"], 2, "unknown preset 'nopreset'"),
    ("wrong-type", ["train", "smoke", "--set", "train.iterations=abc"], 2, "train.iterations"),
    ("unknown-override-key", ["train", "smoke", "--set", "train.bogus=1"], 2, "train.bogus"),
    ("unknown-section", ["train", "smoke", "--set", "nosuch.x=1"], 2, "nosuch"),
    ("negative-scale", ["train", "smoke", "--set", "data.scale=-5"], 2, "data.scale"),
    ("scale-garbage", ["train", "smoke", "--set", "data.scale=lots"], 2, "data.scale"),
    ("diversity-out-of-range", ["train", "smoke", "--set", "data.caption_diversity=1.5"], 2, "data.caption_diversity"),
    ("beta-out-of-range", ["train", "smoke", "--set", "dpo.beta=-1"], 2, "dpo.beta"),
    ("bad-model-size", ["train", "smoke", "--set", "model.size=XXL"], 2, "model.size"),
    ("resolution-vs-patch", ["train", "smoke", "--set", "data.resolution=34"], 2, "patch_size"),
    ("override-without-equals", ["train", "smoke", "--set", "train.iterations"], 2, "key.sub=value"),
    ("unknown-sweep", ["sweep", "no-such-sweep"], 2, "unknown sweep 'no-such-sweep'"),
    ("sweep-unknown-preset", ["sweep", "data-scale", "--preset", "nope"], 2, "unknown preset 'nope'"),
    ("sweep-bad-axis", ["sweep", "{d}/bad_sweep.yaml", "--dry-run"], 2, "model.sise"),
    ("sweep-out-of-range-axis", ["sweep", "{d}/oor_sweep.yaml", "--dry-run"], 2, "data.caption_diversity"),
    ("gpu-does-not-exist", ["sweep", "data-scale", "--gpus", "3"], 2, "--gpus names GPU 3"),
    ("gpus-not-integers", ["sweep", "data-scale", "--gpus", "a,b"], 2, "--gpus"),
    ("tracking-unreachable", ["sweep", "data-scale", "--tracking-uri", "http://127.0.0.1:{port}"], 2, "unreachable"),
    ("storage-unreachable", ["sweep", "data-scale", "--storage", "postgresql+psycopg2://u@127.0.0.1:{port}/x"], 2, "unreachable"),
    ("root-not-writable", ["sweep", "data-scale", "--set", "tracking.root={d}/a_file/sub"], 2, "tracking.root"),
    ("missing-checkpoint", ["sample", "--checkpoint", "{d}/no_ckpt", "--prompt", "a red circle"], 2, "no_ckpt"),
    ("corrupt-checkpoint", ["sample", "--checkpoint", "{d}/ckpt_garbage", "--prompt", "a red circle"], 2, "ckpt_garbage"),
    ("pickle-checkpoint", ["sample", "--checkpoint", "{d}/pickle.pt", "--prompt", "a red circle"], 2, "safetensors"),
    ("incompatible-checkpoint", ["dpo", "smoke", "--base", "{ckpt}", "--set", "model.width=64",
                                 "--set", "tracking.root={d}/root2", "--no-geneval"], 2, "incompatible"),
    ("empty-caption-file", ["data", "build", "smoke", "--set", "world.kind=real", "--set", "world.caption_file={d}/empty.txt",
                            "--set", "world.teacher=x", "--set", "tracking.root={d}/root3"], 2, "empty.txt"),
    ("caption-file-unknown-colour", ["data", "build", "smoke", "--set", "world.kind=real",
                                     "--set", "world.caption_file={d}/captions.jsonl", "--set", "world.teacher=x",
                                     "--set", "tracking.root={d}/root4"], 2, "captions.jsonl:2"),
    ("geneval-missing-samples", ["geneval", "evaluate", "{d}/geneval_missing"], 2, "00000"),
    ("geneval-malformed-metadata", ["geneval", "evaluate", "{d}/geneval_badmeta"], 2, "metadata.jsonl"),
    ("results-bad-lines", ["geneval", "summary", "{d}/results_bad.jsonl"], 2, "results_bad.jsonl:2"),
    ("runs-import-missing-bundle", ["runs", "import", "{d}/no_bundle"], 2, "no_bundle"),
    ("dpo-pairs-escape-folder", ["dpo", "smoke", "--base", "{ckpt}", "--set", "dpo.pairs={d}/pairs/pairs.jsonl",
                                 "--set", "tracking.root={d}/root5", "--no-geneval"], 2, "pairs.jsonl:1"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, files, tmp_path, monkeypatch):
    """In-process (typer's CliRunner) for speed; the exit code and the message are the CLI's own."""
    from typer.testing import CliRunner

    from lightgen.cli import app

    _, args, code, needle = case
    port = _free_port()
    fill = {"d": str(files["dir"]), "ckpt": str(files["ckpt"]), "port": str(port)}
    args = [a.format(**fill) for a in args]
    needle = needle.format(**fill)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    res = CliRunner().invoke(app, args)
    out = res.output
    assert res.exit_code == code, (out[-2000:], res.exception)
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"  # no traceback
    assert needle in " ".join(out.split()), out[-2000:]
    _assert_nothing_running(tmp_path)


def test_corrupt_shard_is_named(files, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(files["root"] / "datasets", root / "datasets")
    shards = sorted((root / "datasets").rglob("*.safetensors")) + sorted((root / "datasets").rglob("*.npz"))
    assert shards, "the fixture's dataset has no shard files"
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated
    res = _run(tmp_path, "data", "show", "smoke", "--set", "data.scale=50k", "--set", f"tracking.root={root}",
               "--out", str(tmp_path / "grid.png"))
    assert res.returncode == 2 and shards[0].name in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_corpus_size():
    assert len(CASES) + 1 >= 30


@pytest.mark.parametrize("name", ["../../outside.safetensors", "/etc/passwd", "sub/dir.safetensors", ""])
def test_manifest_cannot_point_outside_its_folder(tmp_path, name):
    from lightgen.cliutil import UserError
    from lightgen.data.store import ShardReader

    (tmp_path / "outside.safetensors").write_bytes(b"x")
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    reader = ShardReader(folder, [{"file": name, "bytes": 1, "sha256": "0", "start": 0, "count": 1}])
    with pytest.raises(UserError, match="refusing"):
        reader._check(reader.entries[0])
