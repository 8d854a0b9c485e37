"""Toy GenEval: prompt set, exact detector on teacher renders, collapse on shuffled images, cache."""

import json

import numpy as np
import pytest

from lightgen.config import load_config
from lightgen.geneval.evaluate import evaluate_images
from lightgen.geneval.prompts import TASKS, toy_prompts
from lightgen.geneval.summary import summarize
from lightgen.geneval.toy_detector import ToyDetector
from lightgen.world.toy import ToyWorld

RES = 32  # the smoke preset's resolution: the hardest case (smallest objects)


@pytest.fixture(scope="module")
def world():
    return ToyWorld(load_config("smoke").world)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # shared by every geneval test file of the session (tracking.root=<basetemp>/gvroot), so the
    # classifier's training renders are made once per session
    path = tmp_path_factory.getbasetemp() / "gvroot" / "geneval"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def detector(world, cache):
    det = ToyDetector(world, cache_dir=cache)
    det.classifier(RES)
    return det


def test_toy_prompts_seeded_and_flagged(world):
    a = toy_prompts(world, 8, seed=3)
    assert a == toy_prompts(world, 8, seed=3)
    assert a != toy_prompts(world, 8, seed=4)
    tags = [s["tag"] for s in a]
    assert [tags.count(t) for t in TASKS] == [8] * 6
    assert len({json.dumps(s, sort_keys=True) for s in a}) == len(a)  # 8 per task: all distinct
    for s in a:
        assert not world.is_heldout(s) and "seen" not in s  # the standard set: trainable compositions only
        world.validate_spec(s)  # every prompt is renderable by the teacher
        for cl in s["include"]:
            assert cl["class"] in world.classes and cl.get("color", "red") in world.colors
    from lightgen.world.captions import geneval_prompt

    # the same literal phrasing as the GenEval-style training captions
    assert all(s["prompt"] == geneval_prompt(s) for s in a)
    examples = {s["prompt"] for s in toy_prompts(world, 40, seed=0)}
    assert any(p.startswith("a photo of three ") for p in examples)
    assert any(" left of a" in p for p in examples)
    # 12 classes give only 12 distinct single-object prompts: they are repeated to fill the task
    singles = [s for s in toy_prompts(world, 20, seed=0) if s["tag"] == "single_object"]
    assert len(singles) == 20 and len({s["prompt"] for s in singles}) == len(world.classes)


def test_detector_boxes_and_colours_exact(world, detector):
    spec = {"tag": "color_attr", "prompt": "", "include": [
        {"class": "star", "count": 1, "color": "red"}, {"class": "circle", "count": 1, "color": "blue"}]}
    for seed in range(5):
        img, objs = world.render_with_objects(spec, RES, seed)
        dets = detector.detect(img)
        for o in objs:
            found = dets[o["class"]][0]
            assert found["color"] == o["color"] and found["score"] > 0.9
            assert np.abs(np.subtract(found["box"], o["box"])).max() <= 1


def _images(world, specs, n=2):
    return [world.render([s] * n, RES, [100 + i * n + j for j in range(n)]) for i, s in enumerate(specs)]


def test_teacher_renders_score_high_and_shuffled_collapse(world, detector):
    specs = toy_prompts(world, 12, seed=0)
    imgs = _images(world, specs)
    s = summarize(evaluate_images(imgs, specs, detector), bootstrap=100, seed=0)
    assert s["geneval/overall"] >= 0.97
    assert s["geneval/overall_ci_low"] <= s["geneval/overall"] <= s["geneval/overall_ci_high"]
    assert not any("seen" in k for k in s)
    perm = np.random.default_rng(0).permutation(len(imgs))
    shuffled = summarize(evaluate_images([imgs[p] for p in perm], specs, detector), bootstrap=0)
    assert shuffled["geneval/overall"] < 0.35


def test_no_detections_on_blank_and_few_on_noise(world, detector):
    grey = np.full((RES, RES, 3), 128, np.uint8)
    assert detector.detect(grey) == {}
    rng = np.random.default_rng(0)
    n_fp = 0
    for _ in range(10):
        noise = rng.integers(0, 256, size=(RES, RES, 3), dtype=np.uint8)
        n_fp += sum(1 for objs in detector.detect(noise).values() for o in objs if o["score"] > 0.3)
    assert n_fp <= 10  # at most one spurious confident object per pure-noise image on average


def test_classifier_cache_is_plain_npz_and_reused(world, detector, cache, monkeypatch):
    files = list(cache.glob("toy_detector_*.npz"))  # other test files may add caches of other sizes
    assert files
    for f in files:
        with np.load(f, allow_pickle=False) as z:  # raises if anything needed pickle
            assert z["X"].shape[0] == z["y"].shape[0] > 100
    again = ToyDetector(world, cache_dir=cache)

    def no_render(*a, **k):
        raise AssertionError("the cached classifier must be refit without rendering")

    with monkeypatch.context() as m:
        m.setattr(world, "render", no_render)
        m.setattr(world, "render_with_objects", no_render)
        again.classifier(RES)  # refit from the cache, no re-rendering
    img = world.render([{"tag": "t", "prompt": "", "include": [{"class": "ring", "count": 3}]}], RES, [5])[0]
    assert again.detect(img) == detector.detect(img)
    assert len(detector.detect(img)["ring"]) == 3


