"""GenEval's detector for real images, through transformers: Mask2Former + CLIP colour classification.

GenEval uses mmdetection's Mask2Former (Swin-S, COCO instance segmentation) and OpenCLIP ViT-L/14
zero-shot colour classification. This backend follows the same recipe with transformers models,
loaded by ``from_pretrained`` from a local path or a hub id (e.g. ``facebook/mask2former-swin-small-
coco-instance`` and ``openai/clip-vit-large-patch14``):

* instances: ``Mask2FormerForUniversalSegmentation`` + its image processor's
  ``post_process_instance_segmentation``; each instance's box is the tight box of its mask (as mmdet's
  Mask2Former derives boxes), its score the query's class x mask score;
* colours: only for objects a colour clause checks, the image is composited over a flat ``#999`` grey
  outside the object's mask, cropped to the box, and classified zero-shot among GenEval's ten colours
  with the mean text embedding of three templates ("a photo of a {c} {cls}", "a photo of a
  {c}-colored {cls}", "a photo of a {c} object").

Scores are **GenEval-compatible, not bit-identical** to the official evaluator: the transformers
checkpoints, pre-processing and post-processing differ slightly from the mmdet checkpoint, so
absolute numbers can differ by a point or so. For paper-comparable numbers run the official evaluator
and feed its output with ``lightgen geneval import``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightgen.geneval.prompts import COCO_CLASSES
from lightgen.geneval.rules import COLORS

GREY = (153, 153, 153)  # "#999"
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
# COCO label names used by HF/detectron checkpoints -> GenEval's names
ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
           "motorbike": "motorcycle", "aeroplane": "airplane", "tvmonitor": "tv", "sofa": "couch",
           "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier",
           "cellphone": "cell phone"}


def coco_names(id2label: dict[int, str]) -> dict[int, str | None]:
    """Map a checkpoint's label ids to GenEval class names (None = not a GenEval class).

    80-label COCO checkpoints are mapped by index (COCO order); otherwise by name with aliases.
    """
    labels = {int(k): str(v) for k, v in id2label.items()}
    if sorted(labels) == list(range(80)):
        return {i: COCO_CLASSES[i] for i in range(80)}
    known = set(COCO_CLASSES)
    out: dict[int, str | None] = {}
    for i, name in labels.items():
        n = ALIASES.get(name.lower().replace("-merged", "").replace("-other", ""), name.lower())
        out[i] = n if n in known else None
    return out


def masked_crop(image: np.ndarray, box: list[float], mask: np.ndarray | None) -> np.ndarray:
    """The object on flat #999 grey outside its mask, cropped to its box (GenEval's colour input)."""
    img = np.asarray(image, dtype=np.uint8)
    if mask is not None:
        img = np.where(np.asarray(mask, bool)[..., None], img, np.asarray(GREY, np.uint8))
    h, w = img.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, max(x0 + 1, int(np.ceil(box[2])))), min(h, max(y0 + 1, int(np.ceil(box[3]))))
    return img[y0:y1, x0:x1]


class RealDetector:
    """``detect(image)`` with Mask2Former; ``classify_colors(image, cls, objects)`` with CLIP."""

    def __init__(self, segmenter: Any, seg_processor: Any, clip: Any, clip_processor: Any,
                 device: str = "cpu", score_floor: float = 0.25):
        self.segmenter = segmenter.eval().to(device)
        self.seg_processor = seg_processor
        self.clip = clip.eval().to(device)
        self.clip_processor = clip_processor
        self.device = device
        self.score_floor = score_floor  # below GenEval's lowest threshold (0.3): nothing it uses is lost
        self.names = coco_names(segmenter.config.id2label)
        self._text_cache: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, segmenter: str, clip: str, device: str | None = None) -> "RealDetector":
        """Load both models (path or hub id). Clear error when a path/id cannot be loaded."""
        import torch
        from transformers import AutoImageProcessor, AutoProcessor, CLIPModel, Mask2FormerForUniversalSegmentation

        from lightgen.errors import UserError

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            seg = Mask2FormerForUniversalSegmentation.from_pretrained(segmenter, use_safetensors=True)
            seg_proc = AutoImageProcessor.from_pretrained(segmenter)
        except (OSError, ValueError) as e:
            raise UserError(f"eval.segmenter={segmenter!r}: cannot load a Mask2Former model ({e})") from None
        try:
            clip_model = CLIPModel.from_pretrained(clip, use_safetensors=True)
            clip_proc = AutoProcessor.from_pretrained(clip)
        except (OSError, ValueError) as e:
            raise UserError(f"eval.clip={clip!r}: cannot load a CLIP model ({e})") from None
        return cls(seg, seg_proc, clip_model, clip_proc, device=device)

    # ---- instances -----------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """Raw detections: every instance of a GenEval class with score > score_floor, with its mask."""
        import torch
        from PIL import Image

        img = np.asarray(image, dtype=np.uint8)
        h, w = img.shape[:2]
        inputs = self.seg_processor(images=Image.fromarray(img), return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.segmenter(**inputs)
        res = self.seg_processor.post_process_instance_segmentation(
            outputs, threshold=self.score_floor, target_sizes=[(h, w)], return_binary_maps=True)[0]
        seg = res["segmentation"]
        masks = np.zeros((0, h, w), bool) if seg is None else np.asarray(seg.cpu().numpy(), bool).reshape(-1, h, w)
        out: dict[str, list[dict[str, Any]]] = {}
        for k, info in enumerate(res["segments_info"]):
            name = self.names.get(int(info["label_id"]))
            mask = masks[k] if k < len(masks) else None
            if name is None or mask is None or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            out.setdefault(name, []).append({"box": box, "score": float(info["score"]), "color": None, "mask": mask})
        for objs in out.values():
            objs.sort(key=lambda o: -o["score"])
        return out

    # ---- colours -------------------------------------------------------------------------------
    def _text_classifier(self, cls: str) -> Any:
        """[10, D] normalised mean embedding of the three templates per colour (cached per class)."""
        import torch

        if cls not in self._text_cache:
            texts = [t.format(c=c, cls=cls) for c in COLORS for t in TEMPLATES]
            tok = self.clip_processor.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                emb = self.clip.get_text_features(**tok)
            emb = getattr(emb, "pooler_output", emb)
            emb = torch.nn.functional.normalize(emb, dim=-1).reshape(len(COLORS), len(TEMPLATES), -1).mean(1)
            self._text_cache[cls] = torch.nn.functional.normalize(emb, dim=-1)
        return self._text_cache[cls]

    def classify_colors(self, image: np.ndarray, cls: str, objects: list[dict[str, Any]]) -> list[str]:
        """GenEval colour for each object (masked crop on #999 grey, zero-shot CLIP)."""
        import torch
        from PIL import Image

        if not objects:
            return []
        crops = [Image.fromarray(masked_crop(image, o["box"], o.get("mask"))) for o in objects]
        pix = self.clip_processor.image_processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            emb = self.clip.get_image_features(pixel_values=pix)
        emb = getattr(emb, "pooler_output", emb)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        logits = emb @ self._text_classifier(cls).T
        return [COLORS[int(i)] for i in logits.argmax(-1).cpu()]
