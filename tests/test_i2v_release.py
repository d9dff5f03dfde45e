"""The authors' I2V-Adapter release (``animatediff_v15_v1_ipplus.pth``) on a tiny checkpoint written here in their
exact layout (random tensors): every key consumed, outputs equal a pipeline assembled by hand, their first-frame
attention and colour matching restated, bad files refused with the pipeline unchanged, the converter."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPImageProcessor

from adapters.i2v_adapter import FrameContext, I2VAdapter, I2VAdapterAttnProcessor
from adapters.i2v_adapter.recipe import AUTHORS_PRIOR, authors_scheduler, color_match_frames
from adapters.i2v_adapter.release import read_release
from adapters.weights import AdapterWeightsError
from pipelines.pipeline_i2v_adapter import I2VAdapterPipeline
from tests.tiny_models import build_image_encoder

MAX_LEN = 24  # AnimateDiff v1 positional table
PLUS_TOKENS = 16  # IP-Adapter-Plus image tokens
PLUS_HIDDEN = 64  # resampler width (one head of 64)


def _pe(channels: int) -> torch.Tensor:
    """AnimateDiff's ``PositionalEncoding.pe``: ``(1, max_len, channels)`` sin / cos."""
    position = torch.arange(MAX_LEN).unsqueeze(1)
    div = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, MAX_LEN, channels)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


def _motion_module(prefix: str, c: int, rnd) -> dict[str, torch.Tensor]:
    """One ``VanillaTemporalModule`` (two ``Temporal_Self`` blocks, one transformer block) in the original names."""
    t = f"{prefix}.temporal_transformer."
    sd = {t + "norm.weight": 1 + rnd(c), t + "norm.bias": rnd(c)}
    for name in ("proj_in", "proj_out"):
        sd[f"{t}{name}.weight"], sd[f"{t}{name}.bias"] = rnd(c, c), rnd(c)
    b = t + "transformer_blocks.0."
    for a in (0, 1):
        for proj in ("to_q", "to_k", "to_v"):
            sd[f"{b}attention_blocks.{a}.{proj}.weight"] = rnd(c, c)
        sd[f"{b}attention_blocks.{a}.to_out.0.weight"], sd[f"{b}attention_blocks.{a}.to_out.0.bias"] = (
            rnd(c, c),
            rnd(c),
        )
        sd[f"{b}attention_blocks.{a}.pos_encoder.pe"] = _pe(c)
        sd[f"{b}norms.{a}.weight"], sd[f"{b}norms.{a}.bias"] = 1 + rnd(c), rnd(c)
    sd[b + "ff.net.0.proj.weight"], sd[b + "ff.net.0.proj.bias"] = rnd(8 * c, c), rnd(8 * c)
    sd[b + "ff.net.2.weight"], sd[b + "ff.net.2.bias"] = rnd(c, 4 * c), rnd(c)
    sd[b + "ff_norm.weight"], sd[b + "ff_norm.bias"] = 1 + rnd(c), rnd(c)
    return sd


