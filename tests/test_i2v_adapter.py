"""I2V-Adapter modules: first-frame attention processor, Frame Similarity Prior, weight loading (tiny models)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from adapters.i2v_adapter import (
    FrameContext,
    I2VAdapter,
    I2VAdapterAttnProcessor,
    SimilarityPrior,
    apply_similarity_prior,
    degrade_latents,
    gaussian_blur,
    get_i2v_adapter,
    load_i2v_adapter,
)
from adapters.weights import AdapterWeightsError, adapter_metadata, load_weights, save_weights
from tests import tiny_models


@pytest.fixture(scope="module")
def motion_unet(tiny_animatediff) -> UNetMotionModel:
    return tiny_models.tiny_motion_unet()


@pytest.fixture
def unet(motion_unet) -> UNetMotionModel:
    """The shared motion UNet, with any adapter removed after the test."""
    yield motion_unet
    adapter = get_i2v_adapter(motion_unet)
    if adapter is not None:
        adapter.unload()


def _inputs(batch: int = 2, frames: int = 3, size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, size, size, generator=gen)
    text = torch.randn(batch * frames, 5, 32, generator=gen)
    return sample, text


def _predict(unet, sample, text, t: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text).sample


def _randomise(adapter: I2VAdapter, seed: int = 1, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * std)


# ----------------------------------------------------------------------------------------------------------------------
# processor
# ----------------------------------------------------------------------------------------------------------------------


def test_fresh_adapter_is_bitwise_identity(unet):
    sample, text = _inputs()
    plain = _predict(unet, sample, text)
    adapter = I2VAdapter.attach(unet)
    spatial = [n for n, m in unet.named_modules() if n.endswith("attn1") and ".attentions." in n]
    assert sorted(adapter.processors) == sorted(spatial) and len(spatial) == 11  # no motion-module attention
    assert all("motion_modules" not in path and path.endswith("attn1") for path in adapter.processors)
    assert torch.equal(_predict(unet, sample, text), plain)


def test_scale_zero_is_bitwise_identity_and_scale_changes_output(unet):
    sample, text = _inputs()
    plain = _predict(unet, sample, text)
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    on = _predict(unet, sample, text)
    assert (on - plain).abs().max() > 1e-3
    adapter.set_scale(0.0)
    assert torch.equal(_predict(unet, sample, text), plain)
    adapter.set_scale(1.0)
    assert torch.equal(_predict(unet, sample, text), on)


def test_unload_restores_original_processors(unet):
    sample, text = _inputs()
    before = dict(unet.attn_processors)
    keys_before = set(unet.state_dict())
    plain = _predict(unet, sample, text)
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    assert set(unet.state_dict()) != keys_before
    adapter.unload()
    assert get_i2v_adapter(unet) is None
    after = unet.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert set(unet.state_dict()) == keys_before
    assert torch.equal(_predict(unet, sample, text), plain)
    assert not unet._forward_pre_hooks


def _reference_i2v_attention(attn: Attention, proc: I2VAdapterAttnProcessor, x: torch.Tensor, frames: int):
    """Naive per-video, per-frame, per-head first-frame attention plus plain self-attention."""
    heads = attn.heads
    out = torch.empty_like(x)
    for video in range(x.shape[0] // frames):
        first = x[video * frames]
        k_first = first @ attn.to_k.weight.T
        v_first = first @ attn.to_v.weight.T
        for f in range(frames):
            xi = x[video * frames + f]
            # plain self-attention of this frame
            q, k, v = xi @ attn.to_q.weight.T, xi @ attn.to_k.weight.T, xi @ attn.to_v.weight.T
            qi = xi @ proc.to_q_i2v.weight.T
            d = q.shape[-1] // heads
            sa, ff = [], []
            for h in range(heads):
                s = slice(h * d, (h + 1) * d)
                sa.append(torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1) @ v[:, s])
                ff.append(torch.softmax(qi[:, s] @ k_first[:, s].T / math.sqrt(d), dim=-1) @ v_first[:, s])
            sa_out = attn.to_out[0](torch.cat(sa, dim=-1))
            ff_out = torch.cat(ff, dim=-1) @ proc.to_out_i2v.weight.T + proc.to_out_i2v.bias
            out[video * frames + f] = sa_out + proc.scale * ff_out
    return out


def test_processor_matches_plain_reference():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    context = FrameContext(num_frames=3)
    proc = I2VAdapterAttnProcessor.for_attention(attn, context, base_processor=AttnProcessor2_0(), scale=0.7)
    assert torch.equal(proc.to_q_i2v.weight, attn.to_q.weight)
    assert not proc.to_out_i2v.weight.any() and not proc.to_out_i2v.bias.any()
    with torch.no_grad():
        proc.to_q_i2v.weight.add_(0.3 * torch.randn_like(proc.to_q_i2v.weight))
        proc.to_out_i2v.weight.normal_()
        proc.to_out_i2v.bias.normal_()
    attn.set_processor(proc)
    x = torch.randn(2 * 3, 5, 16)
    with torch.no_grad():
        got = attn(x)
        expected = _reference_i2v_attention(attn, proc, x, frames=3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_processor_needs_frame_count():
    attn = Attention(query_dim=8, heads=1, dim_head=8)
    proc = I2VAdapterAttnProcessor.for_attention(attn, FrameContext(), base_processor=AttnProcessor2_0())
    attn.set_processor(proc)
    with pytest.raises(RuntimeError, match="frame count"):
        attn(torch.randn(2, 4, 8))
    proc.context.num_frames = 3
    with pytest.raises(ValueError, match="num_frames"):
        attn(torch.randn(4, 4, 8))


def test_first_frame_only_attends_to_first_frame(unet):
    """Changing a later frame's input never changes what frame 0 contributes as keys/values (sanity of layout)."""
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    proc = I2VAdapterAttnProcessor.for_attention(attn, FrameContext(2), base_processor=AttnProcessor2_0())
    with torch.no_grad():
        proc.to_out_i2v.weight.normal_()
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        base = proc(attn, x)
        x2 = x.clone()
        x2[1] += 1.0  # frame 1 of video 0
        changed = proc(attn, x2)
    assert torch.equal(base[0], changed[0]) and torch.equal(base[2:], changed[2:])


