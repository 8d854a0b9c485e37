"""Real world on tiny random models built offline: diffusers teacher → AutoencoderKL + T5 caches,
resume, caption sources and their errors, diversity-controlled selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lightgen.cliutil import UserError  # noqa: E402
from lightgen.config import load_config  # noqa: E402
from lightgen.data import get_dataset  # noqa: E402
from lightgen.data.real import cluster_captions, read_captions, selection_order  # noqa: E402
from lightgen.world.toy import ToyWorld  # noqa: E402

from tests.tiny_models import WORDS, build_generation_models  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random StableDiffusionPipeline, AutoencoderKL and T5 encoder, saved to folders."""
    return build_generation_models(tmp_path_factory.mktemp("models"))


CAPTIONS = ["a red circle", "two stars", "a blue star", "a red circle and a blue star", "a green square",
            "two stars and a ring", "a photo of a ring", "a blue square", "a red star", "a green circle",
            "a photo of two stars", "a ring left of a square"]


def _real_cfg(tmp_path, models, *sets, captions=CAPTIONS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cap = tmp_path / "caps.txt"
    cap.write_text("\n".join(captions) + "\n")
    return load_config("smoke", [
        "world.kind=real", f"world.teacher={models / 'teacher'}", f"world.caption_file={cap}",
        "world.teacher_steps=2", "world.teacher_guidance=2.0", "world.teacher_batch_size=4",
        "world.teacher_device=cpu", f"model.vae={models / 'vae'}", f"model.text_encoder={models / 't5'}",
        "model.max_text_len=12", f"tracking.root={tmp_path / 'root'}", "data.scale=10k", "data.shard_size=16",
        "data.n_clusters=4", "data.diversity_subsample=10", *sets])


def test_diffusers_teacher_and_caches_end_to_end(tmp_path, tiny_models):
    cfg = _real_cfg(tmp_path, tiny_models, "data.scale_divisor=1000")  # 10 items
    ds = get_dataset(cfg)
    assert len(ds) == 10
    b = ds.get_batch(np.array([0, 3, 9]))
    assert b["latent_moments"].shape == (3, 8, 16, 16) and b["latent_moments"].dtype == torch.float32
    assert b["text_emb"].shape == (3, 12, 16) and b["text_mask"].shape == (3, 12)
    assert "images" not in b  # a VAE is set, so images are not kept by default
    assert set(b["captions"]) <= set(CAPTIONS)
    # stored compactly in bf16
    from safetensors import safe_open

    with safe_open(str(ds.path / "shard-00000.safetensors"), "pt") as f:
        assert f.get_slice("latent_moments").get_dtype() == "BF16"
        assert f.get_slice("text_emb").get_dtype() == "BF16"
    # the flip cache is the flipped image's posterior, not a flipped tensor of the original's
    f = ds.get_batch(np.array([0, 3, 9]), flip=[True, False, True])
    assert torch.equal(f["latent_moments"][1], b["latent_moments"][1])
    assert not torch.equal(f["latent_moments"][0], b["latent_moments"][0])
    # the cache matches a direct encode of the teacher's image
    from diffusers import AutoencoderKL

    from lightgen.data.real import DiffusersTeacher

    rec = ds._reader.records(ds.manifest["shards"][0])[0]
    teacher = DiffusersTeacher(str(tiny_models / "teacher"), "cpu", 2, 2.0, 32, 4)
    img = teacher([rec["caption"]], [rec["seed"]])
    vae = AutoencoderKL.from_pretrained(tiny_models / "vae")
    with torch.no_grad():
        d = vae.encode(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
    assert torch.allclose(torch.cat([d.mean, d.logvar], 1)[0], b["latent_moments"][0], atol=0.05, rtol=0.02)
    div = ds.diversity
    assert 0 < div["vendi_caption"] <= 10 and 0 < div["realised_coverage"] <= 1 and div["unique_captions"] >= 1


def test_real_build_resumes_and_reuses(tmp_path, tiny_models):
    # 20 items in shards of 16: interrupted after the first shard, then resumed
    cfg = _real_cfg(tmp_path / "a", tiny_models, "data.scale=20k", "data.scale_divisor=1000", "data.keep_images=true",
                    captions=CAPTIONS * 2)
    seen = []

    def boom(manifest):
        seen.append(manifest["count"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_dataset(cfg, on_shard=boom)
    ds = get_dataset(cfg, on_shard=lambda m: seen.append(m["count"]))
    assert seen == [16, 20] and len(ds) == 20
    fresh = get_dataset(_real_cfg(tmp_path / "b", tiny_models, "data.scale=20k", "data.scale_divisor=1000",
                                  "data.keep_images=true", captions=CAPTIONS * 2))
    x, y = ds.get_batch(np.arange(20)), fresh.get_batch(np.arange(20))
    assert x["captions"] == y["captions"] and np.array_equal(x["images"], y["images"])
    assert torch.equal(x["latent_moments"], y["latent_moments"]) and x["images"].shape == (20, 32, 32, 3)
    before = {p.name: p.stat().st_mtime_ns for p in ds.path.glob("shard-*")}
    again = get_dataset(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in again.path.glob("shard-*")} == before


def test_scale_larger_than_caption_source(tmp_path, tiny_models):
    cfg = _real_cfg(tmp_path, tiny_models, "data.scale_divisor=100")  # 100 > 12 captions
    with pytest.raises(UserError, match=r"100.*12 captions"):
        get_dataset(cfg)


def test_caption_files_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("id,caption\n1,a red circle\n2,two stars\n")
    assert [c["caption"] for c in read_captions(tmp_path / "a.csv")] == ["a red circle", "two stars"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "a photo of a red car", "include": [
        {"class": "car", "count": 1, "color": "red"}]}) + "\n")
    assert read_captions(tmp_path / "b.jsonl")[0]["spec"]["include"][0]["class"] == "car"
    (tmp_path / "c.jsonl").write_text('{"caption": "ok"}\n' + json.dumps(
        {"caption": "x", "include": [{"class": "unicorn", "count": 1}]}) + "\n")
    with pytest.raises(UserError, match=r"c.jsonl:2: unknown class 'unicorn'"):
        read_captions(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text(json.dumps({"caption": "x", "include": [{"class": "car", "color": "teal"}]}))
    with pytest.raises(UserError, match=r"d.jsonl:1: unknown colour 'teal'"):
        read_captions(tmp_path / "d.jsonl")
    (tmp_path / "e.txt").write_text("a red circle\na teal circle\n")
    voc = ToyWorld().vocabulary()
    with pytest.raises(UserError, match=r"e.txt:2: unknown word 'teal'"):
        read_captions(tmp_path / "e.txt", vocabulary=voc)
    (tmp_path / "f.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"f.jsonl:1: malformed JSON"):
        read_captions(tmp_path / "f.jsonl")
    (tmp_path / "g.parquet").write_text("x")
    with pytest.raises(UserError, match="unsupported"):
        read_captions(tmp_path / "g.parquet")


def test_selection_diversity_and_prefixes():
    topics = ["red circle", "blue star", "green square", "two rings", "a cat", "a dog", "a car", "a tree"]
    caps = [f"{t} number {i}" for t in topics for i in range(15)]
    labels = cluster_captions(caps, 8, seed=0)
    assert len(set(labels)) == 8
    lo, hi = selection_order(labels, 0.25, 0), selection_order(labels, 1.0, 0)
    assert sorted(lo.tolist()) == list(range(len(caps)))  # a full order of every caption
    assert len(set(labels[lo[:24]])) == 2 and len(set(labels[hi[:24]])) == 8  # cluster coverage follows d
    assert np.array_equal(selection_order(labels, 0.25, 0)[:10], lo[:10])
