"""The MAR student: tokenizers, masking statistics, padding invariance, the DPO-facing loss API, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightgen.config import ConfigError, load_config
from lightgen.model.mar import build_model
from lightgen.model.sampling import sample_images
from lightgen.model.tokenizers import LatentTokenizer, PatchTokenizer, VAETokenizer
from lightgen.train.squares import SquaresDataset

from tests.tiny_models import MICRO_MODEL  # noqa: E402

torch.set_num_threads(1)

MICRO = [*MICRO_MODEL, "eval.num_iter=4", "eval.diffusion_steps=3", "eval.cfg=2.0", "eval.batch_size=4"]


def micro_cfg(*extra: str):
    return load_config("smoke", [*MICRO, *extra])


@pytest.fixture(scope="module")
def ds():
    return SquaresDataset(32, resolution=32)


@pytest.fixture(scope="module")
def model(ds):
    return build_model(micro_cfg(), vocab=ds.vocabulary())


def test_patch_tokenizer_round_trip_exact():
    tok = PatchTokenizer(16, 4)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    t = tok.encode_images(imgs)
    assert t.shape == (3, 16, 48) and tok.seq_len == 16 and tok.token_dim == 48
    assert float(t.min()) >= -1 and float(t.max()) <= 1
    assert np.array_equal(tok.decode(t), imgs)
    with pytest.raises(ValueError, match="data.resolution"):
        tok.encode_images(imgs[:, :8, :8])


def test_vae_tokenizer_normalises_with_shift_and_scale():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, scaling_factor=0.5, shift_factor=0.1)
    tok = VAETokenizer(vae, resolution=16, patch_size=2)
    assert (tok.stride, tok.grid, tok.seq_len, tok.token_dim) == (2, 4, 16, 16)
    moments = torch.zeros(2, 8, 8, 8)
    moments[:, :4] = 1.1
    moments[:, 4:] = -60.0  # ~zero variance: tokens are the normalised mean
    t = tok.encode_batch({"latent_moments": moments})
    assert torch.allclose(t, torch.full_like(t, (1.1 - 0.1) * 0.5), atol=1e-5)
    imgs = tok.decode(t)
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    t2 = tok.encode_batch({"images": imgs})
    assert t2.shape == t.shape
    with pytest.raises(ValueError, match="latent_moments"):
        tok.encode_batch({"latent_moments": torch.zeros(2, 6, 8, 8)})


def test_shapes_and_loss_reductions(model, ds):
    batch = ds.get_batch(np.arange(4))
    noise = model.sample_training_noise(4, torch.Generator().manual_seed(0))
    assert noise["mask"].shape == (4, 16) and noise["t"].shape == (4, model.diffusion_batch_mul, 16)
    assert noise["noise"].shape == (4, model.diffusion_batch_mul, 16, 192) and noise["drop_text"].shape == (4,)
    per = model.diffusion_loss(batch, **noise)
    assert per.shape == (4,) and torch.isfinite(per).all()
    mean = model.diffusion_loss(batch, reduction="mean", **noise)
    assert torch.allclose(mean, per.mean(), atol=1e-6)
    ctx, cmask = model.encode_text(batch["captions"])
    z = model.forward_features(model.tokenizer.encode_batch(batch), noise["mask"], ctx, cmask)
    assert z.shape == (4, 16, 32)


def test_masking_statistics(model):
    from scipy.stats import truncnorm

    g = torch.Generator().manual_seed(1)
    ratios = []
    counts = torch.zeros(16)
    for _ in range(400):
        nz = model.sample_training_noise(8, g)
        m = nz["mask"]
        per_row = m.sum(1)
        assert (per_row == per_row[0]).all() and int(per_row[0]) == nz["n_masked"]  # one ratio per batch
        ratios.append(float(per_row[0]) / 16)
        counts += m.float().sum(0)
    ratios = np.array(ratios)
    assert ratios.min() >= 0.7 - 1e-9 and ratios.max() <= 1.0
    # ceil(r·L)/L of a N(1, .25) truncated to [0.7, 1]: mean within 0.03 of the continuous mean (+ rounding)
    expected = truncnorm((0.7 - 1.0) / 0.25, 0.0, loc=1.0, scale=0.25).mean()
    assert abs(ratios.mean() - expected) < 0.03 + 1 / 16
    # random order: every position is masked about equally often
    share = counts / counts.sum()
    assert float(share.max() / share.min()) < 1.25
    # text dropout ≈ 10%
    drops = torch.cat([model.sample_training_noise(64, g)["drop_text"] for _ in range(50)]).float().mean()
    assert 0.07 < float(drops) < 0.13


def test_padding_changes_nothing(model, ds):
    batch = ds.get_batch(np.arange(3))
    caps = batch["captions"]
    model.eval()
    with torch.no_grad():
        c1, m1 = model.encode_text(caps)
        c2, m2 = model.encode_text(caps, pad_to=m1.shape[1] + 9)
        assert c2.shape[1] == c1.shape[1] + 9 and not bool(m2[:, c1.shape[1]:].any())
        assert torch.allclose(c1, c2[:, : c1.shape[1]], atol=1e-5)
        tokens = model.tokenizer.encode_batch(batch)
        nz = model.sample_training_noise(3, torch.Generator().manual_seed(2))
        z1 = model.forward_features(tokens, nz["mask"], c1, m1)
        z2 = model.forward_features(tokens, nz["mask"], c2, m2)
        assert torch.allclose(z1, z2, atol=1e-5)
        # garbage in the padded slots must not leak either
        c3 = c2.clone()
        c3[~m2] = 1e3
        assert torch.allclose(z1, model.forward_features(tokens, nz["mask"], c3, m2), atol=1e-5)
        # while the text itself does matter
        c4, m4 = model.encode_text(["a photo of a blue square on the top"] * 3)
        assert not torch.allclose(z1, model.forward_features(tokens, nz["mask"], c4, m4), atol=1e-4)


def test_injected_noise_makes_losses_comparable(ds):
    """The DPO contract: same (mask, t, noise) → same loss; a different image → a different loss."""
    model = build_model(micro_cfg(), vocab=ds.vocabulary())
    with torch.no_grad():  # the head starts zero-initialised (predicts 0): give it some weights
        for name, p in model.head.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    win, lose = ds.get_batch(np.arange(4)), ds.get_batch(np.arange(4, 8))
    lose["captions"] = win["captions"]
    nz = model.sample_training_noise(4, torch.Generator().manual_seed(3))
    nz.pop("drop_text")
    a = model.diffusion_loss(win, **nz)
    b = model.diffusion_loss(win, **nz)
    c = model.diffusion_loss(lose, **nz)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    a.sum().backward()
    assert model.head.out.weight.grad is not None
    model.zero_grad(set_to_none=True)
    bad = nz["mask"].clone()
    bad[0] = ~bad[0] if bad[0].sum() != 8 else bad[0]
    bad[0, :] = False
    with pytest.raises(ValueError, match="same number"):
        model.diffusion_loss(win, mask=bad, t=nz["t"], noise=nz["noise"])
    with pytest.raises(ValueError, match="reduction"):
        model.diffusion_loss(win, reduction="sum", **nz)


def test_text_dropout_uses_null_embedding(model, ds):
    batch = ds.get_batch(np.arange(2))
    ctx, m = model.encode_text(batch["captions"], drop_text=torch.tensor([True, False]))
    assert torch.equal(m[0], torch.nn.functional.pad(torch.ones(1, dtype=torch.bool), (0, m.shape[1] - 1)))
    assert torch.allclose(ctx[0, 0], model.null_text[0, 0])
    assert bool(m[1].sum() > 1)


def test_text_encoder_modes(ds, tmp_path):
    trainable = build_model(micro_cfg("model.text_encoder_mode=trainable"), vocab=ds.vocabulary())
    frozen = build_model(micro_cfg("model.text_encoder_mode=frozen"), vocab=ds.vocabulary())
    assert all(p.requires_grad for p in trainable.text_encoder.parameters())
    assert not any(p.requires_grad for p in frozen.text_encoder.parameters())
    with pytest.raises(ValueError, match="text_encoder_weights"):
        build_model(micro_cfg("model.text_encoder_mode=pretrained-toy"), vocab=ds.vocabulary())
    from safetensors.torch import save_file

    w = {k: v.clone() + 1.0 for k, v in trainable.text_encoder.t5.state_dict().items() if "embed_tokens" not in k}
    save_file(w, str(tmp_path / "t5.safetensors"))
    pre = build_model(micro_cfg("model.text_encoder_mode=pretrained-toy",
                                f"model.text_encoder_weights={tmp_path / 't5.safetensors'}"), vocab=ds.vocabulary())
    assert torch.equal(pre.text_encoder.t5.shared.weight, w["shared.weight"])
    assert not any(p.requires_grad for p in pre.text_encoder.parameters())
    with pytest.raises(ValueError, match="vocabulary"):
        build_model(micro_cfg())


def test_toy_tokenizer_pads_and_handles_unknown_words(model):
    tok = model.text_encoder.toy_tokenizer
    ids, mask = tok(["a red square", "a zebra square on the left"], pad_to=10)
    assert ids.shape == (2, 10) and mask.sum(1).tolist() == [4, 7]
    assert ids[1, 1] == 2  # <unk>
    assert ids[0, 3] == 1  # </s>


def test_config_validation():
    with pytest.raises(ConfigError, match="model.heads"):
        load_config("smoke", ["model.width=30", "model.heads=4"])
    with pytest.raises(ConfigError, match="pretrained-toy"):
        load_config("smoke", ["model.text_encoder_mode=pretrained-toy", "model.text_encoder=/some/t5"])
    with pytest.raises(ConfigError, match="diffusion_sampler"):
        load_config("smoke", ["model.diffusion_sampler=euler"])


def test_L_builds_on_meta_with_792M_params():
    cfg = load_config("paper", ["model.text_encoder=cached"])
    with torch.device("meta"):
        m = build_model(cfg, tokenizer=LatentTokenizer(16, 32, 2))
    assert (m.seq_len, m.token_dim, m.text_encoder.dim, m.width) == (256, 64, 4096, 1024)
    n = m.num_params()
    assert abs(n - 792.2e6) / 792.2e6 < 0.01, n
    head = sum(p.numel() for p in m.head.parameters())
    assert 0.68e9 < n - head < 0.70e9  # the paper's "0.7B" without the head
    assert len(m.encoder_blocks) == 16 + 8 and len(m.decoder_blocks) == 16 + 8 and len(m.aligner.blocks) == 6


def test_sampling_is_seeded_and_inpainting_keeps_known_tokens(model, ds):
    cfg = micro_cfg()
    caps = ["a photo of a red square on the left", "a photo of a blue square on the top"]
    a = sample_images(model, caps, cfg.eval, seed=0)
    b = sample_images(model, caps, cfg.eval, seed=0)
    c = sample_images(model, caps, cfg.eval, seed=1)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    lin = micro_cfg("eval.cfg_schedule=linear", "model.diffusion_sampler=ddim").eval
    assert sample_images(model, caps, lin, seed=0).shape == (2, 32, 32, 3)
    src = ds.get_batch(np.arange(2))["images"]
    known = torch.zeros(16, dtype=torch.bool)
    known[:8] = True  # top half kept
    kt = model.tokenizer.encode_batch({"images": src})
    out = sample_images(model, caps, cfg.eval, seed=3, known_tokens=kt, known_mask=known)
    assert np.array_equal(out[:, :16], src[:, :16])
    assert not np.array_equal(out[:, 16:], src[:, 16:])


def test_head_narrower_than_token_is_refused(ds):
    with pytest.raises(ValueError, match="model.head_width"):
        build_model(micro_cfg("model.head_width=64"), vocab=ds.vocabulary())


def test_real_t5_from_a_local_path_is_frozen_and_not_checkpointed(ds, tmp_path):
    """The real-world text path: T5EncoderModel + tokenizer from_pretrained (a tiny random one, offline)."""
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

    from lightgen.model.text import ToyTextTokenizer, toy_t5_config
    from lightgen.train.checkpoint import model_state

    toy = ToyTextTokenizer(ds.vocabulary(), 16)
    T5EncoderModel(toy_t5_config(toy.vocab_size, 24, 1)).save_pretrained(tmp_path / "t5")
    PreTrainedTokenizerFast(tokenizer_object=toy._tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path / "t5")
    m = build_model(micro_cfg(f"model.text_encoder={tmp_path / 't5'}", "model.text_encoder_mode=frozen"))
    assert m.text_encoder.dim == 24 and not any(p.requires_grad for p in m.text_encoder.parameters())
    ctx, mask = m.encode_text(["a photo of a red square", "a blue square"])
    assert ctx.shape[:2] == mask.shape and mask.sum(1).tolist()[1] < mask.sum(1).tolist()[0]
    assert not any(k.startswith("text_encoder.") for k in model_state(m))
    with pytest.raises(ValueError, match="model.text_encoder"):
        build_model(micro_cfg(f"model.text_encoder={tmp_path / 'missing'}", "model.text_encoder_mode=frozen"))


class _OracleHead(torch.nn.Module):
    """A diffusion head that knows the clean token x0: it returns the exact ε or v for (x_t, t)."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0, self.ac, self.kind = x0, alphas_cumprod, prediction_type

    def embed_cond(self, z):
        return z

    def forward(self, x_t, t, cond):
        x0 = torch.cat([self.x0] * (x_t.shape[0] // self.x0.shape[0]))
        a = self.ac[t].reshape(-1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("shift", [1.0, 4.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_recovers_tokens_from_an_exact_head(ds, prediction_type, sampler, shift):
    """Training target, noise schedule and sampler agree: an exact head gives back x0."""
    from lightgen.model.sampling import sample_head

    m = build_model(micro_cfg(f"model.prediction_type={prediction_type}", f"model.diffusion_sampler={sampler}",
                              f"model.noise_shift={shift}"), vocab=ds.vocabulary())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, m.token_dim, generator=g) * 1.6 - 0.8
    m.head = _OracleHead(x0, m.alphas_cumprod, prediction_type)
    z = torch.zeros(12, m.width)  # cond + uncond halves (CFG on: both halves exact, so guidance is moot)
    out = sample_head(m, z, steps=10, cfg_scale=3.0, temperature=1.0, generator=g)
    assert torch.allclose(out, x0, atol=1e-3)


def test_v_prediction_loss_targets_diffusers_velocity(ds):
    """With a head that outputs 0 the loss is the mean squared target: v = DDPMScheduler.get_velocity."""
    m = build_model(micro_cfg("model.prediction_type=v_prediction"), vocab=ds.vocabulary())

    class Zero(torch.nn.Module):
        def embed_cond(self, z):
            return z

        def forward(self, x_t, t, cond):
            return torch.zeros_like(x_t)

    m.head = Zero()
    batch = ds.get_batch(np.arange(3))
    tokens = m.tokenizer.encode_batch(batch)
    noise = m.sample_training_noise(3, torch.Generator().manual_seed(1))
    got = m.diffusion_loss(batch, **noise, tokens=tokens)
    idx, _ = m.split_mask(noise["mask"])
    d = tokens.shape[-1]
    x0 = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, d))[:, None].expand(-1, noise["t"].shape[1], -1, -1)
    t = torch.gather(noise["t"], 2, idx[:, None].expand(-1, noise["t"].shape[1], -1))
    eps = torch.gather(noise["noise"], 2, idx[:, None, :, None].expand(-1, t.shape[1], -1, d))
    v = m.noise_scheduler.get_velocity(x0.reshape(-1, d), eps.reshape(-1, d), t.reshape(-1))
    want = v.reshape(3, -1).pow(2).mean(1)
    assert torch.allclose(got, want, rtol=1e-5)
    eps_model = build_model(micro_cfg("model.prediction_type=epsilon"), vocab=ds.vocabulary())
    eps_model.head = Zero()
    assert not torch.allclose(eps_model.diffusion_loss(batch, **noise, tokens=tokens), want, rtol=1e-3)


def test_sincos_position_init_gives_distinct_grid_positions(ds):
    """pos_embed_init=sincos: grid positions start far apart (MAE's 2-D sin-cos), the buffer stays small."""
    normal = build_model(micro_cfg("model.pos_embed_init=normal"), vocab=ds.vocabulary())
    sincos = build_model(micro_cfg("model.pos_embed_init=sincos"), vocab=ds.vocabulary())
    nb = sincos.buffer_size
    for m in (normal, sincos):
        assert m.encoder_pos.requires_grad and m.decoder_pos.requires_grad  # learned either way
    grid = sincos.decoder_pos[0, nb:].detach()
    d = torch.cdist(grid, grid)
    assert d[~torch.eye(len(grid), dtype=torch.bool)].min() > 0.5  # every pair of positions separable
    assert normal.decoder_pos[0, nb:].std() < 0.05 < grid.std()
    assert torch.equal(grid, sincos.encoder_pos[0, nb:].detach())
    assert sincos.encoder_pos[0, :nb].abs().max() < 0.2
    # neighbours are closer than far-apart positions: the init encodes the 2-D layout
    g = sincos.tokenizer.grid
    assert d[0, 1] < d[0, g - 1] and d[0, g] < d[0, g * (g - 1)]


def test_noise_shift_divides_the_snr_at_every_step(ds):
    plain = build_model(micro_cfg("model.noise_shift=1"), vocab=ds.vocabulary()).alphas_cumprod.double()
    shifted = build_model(micro_cfg("model.noise_shift=4"), vocab=ds.vocabulary()).alphas_cumprod.double()
    snr = lambda a: a / (1 - a)  # noqa: E731
    ratio = snr(plain[:990]) / snr(shifted[:990])
    assert torch.allclose(ratio, torch.full_like(ratio, 16.0), rtol=1e-3)
    assert bool((shifted[1:] < shifted[:-1]).all())  # still a noising schedule