# ----------------------------------------------------------------------------------------------------------------------
# loader
# ----------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(unet, tmp_path):
    sample, text = _inputs()
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    expected = _predict(unet, sample, text)
    path = tmp_path / "i2v.safetensors"
    adapter.save(path)
    sd, meta = load_weights(path)
    assert meta["diffusion_adapters.kind"] == "i2v_adapter" and meta["diffusion_adapters.base_family"] == "sd1"
    assert set(sd) == set(adapter.expected_shapes())
    adapter.unload()
    loaded = load_i2v_adapter(unet, path)
    assert torch.equal(_predict(unet, sample, text), expected)
    # loading again replaces the attached adapter
    loaded2 = load_i2v_adapter(unet, path, scale=0.0)
    assert get_i2v_adapter(unet) is loaded2 is not loaded
    assert len(unet._forward_pre_hooks) == 1


def _assert_unchanged(unet, processors_before, sample, text, expected):
    assert all(unet.attn_processors[k] is v for k, v in processors_before.items())
    assert torch.equal(_predict(unet, sample, text), expected)


@pytest.mark.parametrize("defect", ["missing", "unexpected", "shape", "kind", "family"])
def test_bad_file_raises_and_leaves_unet_unchanged(unet, tmp_path, defect):
    sample, text = _inputs()
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    sd, meta = adapter.state_dict(), adapter.metadata()
    expected = _predict(unet, sample, text)
    before = dict(unet.attn_processors)
    key = next(iter(sd))
    if defect == "missing":
        sd.pop(key)
    elif defect == "unexpected":
        sd["down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q_i2v.weight"] = torch.zeros(2, 2)
    elif defect == "shape":
        sd[key] = torch.zeros(3, 3)
    elif defect == "kind":
        meta = adapter_metadata("mv_adapter", "sd1")
    elif defect == "family":
        meta = adapter_metadata("i2v_adapter", "sdxl")
    path = tmp_path / "bad.safetensors"
    save_weights(sd, path, metadata=meta)
    with pytest.raises(AdapterWeightsError) as info:
        load_i2v_adapter(unet, path)
    if defect == "missing":
        assert info.value.missing == [key]
    if defect == "shape":
        assert info.value.mismatched[0][0] == key
    _assert_unchanged(unet, before, sample, text, expected)
    assert get_i2v_adapter(unet) is adapter


def test_pickle_refused_without_opt_in(unet, tmp_path):
    adapter = I2VAdapter.attach(unet)
    path = tmp_path / "i2v.pth"
    torch.save(adapter.state_dict(), path)
    adapter.unload()
    with pytest.raises(AdapterWeightsError, match="pickle"):
        load_i2v_adapter(unet, path)
    assert get_i2v_adapter(unet) is None
    load_i2v_adapter(unet, path, allow_pickle=True)
    assert get_i2v_adapter(unet) is not None


def test_official_layout_is_converted(unet):
    sample, text = _inputs()
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    expected = _predict(unet, sample, text)
    official = {
        k.replace(".to_q_i2v.", ".to_q_ff.").replace(".to_out_i2v.", ".to_out_ff."): v
        for k, v in adapter.state_dict().items()
    }
    adapter.unload()
    load_i2v_adapter(unet, official)
    assert torch.equal(_predict(unet, sample, text), expected)


def test_adapter_needs_motion_unet():
    unet2d = UNet2DConditionModel(**tiny_models.SD15_UNET_CONFIG)
    with pytest.raises(ValueError, match="UNetMotionModel"):
        I2VAdapter.attach(unet2d)


