"""Tiny random real-world models built offline and saved the way real checkpoints are laid out, so that
every `from_pretrained` path is exercised: a diffusers StableDiffusionPipeline teacher, an AutoencoderKL,
a T5 encoder (data/model tests), and Mask2Former (Swin) + CLIP (GenEval's real detector)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lightgen.geneval.prompts import COCO_CLASSES

# A model config that trains and samples in seconds on a CPU (tests of the trainer and DPO).
MICRO_MODEL = [
    "data.resolution=32", "model.patch_size=8", "model.width=32", "model.heads=2", "model.encoder_depth=1",
    "model.decoder_depth=1", "model.cross_depth=2", "model.aligner_depth=1", "model.head_width=192",
    "model.head_depth=1", "model.toy_text_width=16", "model.toy_text_depth=1", "model.buffer_size=2",
]
MICRO = [
    *MICRO_MODEL, "train.batch_size=4", "train.log_every=1", "train.warmup_steps=2", "train.lr=1e-3", "train.num_threads=1",
    "eval.num_iter=2", "eval.diffusion_steps=2", "eval.batch_size=4",
]


WORDS = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "red", "blue", "circle", "star", "two", "stars",
         "and", "ring", "left", "right", "green", "square"]


def _tokenizer(max_len):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=max_len)



def build_generation_models(root: Path) -> Path:
    """teacher/ (StableDiffusionPipeline), vae/ (AutoencoderKL), t5/ (T5EncoderModel + tokenizer) under root."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=8, projection_dim=16,
                                      pad_token_id=0, bos_token_id=2, eos_token_id=3))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16),
                                layers_per_block=1, cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)

    def vae():
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                             norm_num_groups=4, sample_size=32)

    pipe = StableDiffusionPipeline(vae=vae(), text_encoder=te, tokenizer=_tokenizer(8), unet=unet,
                                   scheduler=DDIMScheduler(num_train_timesteps=50), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "teacher")
    vae().save_pretrained(root / "vae")
    t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS), d_model=16, d_kv=4, num_heads=2, num_layers=1, d_ff=32,
                                 pad_token_id=0, eos_token_id=3, decoder_start_token_id=0))
    t5.save_pretrained(root / "t5")
    _tokenizer(12).save_pretrained(root / "t5")
    return root


def build_detector_models(root: Path) -> Path:
    """seg/ (Mask2Former with a tiny Swin backbone) and clip/ (CLIPModel + processor) under root."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer,
                              Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    torch.set_num_threads(1)
    torch.manual_seed(0)
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