def _write_release(unet: UNet2DConditionModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """The authors' ``UNet3DConditionModel`` state dict for ``unet``'s config: its spatial weights, random
    ``attn1.to_{q,out}_ff``, ``attn2.to_{k,v}_ip`` and AnimateDiff v1 motion modules (none in the mid block)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(shape, generator=gen) * 0.2

    sd = {k: v.clone() for k, v in unet.state_dict().items()}
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and name.endswith("attn1"):
            inner, dim = module.to_q.weight.shape
            sd[f"{name}.to_q_ff.weight"] = rnd(inner, dim)
            sd[f"{name}.to_out_ff.weight"], sd[f"{name}.to_out_ff.bias"] = rnd(dim, inner), rnd(dim)
        if isinstance(module, Attention) and name.endswith("attn2"):
            hidden, cross = module.to_k.weight.shape
            sd[f"{name}.to_k_ip.weight"], sd[f"{name}.to_v_ip.weight"] = rnd(hidden, cross), rnd(hidden, cross)
    channels = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    for i, c in enumerate(channels):
        for j in range(layers):
            sd.update(_motion_module(f"down_blocks.{i}.motion_modules.{j}", c, rnd))
    for i, c in enumerate(reversed(channels)):
        for j in range(layers + 1):
            sd.update(_motion_module(f"up_blocks.{i}.motion_modules.{j}", c, rnd))
    return sd


def _write_ip_adapter_plus(unet: UNet2DConditionModel, embed_dim: int, seed: int = 1) -> dict:
    """``ip-adapter-plus_sd15.bin`` layout: ``{"image_proj": resampler, "ip_adapter": {id.to_{k,v}_ip.weight}}``."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(shape, generator=gen) * 0.2

    h, cross = PLUS_HIDDEN, unet.config.cross_attention_dim
    proj = {"latents": rnd(1, PLUS_TOKENS, h), "proj_in.weight": rnd(h, embed_dim), "proj_in.bias": rnd(h)}
    proj.update({"proj_out.weight": rnd(cross, h), "proj_out.bias": rnd(cross)})
    proj.update({"norm_out.weight": 1 + rnd(cross), "norm_out.bias": rnd(cross)})
    for i in range(4):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"layers.{i}.{norm}.weight"], proj[f"layers.{i}.{norm}.bias"] = 1 + rnd(h), rnd(h)
        proj[f"layers.{i}.0.to_q.weight"], proj[f"layers.{i}.0.to_kv.weight"] = rnd(h, h), rnd(2 * h, h)
        proj[f"layers.{i}.0.to_out.weight"] = rnd(h, h)
        proj[f"layers.{i}.1.1.weight"], proj[f"layers.{i}.1.3.weight"] = rnd(4 * h, h), rnd(h, 4 * h)
    ip = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape[0]
            ip[f"{key_id}.to_k_ip.weight"], ip[f"{key_id}.to_v_ip.weight"] = rnd(hidden, cross), rnd(hidden, cross)
            key_id += 2
    return {"image_proj": proj, "ip_adapter": ip}


@pytest.fixture(scope="module")
def files(tiny_animatediff):
    unet = UNet2DConditionModel.from_pretrained(tiny_animatediff, subfolder="unet")
    encoder = build_image_encoder()
    return _write_release(unet), _write_ip_adapter_plus(unet, encoder.config.hidden_size), encoder


@pytest.fixture(scope="module")
def release_pipe(tiny_animatediff, files):
    release, ip, encoder = files
    pipe = I2VAdapterPipeline.from_authors_release(tiny_animatediff, release, ip_adapter=ip, image_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, size=(2, 3, 3), dtype=np.uint8)).resize((32, 32))


