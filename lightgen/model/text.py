"""Text conditioning: a T5 encoder (toy or real) followed by a trainable aligner.

Toy world: a small ``transformers.T5EncoderModel`` built from a ``T5Config`` and a ``tokenizers``
WordLevel tokenizer over the toy vocabulary (the words the caption generator may use).
Real world: ``T5EncoderModel.from_pretrained(path)`` with its own tokenizer (the paper: Flan-T5-XXL,
128 tokens), or ``text_encoder="cached"`` when the dataset stores T5 embeddings (``text_emb`` /
``text_mask`` in each batch) and no encoder runs at all.

``model.text_encoder_mode`` (toy encoder):

* ``trainable`` (**default**): the toy T5 is trained jointly with the student. A *frozen random* T5 maps
  two synonyms to unrelated vectors, so linguistic variety in captions would look harmful by
  construction (the student must learn every synonym separately from scratch through the aligner).
  The paper's frozen Flan-T5 already knows synonyms; a trainable toy encoder is the cheapest way to
  give the toy world the same property — synonyms that co-occur with the same images drift together.
* ``frozen``: the paper's recipe taken literally (useful as the control arm of that argument).
* ``pretrained-toy``: a toy T5 whose weights were trained elsewhere (``model.text_encoder_weights``,
  safetensors), kept frozen — the closest analogue of a frozen *pre-trained* encoder.

The aligner (projection + transformer blocks + LayerNorm) is always trainable. Padding is honoured
everywhere: T5 gets the attention mask, the aligner and the MAR cross-attention get the key mask.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lightgen.model.layers import Block

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


class ToyTextTokenizer:
    """Whitespace word-level tokenizer over a fixed vocabulary (``tokenizers`` WordLevel model)."""

    def __init__(self, words: list[str], max_len: int):
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import WordLevel

        vocab_words: list[str] = []
        seen = {PAD, EOS, UNK}
        for entry in words:
            for w in re.findall(r"\w+|[^\w\s]", str(entry).lower()):
                if w not in seen:
                    seen.add(w)
                    vocab_words.append(w)
        self.words = sorted(vocab_words)
        vocab = {PAD: 0, EOS: 1, UNK: 2}
        vocab.update({w: i + 3 for i, w in enumerate(self.words)})
        tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        self._tok = tok
        self.vocab_size = len(vocab)
        self.max_len = max_len

    def __call__(self, captions: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (ids [B, T] long, mask [B, T] bool), EOS appended, truncated to ``max_len``."""
        seqs = [e.ids[: self.max_len - 1] + [1] for e in self._tok.encode_batch(list(captions))]
        t = max(len(s) for s in seqs) if pad_to is None else max(pad_to, max(len(s) for s in seqs))
        ids = torch.zeros(len(seqs), t, dtype=torch.long)
        mask = torch.zeros(len(seqs), t, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = True
        return ids, mask


def toy_t5_config(vocab_size: int, width: int, depth: int) -> Any:
    from transformers import T5Config

    heads = max(1, width // 32)
    return T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=width // heads, d_ff=4 * width, num_layers=depth,
        num_heads=heads, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False,
    )


class TextEncoder(nn.Module):
    """captions → (features [B, T, text_dim], mask [B, T]) from the toy or a real T5, or cached."""

    def __init__(self, source: str, mode: str, max_len: int, vocab: list[str] | None = None,
                 toy_width: int = 64, toy_depth: int = 2, weights: str | None = None,
                 cached_dim: int | None = None):
        super().__init__()
        self.source, self.mode, self.max_len = source, mode, max_len
        self.t5: nn.Module | None = None
        self.hf_tokenizer = None
        self.toy_tokenizer: ToyTextTokenizer | None = None
        if source == "cached":
            if not cached_dim:
                raise ValueError("model.text_dim must be set when model.text_encoder=cached")
            self.dim = cached_dim
        elif source == "toy":
            if not vocab:
                raise ValueError("the toy text encoder needs a vocabulary (world.vocabulary() or captions)")
            from transformers import T5EncoderModel

            self.toy_tokenizer = ToyTextTokenizer(vocab, max_len)
            self.t5 = T5EncoderModel(toy_t5_config(self.toy_tokenizer.vocab_size, toy_width, toy_depth))
            self.dim = toy_width
            if mode == "pretrained-toy":
                if not weights:
                    raise ValueError("model.text_encoder_mode=pretrained-toy needs model.text_encoder_weights")
                from safetensors.torch import load_file

                try:
                    res = self.t5.load_state_dict(load_file(weights), strict=False)
                except (OSError, RuntimeError) as e:
                    raise ValueError(f"model.text_encoder_weights: cannot load {weights}: {e}") from e
                missing = [k for k in res.missing_keys if k != "encoder.embed_tokens.weight"]  # tied to shared
                if missing or res.unexpected_keys:
                    raise ValueError(f"model.text_encoder_weights: {weights} does not fit the toy T5 "
                                     f"(missing {missing[:3]}, unexpected {res.unexpected_keys[:3]})")
        else:
            from transformers import AutoTokenizer, T5EncoderModel

            try:
                self.t5 = T5EncoderModel.from_pretrained(source, use_safetensors=True)
                self.hf_tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError) as e:
                raise ValueError(f"model.text_encoder: cannot load a T5 encoder from {source!r}: {e}") from e
            self.dim = int(self.t5.config.d_model)
        if self.t5 is not None and self.frozen:
            self.t5.requires_grad_(False).eval()

    @property
    def frozen(self) -> bool:
        return self.mode in ("frozen", "pretrained-toy") or (self.source not in ("toy", "cached") and self.mode != "trainable")

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.t5 is not None and self.frozen:
            self.t5.eval()
        return self

    def tokenize(self, captions: list[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.toy_tokenizer is not None:
            return self.toy_tokenizer(captions, pad_to)
        assert self.hf_tokenizer is not None
        enc = self.hf_tokenizer(list(captions), padding="max_length" if pad_to else "longest",
                                max_length=pad_to or self.max_len, truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def forward(self, captions: list[str] | None = None, *, batch: dict | None = None,
                device: torch.device | str | None = None, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is not None and "text_emb" in batch:
            emb = torch.as_tensor(batch["text_emb"]).to(device).float()
            mask = torch.as_tensor(batch["text_mask"]).to(device).bool() if "text_mask" in batch else torch.ones(
                emb.shape[:2], dtype=torch.bool, device=emb.device)
            if emb.shape[-1] != self.dim:
                raise ValueError(f"batch['text_emb'] has width {emb.shape[-1]}, the model expects {self.dim}")
            return emb, mask
        if self.t5 is None:
            raise ValueError("model.text_encoder=cached but the batch has no 'text_emb'")
        if captions is None:
            captions = batch["captions"] if batch is not None else None
        if captions is None:
            raise ValueError("no captions given to the text encoder")
        ids, mask = self.tokenize(list(captions), pad_to)
        ids, mask = ids.to(device), mask.to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.t5(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return out.float() if self.frozen else out, mask


class TextAligner(nn.Module):
    """Trainable projection + transformer blocks mapping encoder features into the MAR width."""

    def __init__(self, in_dim: int, width: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(feats)
        for blk in self.blocks:
            x = blk(x, key_mask=mask)
        return self.norm(x)