def test_adapter_survives_swapping_the_base_unet(unet, tmp_path):
    """An adapter trained on one SD 1.5-like base loads and works on another (community fine-tune stand-in)."""
    adapter = I2VAdapter.attach(unet)
    _randomise(adapter)
    path = tmp_path / "i2v.safetensors"
    adapter.save(path)
    adapter.unload()

    torch.manual_seed(123)
    other_base = UNet2DConditionModel(**tiny_models.SD15_UNET_CONFIG).eval()
    motion = MotionAdapter.from_pretrained(tiny_models.tiny_animatediff_path() / "motion_adapter")
    other = UNetMotionModel.from_unet2d(other_base, motion).eval()
    assert not torch.equal(other.conv_in.weight, unet.conv_in.weight)
    sample, text = _inputs(seed=3)
    plain = _predict(other, sample, text)
    loaded = load_i2v_adapter(other, path)
    on = _predict(other, sample, text)
    assert torch.isfinite(on).all() and (on - plain).abs().max() > 1e-3
    loaded.set_scale(0.0)
    assert torch.equal(_predict(other, sample, text), plain)
    # the keys/values come from the new base: the adapter's branch differs between the two bases
    loaded.unload()


# ----------------------------------------------------------------------------------------------------------------------
# Frame Similarity Prior
# ----------------------------------------------------------------------------------------------------------------------


def test_prior_off_is_plain_noise():
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(10)
    noise = torch.randn(1, 4, 5, 8, 8)
    first = torch.randn(1, 4, 8, 8)
    for prior in (SimilarityPrior(), SimilarityPrior(strength=0.0, start=0.5), SimilarityPrior.coerce(None)):
        latents, timesteps = apply_similarity_prior(sched, noise, first, sched.timesteps, prior)
        assert latents is noise and timesteps is sched.timesteps


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_prior_on_starts_closer_to_first_frame(scheduler_cls):
    sched = scheduler_cls(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")  # AnimateDiff's betas
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 5, 8, 8, generator=gen) * sched.init_noise_sigma
    # a smooth first-frame latent (images are mostly low-frequency)
    first = torch.nn.functional.interpolate(torch.randn(1, 4, 2, 2, generator=gen), size=(8, 8), mode="bilinear")
    prior = SimilarityPrior(strength=1.0, start=0.5)
    latents, timesteps = apply_similarity_prior(sched, noise, first, sched.timesteps, prior, generator=gen)
    assert len(timesteps) == 5 and torch.equal(timesteps, sched.timesteps[5:])
    assert latents.shape == noise.shape

    def corr(x):  # cosine similarity of the later frames with the first frame's latent
        target = first.unsqueeze(2).expand_as(x[:, :, 1:])
        return torch.nn.functional.cosine_similarity(x[:, :, 1:].flatten(), target.flatten(), dim=0)

    assert corr(latents) > 0.3 > abs(corr(noise))
    # a weaker prior is less close
    weaker, _ = apply_similarity_prior(sched, noise, first, sched.timesteps, SimilarityPrior(strength=0.3, start=0.5))
    assert corr(latents) > corr(weaker) > abs(corr(noise))


def test_degradation_blurs_and_masks():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    blurred = gaussian_blur(x, 5, 1.0)
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0))
    assert blurred[..., 4, 4] < 1.0 and blurred[..., 3, 4] > 0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    full = degrade_latents(x, kernel_size=5, sigma=2.0, mask_ratio=1.0)
    torch.testing.assert_close(full, gaussian_blur(x, 5, 2.0))
    none = degrade_latents(x, kernel_size=5, sigma=2.0, mask_ratio=0.0, generator=gen)
    assert torch.equal(none, x)
    half = degrade_latents(x, kernel_size=5, sigma=2.0, mask_ratio=0.5, generator=gen)
    kept = (half == x).float().mean()
    assert 0.3 < kept < 0.7


@pytest.mark.parametrize(
    "value", [(1.5, 0.0), (0.5, 1.0), (0.5, -0.1), {"strength": 0.5, "mask_ratio": 2.0}, (0.1, 0.2, 0.3), "x"]
)
def test_prior_rejects_bad_coefficients(value):
    with pytest.raises(ValueError, match="similarity_prior"):
        SimilarityPrior.coerce(value)


def test_composes_with_peft_lora_on_the_base(tiny_animatediff):
    """A LoRA on the base attention (diffusers/peft) and the I2V-Adapter work together; K/V go through the LoRA."""
    from peft import LoraConfig

    unet = tiny_models.tiny_motion_unet()
    sample, text = _inputs()
    plain = _predict(unet, sample, text)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    with_lora = _predict(unet, sample, text)
    assert (with_lora - plain).abs().max() > 1e-3
    adapter = I2VAdapter.attach(unet)
    assert torch.equal(_predict(unet, sample, text), with_lora)  # fresh adapter on a LoRA'd base
    _randomise(adapter)
    both = _predict(unet, sample, text)
    assert (both - with_lora).abs().max() > 1e-3
    assert not any("lora" in k for k in adapter.state_dict())  # the LoRA is not part of our file
    adapter.set_scale(0.0)
    assert torch.equal(_predict(unet, sample, text), with_lora)
    adapter.unload()
    assert torch.equal(_predict(unet, sample, text), with_lora)
