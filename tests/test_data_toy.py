"""Toy datasets: nested prefixes, cache reuse/extension, resume after interruption, measured diversity
moving with each knob at fixed volume, held-out compositions, corrupt shards."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from lightgen.cli import app
from lightgen.cliutil import UserError
from lightgen.config import load_config
from lightgen.data import get_dataset
from lightgen.data.diversity import tfidf, vendi_from_features
from lightgen.world.captions import GENEVAL_SHARE, CaptionGenerator, Knobs
from lightgen.world.toy import ToyWorld


def _cfg(root, *sets):
    return load_config("smoke", [f"tracking.root={root}", "data.shard_size=64", "data.diversity_subsample=200", *sets])


def test_nested_prefixes_and_cache_extension(tmp_path):
    small = get_dataset(_cfg(tmp_path / "a", "data.scale=150k"))  # 150 items
    big_alone = get_dataset(_cfg(tmp_path / "b", "data.scale=400k"))
    assert len(small) == 150 and len(big_alone) == 400
    idx = np.arange(150)
    a, b = small.get_batch(idx), big_alone.get_batch(idx)
    assert a["captions"] == b["captions"] and np.array_equal(a["images"], b["images"]) and a["specs"] == b["specs"]
    # a larger scale extends the same cache folder instead of starting again
    big = get_dataset(_cfg(tmp_path / "a", "data.scale=400k"))
    assert big.path == small.path and big.manifest["count"] == 400
    assert np.array_equal(big.get_batch(np.arange(400))["images"], big_alone.get_batch(np.arange(400))["images"])
    # prefixes hold at another diversity level too
    lo = get_dataset(_cfg(tmp_path / "c", "data.scale=100k", "data.caption_diversity=0.2"))
    lo2 = get_dataset(_cfg(tmp_path / "d", "data.scale=300k", "data.caption_diversity=0.2"))
    assert lo.get_batch(np.arange(100))["captions"] == lo2.get_batch(np.arange(100))["captions"]
    assert lo.path.name != small.path.name


def test_same_config_reuses_cache(tmp_path):
    cfg = _cfg(tmp_path, "data.scale=200k")
    ds = get_dataset(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in ds.path.glob("shard-*")}
    ds2 = get_dataset(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in ds2.path.glob("shard-*")} == mtimes
    assert ds2.manifest_hash == ds.manifest_hash
    b = ds2.get_batch(np.array([5, 0, 199]))
    assert b["images"].shape == (3, 32, 32, 3) and b["images"].dtype == np.uint8 and len(b["captions"]) == 3
    with pytest.raises(IndexError):
        ds2.get_batch(np.array([200]))


def test_interrupted_build_resumes_to_identical_dataset(tmp_path):
    cfg = _cfg(tmp_path / "x", "data.scale=300k")

    def boom(manifest):
        if manifest["count"] >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_dataset(cfg, on_shard=boom)
    folder = next((tmp_path / "x" / "datasets").iterdir())
    # what a kill in the middle of the next shard leaves behind: a temp file and an unlisted shard
    (folder / ".shard-00002.safetensors.abc.tmp").write_bytes(b"half")
    (folder / "shard-00002.safetensors").write_bytes(b"garbage")
    resumed = get_dataset(cfg)
    fresh = get_dataset(_cfg(tmp_path / "y", "data.scale=300k"))
    assert not list(folder.glob(".*.tmp"))
    r, f = resumed.get_batch(np.arange(300)), fresh.get_batch(np.arange(300))
    assert r["captions"] == f["captions"] and np.array_equal(r["images"], f["images"])
    assert [e["sha256"] for e in resumed.manifest["shards"]] == [e["sha256"] for e in fresh.manifest["shards"]]


def test_corrupt_or_truncated_shard_names_it(tmp_path):
    cfg = _cfg(tmp_path, "data.scale=200k")
    ds = get_dataset(cfg)
    shard = ds.path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard-00001.safetensors.*(corrupt|checksum)"):
        get_dataset(cfg).get_batch(np.arange(64, 70))
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(UserError, match="shard-00001.safetensors.*truncated"):
        get_dataset(cfg).get_batch(np.arange(64, 70))


def _metrics(tmp_path, name, *sets):
    cfg = _cfg(tmp_path / name, "data.scale=300k", "data.storage=stream", *sets)
    return get_dataset(cfg).diversity


def test_caption_diversity_moves_every_metric_at_fixed_volume(tmp_path):
    ms = [_metrics(tmp_path, f"d{d}", f"data.caption_diversity={d}") for d in (0.0, 0.5, 1.0)]
    for key in ("distinct_2", "distinct_3", "unique_caption_ratio", "vendi_caption", "coverage",
                "realised_coverage", "unique_compositions", "unique_captions"):
        vals = [m[key] for m in ms]
        assert vals[0] < vals[1] < vals[2], (key, vals)


def test_each_knob_alone(tmp_path):
    fixed = ["data.coverage=0.5", "data.variety=0.5", "data.density=0.5"]

    def sweep(knob, values):
        out = []
        for v in values:
            sets = [s for s in fixed if not s.startswith(f"data.{knob}=")] + [f"data.{knob}={v}"]
            out.append(_metrics(tmp_path, f"{knob}{v}", *sets))
        return out

    var = sweep("variety", (0.0, 0.5, 1.0))
    for key in ("distinct_2", "vendi_caption", "unique_caption_ratio"):
        assert var[0][key] < var[1][key] < var[2][key], (key, [m[key] for m in var])
    assert var[0]["unique_compositions"] == var[2]["unique_compositions"]  # wording only
    cov = sweep("coverage", (0.1, 0.5, 1.0))
    for key in ("coverage", "realised_coverage", "unique_compositions"):
        assert cov[0][key] < cov[1][key] < cov[2][key], (key, [m[key] for m in cov])
    den = sweep("density", (0.0, 0.5, 1.0))
    for key in ("attributes_per_caption", "realised_coverage"):
        assert den[0][key] < den[1][key] < den[2][key], (key, [m[key] for m in den])


def test_heldout_never_in_training_and_captions_describe_images():
    world = ToyWorld(load_config("smoke").world)
    voc = set(world.vocabulary())
    for d in (0.0, 1.0):
        gen = CaptionGenerator(world, Knobs(0.05 + 0.95 * d, d, d), seed=3)
        items = [gen.item(i) for i in range(2500)]
        assert not any(world.is_heldout(s) for s, _ in items)
        assert all(w in voc for _, c in items for w in c.split())
        share = np.mean([c.startswith("a photo of ") for _, c in items])
        assert abs(share - GENEVAL_SHARE) < 0.03, share
        for k, (spec, cap) in enumerate(items[:60]):
            _, objs = world.render_with_objects(spec, 64, gen.render_seed(k))
            got = Counter(o["class"] for o in objs)
            want = Counter()
            for cl in spec["include"]:
                want[cl["class"]] += cl["count"]
                if cl.get("color"):
                    assert cl["color"] in cap.split()
                    assert {o["color"] for o in objs if o["class"] == cl["class"]} >= {cl["color"]}
            assert got == want
            assert all((o["color"], o["class"]) not in world.heldout_color_class for o in objs)


def test_attribute_frequencies_balanced():
    world = ToyWorld(load_config("smoke").world)
    for d in (0.0, 1.0):
        gen = CaptionGenerator(world, Knobs(0.05 + 0.95 * d, d, d), seed=0)
        specs = [gen.item(i)[0] for i in range(3000)]
        tasks = Counter(s["tag"] for s in specs)
        assert max(tasks.values()) / min(tasks.values()) < 1.3, tasks
        classes = Counter(cl["class"] for s in specs for cl in s["include"])
        assert len(classes) == len(world.classes)
        assert max(classes.values()) / min(classes.values()) < 1.6, classes


def test_tfidf_matches_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    caps = ["a photo of a red circle", "two stars", "a red circle and a star", "two stars above a ring"]
    ref = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"[^ ]+").fit_transform(caps)
    ours = tfidf(caps)
    assert np.allclose(np.sort((ours @ ours.T).toarray().ravel()), np.sort((ref @ ref.T).toarray().ravel()))
    assert vendi_from_features(ours) == pytest.approx(vendi_from_features(ref))
    assert vendi_from_features(np.eye(5)) == pytest.approx(5.0)
    assert vendi_from_features(np.ones((5, 3))) == pytest.approx(1.0)


def test_cli_build_and_show(tmp_path):
    runner = CliRunner()
    args = ["--set", f"tracking.root={tmp_path}", "--set", "data.scale=120k"]
    res = runner.invoke(app, ["data", "build", "smoke", *args, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "data/vendi_caption" in res.output and "actual 120" in res.output
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["data", "show", "smoke", *args, "--out", str(out), "--n", "8"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["data", "build", "smoke", *args, "--scale", "150k", "--diversity", "0.3",
                              "--seed", "2", "--out", str(tmp_path / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "actual 150" in res.output and "caption_diversity=0.3" in res.output
    assert len(list((tmp_path / "cache").iterdir())) == 1
    res = runner.invoke(app, ["data", "build", "smoke", "--set", "data.coverage=0"])
    assert res.exit_code == 2 and "data.coverage" in res.output
    res = runner.invoke(app, ["data", "show", "smoke", *args, "--out", str(tmp_path / "nope" / "g.png")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_storage_auto_rule(tmp_path):
    from lightgen.data.toy import resolve_storage

    assert resolve_storage(_cfg(tmp_path)) == "shards"
    assert resolve_storage(load_config("lab", ["data.scale=2M"])) == "stream"  # 2M × 64² × 3 B = 23 GiB
    assert resolve_storage(load_config("lab", ["data.scale=2M", "data.auto_max_gib=64"])) == "shards"
    ds = get_dataset(_cfg(tmp_path, "data.scale=100k", "data.storage=stream"))
    ref = ToyWorld(ds.cfg.world)
    b = ds.get_batch(np.arange(10))
    rec = ds.records(np.arange(10))
    assert np.array_equal(b["images"], ref.render([r["spec"] for r in rec], 32, [r["seed"] for r in rec]))
    assert os.path.getsize(ds.path / "shard-00000.safetensors") < 64 * 32 * 32 * 3  # no images stored


def test_parallel_build_equals_serial(tmp_path):
    serial = get_dataset(_cfg(tmp_path / "s", "data.scale=200k"))
    par = get_dataset(_cfg(tmp_path / "p", "data.scale=200k", "data.num_workers=2"))
    assert [e["sha256"] for e in par.manifest["shards"]] == [e["sha256"] for e in serial.manifest["shards"]]
    assert par.manifest["counts"] == serial.manifest["counts"]


def test_sigkilled_build_resumes(tmp_path):
    """A build process killed with SIGKILL right after its second shard resumes to the same dataset."""
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal\n"
        "from lightgen.config import load_config\n"
        "from lightgen.data import get_dataset\n"
        f"cfg = load_config('smoke', ['tracking.root={tmp_path / 'k'}', 'data.shard_size=64', 'data.scale=300k'])\n"
        "get_dataset(cfg, on_shard=lambda m: os.kill(os.getpid(), signal.SIGKILL) if m['count'] >= 128 else None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = next((tmp_path / "k" / "datasets").iterdir())
    assert json_count(folder) == 128
    resumed = get_dataset(_cfg(tmp_path / "k", "data.scale=300k"))
    fresh = get_dataset(_cfg(tmp_path / "f", "data.scale=300k"))
    assert [e["sha256"] for e in resumed.manifest["shards"]] == [e["sha256"] for e in fresh.manifest["shards"]]


def json_count(folder):
    import json

    return json.loads((folder / "manifest.json").read_text())["count"]


def test_geneval_prompt_phrasing_matches_training_literal():
    from lightgen.world.captions import geneval_prompt

    assert geneval_prompt({"include": [{"class": "circle", "count": 1, "color": "red"}]}) == "a photo of a red circle"
    assert geneval_prompt({"include": [{"class": "star", "count": 2}]}) == "a photo of two stars"
    assert geneval_prompt({"include": [{"class": "arrow", "count": 1}, {"class": "ring", "count": 1}]}) == \
        "a photo of an arrow and a ring"
    assert geneval_prompt({"include": [{"class": "star", "count": 1},
                                       {"class": "circle", "count": 1, "color": "orange",
                                        "position": ["left of", 0]}]}) == "a photo of an orange circle left of a star"
    world = ToyWorld(load_config("smoke").world)
    gen = CaptionGenerator(world, Knobs(1.0, 1.0, 1.0), seed=0)
    literal = [(s, c) for s, c in (gen.item(i) for i in range(300)) if c.startswith("a photo of ")]
    assert literal and all(c == geneval_prompt(s) for s, c in literal)


def test_log_dataset_sends_data_metrics(tmp_path):
    from lightgen.data import log_dataset

    class FakeTracker:
        def __init__(self):
            self.metrics, self.tags = {}, {}

        def log_metrics(self, m, step=0):
            self.metrics.update(m)

        def set_tags(self, t):
            self.tags.update(t)

    ds = get_dataset(_cfg(tmp_path, "data.scale=100k"))
    tr = FakeTracker()
    out = log_dataset(tr, ds)
    want = {f"data/{k}" for k in ds.diversity} | {f"data/{k}" for k in ds.composition_metrics()}
    assert set(tr.metrics) == want and "data/vendi_caption" in out and "data/trainable_coverage" in out
    assert tr.tags["lightgen.dataset"] == ds.manifest_hash