def _run(pipe, **kwargs):
    args = dict(
        image=_image(),
        prompt="a cube",
        num_frames=3,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    args.update(kwargs)
    return pipe(**args).frames


def _hand_assembled(base, release, ip, encoder) -> I2VAdapterPipeline:
    """The same tensors put into diffusers / our modules attribute by attribute, without the release loader."""
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    channels = list(unet.config.block_out_channels)
    motion = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=MAX_LEN,
        use_motion_mid_block=False,
    )
    with torch.no_grad():
        for kind, blocks in (("down_blocks", motion.down_blocks), ("up_blocks", motion.up_blocks)):
            for i, block in enumerate(blocks):
                for j, mm in enumerate(block.motion_modules):
                    t = f"{kind}.{i}.motion_modules.{j}.temporal_transformer."
                    pairs = [(mm.norm, "norm"), (mm.proj_in, "proj_in"), (mm.proj_out, "proj_out")]
                    tb = mm.transformer_blocks[0]
                    b = "transformer_blocks.0."
                    pairs += [(tb.norm1, b + "norms.0"), (tb.norm2, b + "norms.1"), (tb.norm3, b + "ff_norm")]
                    pairs += [(tb.ff.net[0].proj, b + "ff.net.0.proj"), (tb.ff.net[2], b + "ff.net.2")]
                    for a, attn in enumerate((tb.attn1, tb.attn2)):
                        for proj in ("to_q", "to_k", "to_v"):
                            getattr(attn, proj).weight.copy_(release[f"{t}{b}attention_blocks.{a}.{proj}.weight"])
                        pairs.append((attn.to_out[0], f"{b}attention_blocks.{a}.to_out.0"))
                    for module, name in pairs:
                        module.weight.copy_(release[f"{t}{name}.weight"])
                        module.bias.copy_(release[f"{t}{name}.bias"])
    pipe = I2VAdapterPipeline.from_pretrained(
        base, motion_adapter=motion, image_encoder=encoder, feature_extractor=CLIPImageProcessor()
    )
    pipe.set_progress_bar_config(disable=True)
    ours = {}
    for name, _module in pipe.unet.named_modules():
        if name.endswith("attn1") and "motion_modules" not in name:
            ours[f"{name}.to_q_i2v.weight"] = release[f"{name}.to_q.weight"]  # the authors' loader: to_q_ff = to_q
            ours[f"{name}.to_out_i2v.weight"] = release[f"{name}.to_out_ff.weight"]
            ours[f"{name}.to_out_i2v.bias"] = release[f"{name}.to_out_ff.bias"]
    key_id = 1
    for name in pipe.unet.attn_processors:
        if name.endswith("attn2.processor") and "motion_modules" not in name:
            path = name[: -len(".processor")]
            ours[f"content.ip_adapter.{key_id}.to_k_ip.weight"] = release[f"{path}.to_k_ip.weight"]
            ours[f"content.ip_adapter.{key_id}.to_v_ip.weight"] = release[f"{path}.to_v_ip.weight"]
            key_id += 2
    ours.update({f"content.image_proj.{k}": v for k, v in ip["image_proj"].items()})
    I2VAdapter.attach(
        pipe.unet,
        state_dict=ours,
        content_image_embed_dim=encoder.config.hidden_size,
        content_num_tokens=PLUS_TOKENS,
    )
    return pipe


def test_every_key_consumed(files):
    release, _, _ = files
    parts = read_release(release)
    second_pe = sum(1 for k in release if k.endswith("attention_blocks.1.pos_encoder.pe"))
    consumed = len(parts.spatial) + len(parts.motion) + len(parts.first_frame) + len(parts.ip_branches)
    assert consumed + second_pe == len(release)
    assert parts.motion_config["motion_max_seq_length"] == MAX_LEN
    assert parts.motion_config["use_motion_mid_block"] is False


def test_loaded_pipeline_equals_hand_assembled(tiny_animatediff, files, release_pipe):
    release, ip, encoder = files
    report = release_pipe.authors_release_report
    assert report.spatial_differs == [] and not report.used_release_unet
    assert len(report.query_differs) > 0 and report.first_frame_query == "to_q"
    assert release_pipe.i2v_adapter.content.plus_hidden_dims == PLUS_HIDDEN
    hand = _hand_assembled(tiny_animatediff, release, ip, encoder)
    a, b = _run(release_pipe), _run(hand)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    # the content adapter and the first-frame attention both act
    release_pipe.i2v_adapter.set_scale(0.0)
    try:
        assert not torch.equal(_run(release_pipe), a)
    finally:
        release_pipe.i2v_adapter.set_scale(1.0)