@pytest.mark.fault
def test_garbled_detector_cache_is_rebuilt(world, tmp_path, capsys):
    det = ToyDetector(world, cache_dir=tmp_path, n_train=120)
    X, y, names = det.training_set(RES)
    (path,) = tmp_path.glob("toy_detector_*.npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\x00" * 64  # garbled in the middle
    path.write_bytes(bytes(data))
    X2, y2, names2 = ToyDetector(world, cache_dir=tmp_path, n_train=120).training_set(RES)
    assert np.array_equal(X, X2) and np.array_equal(y, y2) and names == names2  # rebuilt, not crashed
    assert "detector cache" in capsys.readouterr().err
    path.write_bytes(b"not a zip at all")
    X3, _, _ = ToyDetector(world, cache_dir=tmp_path, n_train=120).training_set(RES)
    assert np.array_equal(X, X3)
    ToyDetector(world, cache_dir=tmp_path, n_train=120).training_set(RES)  # the rebuilt cache is readable


def _cpu_world(seed=0, fraction=0.5):
    from lightgen.config import WorldConfig

    return ToyWorld(WorldConfig(n_classes=6, n_colors=6, max_objects=3, layout="grid", pose="fixed",
                                heldout_fraction=fraction, seed=seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_heldout_prompt_set_enumerates_the_heldout_compositions_matched_by_class(seed):
    from collections import Counter

    from lightgen.geneval.prompts import toy_heldout_prompts

    w = _cpu_world(seed)
    held = toy_heldout_prompts(w, 40, seed=seed)
    assert held == toy_heldout_prompts(w, 40, seed=seed)
    by_task = {t: [s for s in held if s["tag"] == t] for t in ("counting", "colors", "position", "color_attr")}
    distinct = {t: len({json.dumps(s, sort_keys=True) for s in v}) for t, v in by_task.items()}
    # the cpu world has 6 held-out (class, count), 18 (colour, class), 60 triples: all of the first two,
    # 40 of the others, every one distinct and every one using a held-out composition
    assert distinct == {"counting": 6, "colors": 18, "position": 40, "color_attr": 40}
    assert {t: len(v) for t, v in by_task.items()} == distinct
    assert all(s["split"] == "heldout" and w.is_heldout(s) for s in held)
    assert {(s["include"][0]["color"], s["include"][0]["class"]) for s in by_task["colors"]} == set(w.heldout_color_class)
    # matched by class (and count) to the standard set, which comes from the balanced complement
    std = [s for s in toy_prompts(w, 40, seed=seed)]
    assert not any(w.is_heldout(s) for s in std)
    for task in ("counting", "colors"):
        hc = Counter(s["include"][0]["class"] for s in by_task[task])
        assert set(hc) == set(w.classes) and len(set(hc.values())) == 1
        sc = {s["include"][0]["class"] for s in std if s["tag"] == task}
        assert sc == set(w.classes)
    assert Counter(s["include"][0]["count"] for s in by_task["counting"]) == {2: 3, 3: 3}
    assert Counter(s["include"][0]["count"] for s in std if s["tag"] == "counting").keys() == {2, 3}
    subj = Counter(s["include"][1]["class"] for s in by_task["position"])
    assert max(subj.values()) - min(subj.values()) <= 1


def test_per_run_splits_on_a_hand_built_dataset():
    """A dataset whose compositions are known item by item: each prompt's split follows from them."""
    from lightgen.data.compositions import item_compositions, prompt_split, with_splits
    from lightgen.geneval.prompts import spec_color, spec_color_attr, spec_counting, spec_position, spec_single, spec_two

    w = _cpu_world()
    tr = {c: w.trainable_colors(c) for c in w.classes}
    circle_ok, circle_other = tr["circle"][0], tr["circle"][1]
    n_ok = next(n for n in (2, 3) if ("circle", n) not in w.heldout_class_count)
    n_held = 5 - n_ok
    rel = next(r for r in w.relations if ("circle", r, "square") not in w.heldout_relation)
    rel_held = next(r for r in w.relations if ("circle", r, "square") in w.heldout_relation)
    inv = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
    items = [
        {"include": [{"class": "circle", "count": 1, "color": circle_ok}]},            # (circle_ok, circle)
        {"include": [{"class": "circle", "count": n_ok}]},                               # (circle, n_ok)
        {"include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": [rel, 0]}]},
        {"include": [{"class": "square", "count": 1, "color": tr["square"][0]}]},
    ]
    train: set = set()
    for i, spec in enumerate(items):
        realised, leaked = item_compositions(w, spec, w.objects(spec, 32, i))
        assert not leaked
        train |= realised
    cases = [
        (spec_single("circle"), "intrain"),
        (spec_single("star"), "novel"),                              # no star in this data
        (spec_two("circle", "square"), "intrain"),
        (spec_color("circle", circle_ok), "intrain"),
        (spec_color("circle", circle_other), "novel"),               # trainable, never in this data
        (spec_color("circle", sorted(c for c, k in w.heldout_color_class if k == "circle")[0]), "heldout"),
        (spec_counting("circle", n_ok), "intrain"),
        (spec_counting("circle", n_held), "heldout"),
        (spec_counting("square", n_ok), "heldout" if ("square", n_ok) in w.heldout_class_count else "novel"),
        (spec_position("circle", "square", rel), "intrain"),
        (spec_position("square", "circle", inv), "intrain"),          # the same scene, named the other way
        (spec_position("circle", "square", rel_held), "heldout"),
        (spec_color_attr("circle", circle_ok, "square", tr["square"][0]), "intrain"),
        (spec_color_attr("circle", circle_ok, "square", tr["square"][1]), "novel"),
    ]
    for spec, want in cases:
        assert prompt_split(w, spec, frozenset(train)) == want, spec["prompt"]
    assert [s["split"] for s in with_splits(w, [c for c, _ in cases], frozenset(train))] == [c[1] for c in cases]
    # without the run's data only the held-out split is known
    assert [prompt_split(w, c, None) for c, want in cases] == [want if want == "heldout" else None for _, want in cases]
