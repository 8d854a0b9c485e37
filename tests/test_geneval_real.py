"""Real-world detector plumbing with tiny random Mask2Former (Swin) and CLIP models built offline."""

import json

import numpy as np
import pytest
import torch

from lightgen.cliutil import UserError
from lightgen.geneval.evaluate import evaluate_images
from lightgen.geneval.prompts import COCO_CLASSES
from lightgen.geneval.real_detector import GREY, RealDetector, coco_names, masked_crop
from lightgen.geneval.rules import COLORS
from tests.tiny_models import build_detector_models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Save tiny random checkpoints the way real ones are laid out, so from_pretrained is exercised."""
    return build_detector_models(tmp_path_factory.mktemp("tiny_real"))


@pytest.fixture(scope="module")
def detector(tiny_models):
    det = RealDetector.from_pretrained(str(tiny_models / "seg"), str(tiny_models / "clip"), device="cpu")
    det.score_floor = 0.0  # random weights give low scores; keep every instance to exercise the plumbing
    return det


def test_detect_boxes_from_masks(detector):
    img = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    dets = detector.detect(img)
    assert dets and set(dets) <= set(COCO_CLASSES)
    for objs in dets.values():
        assert [o["score"] for o in objs] == sorted((o["score"] for o in objs), reverse=True)
        for o in objs:
            assert o["mask"].shape == (48, 40) and 0.0 <= o["score"] <= 1.0 and o["color"] is None
            ys, xs = np.nonzero(o["mask"])
            assert o["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_colour_classification_and_evaluation(detector):
    img = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    dets = detector.detect(img)
    cls = next(iter(dets))
    colors = detector.classify_colors(img, cls, dets[cls])
    assert len(colors) == len(dets[cls]) and set(colors) <= set(COLORS)
    assert colors == detector.classify_colors(img, cls, dets[cls])
    assert detector._text_classifier(cls).shape == (10, 8)
    spec = {"tag": "colors", "prompt": f"a photo of a red {cls}",
            "include": [{"class": cls, "count": 1, "color": "red"}]}
    [row] = evaluate_images([img[None]], [spec], detector)
    assert set(row) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    # random weights score < 0.3, so GenEval's threshold removes everything: the image fails on the count
    assert row["correct"] is False and row["reason"] == f"expected {cls}>=1, found 0"


def test_masked_crop_on_grey():
    img = np.full((10, 10, 3), 7, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:4, 3:6] = True
    crop = masked_crop(img, [2, 1, 7, 5], mask)
    assert crop.shape == (4, 5, 3)
    assert (crop[1:3, 1:4] == 7).all() and (crop[0] == GREY).all() and (crop[:, 0] == GREY).all()


def test_label_mapping():
    assert coco_names({i: f"x{i}" for i in range(80)})[64] == "computer mouse"
    named = coco_names({0: "person", 1: "mouse", 2: "remote", 3: "banner", 4: "keyboard"})
    assert named == {0: "person", 1: "computer mouse", 2: "tv remote", 3: None, 4: "computer keyboard"}


def test_bad_paths_name_the_field(tmp_path):
    with pytest.raises(UserError, match="eval.segmenter"):
        RealDetector.from_pretrained(str(tmp_path / "nope"), str(tmp_path / "nope2"))
