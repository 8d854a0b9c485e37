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


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Save tiny random checkpoints the way real ones are laid out, so from_pretrained is exercised."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer,
                              Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_real")
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    names = {i: n for i, n in enumerate(COCO_CLASSES)}
    seg_cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                                encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                dim_feedforward=32, num_queries=8, id2label=names,
                                label2id={n: i for i, n in names.items()})
    Mask2FormerForUniversalSegmentation(seg_cfg).save_pretrained(root / "seg")
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(root / "seg")
    # a character-level CLIP BPE vocabulary (no merges): every byte char alone and as a word end
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (root / "clip").mkdir()
    (root / "clip" / "vocab.json").write_text(json.dumps(vocab))
    (root / "clip" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "clip" / "vocab.json"), str(root / "clip" / "merges.txt"))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    clip_cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8)
    CLIPModel(clip_cfg).save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")
    return root


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