def test_first_frame_attention_is_the_authors_formula():
    """``MixedCausalAttention2D``: ``to_out[1](to_out[0](SA(x)) + to_out_ff(Attn(x W_q_ff, x_1 W_k, x_1 W_v)))``."""
    torch.manual_seed(0)
    batch, frames, tokens, dim, heads = 2, 3, 5, 8, 2
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False).eval()
    context = FrameContext(frames)
    proc = I2VAdapterAttnProcessor.for_attention(attn, context, base_processor=attn.processor)
    with torch.no_grad():
        proc.to_q_i2v.weight.normal_()
        proc.to_out_i2v.weight.normal_()
        proc.to_out_i2v.bias.normal_()
    attn.set_processor(proc)
    x = torch.randn(batch * frames, tokens, dim)

    def heads_attention(q, k, v):  # (n, t, d) each; plain softmax(q k^T / sqrt(d_h)) v per head
        n, t, d = q.shape
        dh = d // heads
        q, k, v = (z.reshape(n, -1, heads, dh).transpose(1, 2) for z in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) * dh**-0.5, dim=-1)
        return (w @ v).transpose(1, 2).reshape(n, t, d)

    with torch.no_grad():
        sa = heads_attention(attn.to_q(x), attn.to_k(x), attn.to_v(x))
        first = x.view(batch, frames, tokens, dim)[:, [0] * frames].reshape(batch * frames, tokens, dim)
        ff = heads_attention(proc.to_q_i2v(x), attn.to_k(first), attn.to_v(first))
        expected = attn.to_out[1](attn.to_out[0](sa) + proc.to_out_i2v(ff))
        got = attn(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _theirs_color_match(reference: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """A plain restatement of the authors' ``color_match_frames`` (OpenCV BGR2LAB on their RGB frames, unique-value
    histogram matching of a and b, LAB2BGR), with OpenCV's documented 8-bit formulas written per pixel."""
    m = [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    mi = [[3.240479, -1.53715, -0.498535], [-0.969256, 1.875991, 0.041556], [0.055648, -0.204043, 1.057311]]
    white = (0.950456, 1.0, 1.088754)

    def f(t):
        return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

    def sat(v):
        return int(min(max(round(v), 0), 255))

    def to_lab(img):  # img: uint8 in OpenCV's B, G, R order
        out = np.zeros(img.shape, np.uint8)
        for y, x in np.ndindex(img.shape[:2]):
            bgr = [c / 255 for c in img[y, x]]
            rgb = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in bgr[::-1]]
            xyz = [sum(m[r][c] * rgb[c] for c in range(3)) / white[r] for r in range(3)]
            lum = 116 * xyz[1] ** (1 / 3) - 16 if xyz[1] > 0.008856 else 903.3 * xyz[1]
            a, b = 500 * (f(xyz[0]) - f(xyz[1])), 200 * (f(xyz[1]) - f(xyz[2]))
            out[y, x] = (sat(lum * 255 / 100), sat(a + 128), sat(b + 128))
        return out

    def from_lab(lab):
        out = np.zeros(lab.shape, np.uint8)
        for y, x in np.ndindex(lab.shape[:2]):
            lum, a, b = float(lab[y, x, 0]) * 100 / 255, float(lab[y, x, 1]) - 128, float(lab[y, x, 2]) - 128
            fy = (lum + 16) / 116
            yy = fy**3 if lum > 903.3 * 0.008856 else lum / 903.3
            fy = fy if yy > 0.008856 else 7.787 * yy + 16 / 116
            fx, fz = fy + a / 500, fy - b / 200
            xx = fx**3 if fx**3 > 0.008856 else (fx - 16 / 116) / 7.787
            zz = fz**3 if fz**3 > 0.008856 else (fz - 16 / 116) / 7.787
            xyz = (xx * white[0], yy * white[1], zz * white[2])
            rgb = [min(max(sum(mi[r][c] * xyz[c] for c in range(3)), 0.0), 1.0) for r in range(3)]
            srgb = [12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055 for c in rgb]
            out[y, x] = [sat(c * 255) for c in srgb[::-1]]  # back to B, G, R
        return out

    def match(source, template):
        values, idx, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
        t_values, t_counts = np.unique(template.ravel(), return_counts=True)
        sq = np.cumsum(counts).astype(np.float64)
        sq /= sq[-1]
        tq = np.cumsum(t_counts).astype(np.float64)
        tq /= tq[-1]
        return np.interp(sq, tq, t_values)[idx].reshape(source.shape)

    ref_lab = to_lab((reference * 255.0).astype(np.uint8))  # their RGB array read as BGR
    sub_lab = to_lab((frame * 255.0).astype(np.uint8))
    merged = np.stack(
        [sub_lab[..., 0], match(sub_lab[..., 1], ref_lab[..., 1]).astype(np.uint8)]
        + [match(sub_lab[..., 2], ref_lab[..., 2]).astype(np.uint8)],
        axis=-1,
    )
    return from_lab(merged) / 255.0


def test_color_match_matches_the_authors():
    rng = np.random.default_rng(3)
    reference = rng.random((6, 7, 3))
    frame = np.clip(reference[::-1] * 0.6 + rng.random((6, 7, 3)) * 0.4 + [0.1, -0.05, 0.0], 0, 1)
    ours = color_match_frames(reference, frame)
    theirs = _theirs_color_match(reference, frame)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert not np.allclose(ours, frame, atol=1 / 255)  # it does change the frame


def _snapshot(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape", "ip_missing"])
def test_bad_release_refused_and_pipeline_unchanged(files, release_pipe, fault):
    release, ip, _ = files
    bad, bad_ip = dict(release), {"image_proj": dict(ip["image_proj"]), "ip_adapter": dict(ip["ip_adapter"])}
    key = "down_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight"
    if fault == "missing":
        del bad["up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out_ff.bias"]
    elif fault == "unexpected":
        bad["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k_ff.weight"] = torch.zeros(1)
    elif fault == "shape":
        bad[key] = torch.zeros(3, 3)
    else:
        del bad_ip["image_proj"]["layers.3.1.3.weight"]
    before = _snapshot(release_pipe)
    processors = dict(release_pipe.unet.attn_processors)
    with pytest.raises(AdapterWeightsError):
        release_pipe.load_authors_release(bad, ip_adapter=bad_ip)
    after = release_pipe.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(release_pipe.unet.attn_processors[k] is v for k, v in processors.items())


def test_release_unet_reported_and_usable(tiny_animatediff, files):
    release, ip, encoder = files
    changed = dict(release)
    key = "down_blocks.0.resnets.0.conv1.weight"
    changed[key] = release[key] + 0.5
    pipe = I2VAdapterPipeline.from_authors_release(tiny_animatediff, changed, ip_adapter=ip, image_encoder=encoder)
    assert pipe.authors_release_report.spatial_differs == [key]
    assert pipe.authors_release_report.max_spatial_diff == pytest.approx(0.5)
    assert torch.equal(pipe.unet.state_dict()[key], release[key])  # the base's is kept by default
    used = I2VAdapterPipeline.from_authors_release(
        tiny_animatediff, changed, ip_adapter=ip, image_encoder=encoder, use_release_unet=True
    )
    assert torch.equal(used.unet.state_dict()[key], changed[key])


def test_pickle_and_converter(tiny_animatediff, files, release_pipe, tmp_path):
    from adapters.i2v_adapter.convert import main

    release, ip, encoder = files
    pth, ip_bin = tmp_path / "animatediff_v15_v1_ipplus.pth", tmp_path / "ip-adapter-plus_sd15.bin"
    torch.save(release, pth)
    torch.save(ip, ip_bin)
    with pytest.raises(AdapterWeightsError, match="pickle"):
        read_release(pth)
    out = tmp_path / "converted"
    args = [str(pth), "--ip_adapter", str(ip_bin), "--base", str(tiny_animatediff), "--output_dir", str(out)]
    assert main([*args, "--allow_pickle"]) == 0
    assert {p.name for p in out.iterdir()} == {"motion_adapter", "i2v_adapter.safetensors", "unet"}
    converted = I2VAdapterPipeline.from_pretrained(
        tiny_animatediff,
        unet=UNet2DConditionModel.from_pretrained(out / "unet"),
        motion_adapter=MotionAdapter.from_pretrained(out / "motion_adapter"),
        i2v_adapter=str(out / "i2v_adapter.safetensors"),
        image_encoder=encoder,
        feature_extractor=CLIPImageProcessor(),
    )
    converted.set_progress_bar_config(disable=True)
    assert torch.equal(_run(converted), _run(release_pipe))


def test_authors_recipe_runs(release_pipe):
    scheduler = release_pipe.scheduler
    release_pipe.scheduler = authors_scheduler()
    try:
        frames = _run(release_pipe, similarity_prior=AUTHORS_PRIOR, output_type="np", color_match=True)
        plain = _run(release_pipe, similarity_prior=AUTHORS_PRIOR, output_type="np")
    finally:
        release_pipe.scheduler = scheduler
    assert frames.shape == plain.shape == (1, 3, 32, 32, 3)
    np.testing.assert_allclose(frames[:, 0], plain[:, 0], atol=1e-6)  # frame 0 is the reference
    assert not np.allclose(frames[:, 1:], plain[:, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="color_match"):
        _run(release_pipe, color_match=True)
