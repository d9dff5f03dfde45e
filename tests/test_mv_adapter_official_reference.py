"""MV-Adapter end to end against an independent re-statement of the official inference (huanngzh/MV-Adapter).

The reference below is written from the official inference scripts' defaults and the official pipelines' formulas
(not from our code): the orthographic ring ``azimuth [0, 45, 90, 180, 270, 315] - 90``, elevation 0, distance 1.8,
box ``[-0.55, 0.55]`` (ortho scale 1.1), the "ortho plucker" condition ``[view direction, normalised camera
position]`` mapped with ``(x + 1) / 2``, the T2I-Adapter condition encoder fed the CFG-doubled maps, the base
scheduler rebuilt with the shifted-SNR "interpolated" betas (shift 8), attention processors on *every* attention of
the UNet (``attn1``: base + row multi-view + reference branches; ``attn2``: plain cross-attention), computed here with
plain einsums, CFG ``u + g * (c - u)`` with guidance 7 (text) / 3 (image), the official negative prompt, and for I2MV
one UNet pass of the reference latents (the posterior sampled with the call's generator after the initial noise)
at t = 0 with the last positive prompt, caching every processor input, repeated per view, with zeros as the
unconditional reference. The reference image is encoded at its own size (the official pipeline does not resize it).
The geometry variant (ig2mv) uses the official row-column attention of the 6-view layout and the condition
``[(pos + 0.5), (normal / 2 + 0.5)]``.

Both sides run in float64. The only remaining difference is the official camera math being done in float32 (its
condition maps differ from ours by ~6e-8); fed our maps, the reference agrees to ~1e-14, so ``atol=1e-5`` leaves
room for that rounding only.

Our ``MVAdapterPipeline`` is called with *only* prompt, image, steps and generator: every other value comes from
its defaults, which must be the official ones. The adapter is a random file in the official single-file layout
saved by the test (``mvadapter_<variant>_<base>.safetensors``, no metadata).

Tiny-model generalisation of two hard-coded official values: the condition encoder's downscale is the VAE factor
(SD: official 8) or twice it (SDXL: official 16), and its SDXL channels are ``[c0, c1, c2, c2]`` of the UNet (official
``(320, 640, 1280, 1280)``); the tiny VAEs downsample by 2, not 8.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, T2IAdapter
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file, save_file

from pipelines import MVAdapterPipeline

OFFICIAL_AZIMUTHS = [0, 45, 90, 180, 270, 315]
OFFICIAL_NEGATIVE = "watermark, ugly, deformed, noisy, blurry, low contrast"
OFFICIAL_SHIFT = 8.0
PROMPT = "a red wooden chair"
STEPS = 3
SEED = 11
#: Both sides run in float64 so that any real difference stands far above rounding.
DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# Official formulas, restated
# ----------------------------------------------------------------------------------------------------------------------
def official_ring_c2w(num_views: int) -> torch.Tensor:
    """Blender/OpenGL camera-to-world (V, 4, 4), float32: z-up look-at of the official orthographic ring."""
    az = torch.tensor([a - 90.0 for a in OFFICIAL_AZIMUTHS[:num_views]]) * math.pi / 180
    el = torch.zeros(num_views) * math.pi / 180
    dist = torch.full((num_views,), 1.8)
    eye = torch.stack([dist * el.cos() * az.cos(), dist * el.cos() * az.sin(), dist * el.sin()], dim=-1)
    forward = F.normalize(-eye, dim=-1)  # towards the origin
    world_up = torch.tensor([0.0, 0.0, 1.0]).repeat(num_views, 1)
    x_axis = F.normalize(torch.cross(forward, world_up, dim=-1), dim=-1)
    y_axis = F.normalize(torch.cross(x_axis, forward, dim=-1), dim=-1)
    c2w = torch.zeros(num_views, 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x_axis, y_axis, -forward, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def official_ortho_condition(c2w: torch.Tensor, size: int) -> torch.Tensor:
    """(V, 6, size, size) in [0, 1]: per view the constant [view direction, unit camera position], (x + 1) / 2."""
    maps = []
    for m in c2w:
        w2c = torch.linalg.inv(m)
        w2c[1:3, :] *= -1.0  # Blender -> OpenCV
        rot, trans = w2c[:3, :3], w2c[:3, 3]
        position = F.normalize(-rot.T @ trans, dim=0)
        direction = rot.T @ torch.tensor([0.0, 0.0, 1.0])
        maps.append(torch.cat([direction, position])[:, None, None].repeat(1, size, size))
    return ((torch.stack(maps) + 1.0) / 2.0).clamp(0.0, 1.0)


def official_shift_snr_scheduler(scheduler, shift: float):
    """The base scheduler class rebuilt from its config with the 'interpolated' shifted-SNR betas."""
    t = torch.arange(0, scheduler.config.num_train_timesteps)
    ac = scheduler.alphas_cumprod
    alpha, sigma = (ac**0.5)[t].float(), ((1.0 - ac) ** 0.5)[t].float()
    snr = (alpha / sigma) ** 2
    w = t.float() / (scheduler.config.num_train_timesteps - 1)
    snr = torch.exp(torch.log(snr) * (1 - w) + torch.log(snr / shift) * w)
    new_ac = ((snr / (1 + snr)) ** 0.5) ** 2
    betas = 1 - new_ac / torch.cat([torch.ones(1), new_ac[:-1]])
    return type(scheduler).from_config(scheduler.config, trained_betas=betas.numpy())


def official_encoder(unet, vae_scale_factor: int, xl: bool) -> T2IAdapter:
    channels = list(unet.config.block_out_channels)
    if xl:
        return T2IAdapter(6, [*channels, channels[-1]], 2, 2 * vae_scale_factor, adapter_type="full_adapter_xl")
    return T2IAdapter(6, channels, unet.config.layers_per_block, vae_scale_factor)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain softmax attention ``(B, N, C) x (B, M, C) -> (B, N, C)`` with ``heads`` heads."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (x.reshape(b, -1, heads, d) for x in (q, k, v))
    w = (torch.einsum("bnhd,bmhd->bhnm", q, k) * d**-0.5).softmax(-1)
    return torch.einsum("bhnm,bmhd->bnhd", w, v).reshape(b, n, c)


def _row_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, views: int) -> torch.Tensor:
    """Official row multi-view attention on square grids: a token of row r attends to row r of all its views."""
    bv, n, c = q.shape
    b, d, side = bv // views, c // heads, math.isqrt(n)
    q, k, v = (x.reshape(b, views, side, side, heads, d) for x in (q, k, v))
    logits = torch.einsum("bvrwhd,burshd->bvrwhus", q, k) * d**-0.5
    w = logits.flatten(-2).softmax(-1).reshape(logits.shape)
    return torch.einsum("bvrwhus,burshd->bvrwhd", w, v).reshape(bv, n, c)


def _row_col_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, views: int) -> torch.Tensor:
    """Official geometry layout (6 views: front, right, back, left, top, bottom) on square grids.

    Rows attend across views 0-3; columns attend across [front mirrored left-right, back, top, bottom]; the front and
    back average both results, right/left take the row result and top/bottom the column result.
    """
    assert views == 6
    bv, n, c = q.shape
    b, d, side = bv // views, c // heads, math.isqrt(n)
    q, k, v = (x.reshape(b, views, side, side, heads, d) for x in (q, k, v))

    def softmax_attend(eq_logits, eq_out, qq, kk, vv):
        logits = torch.einsum(eq_logits, qq, kk) * d**-0.5
        w = logits.flatten(-2).softmax(-1).reshape(logits.shape)
        return torch.einsum(eq_out, w, vv)

    row = softmax_attend("bvrwhd,burshd->bvrwhus", "bvrwhus,burshd->bvrwhd", q[:, :4], k[:, :4], v[:, :4])

    def col_views(x):
        return torch.cat([x[:, :1].flip(3), x[:, [2, 4, 5]]], dim=1)

    col = softmax_attend("bvrwhd,buswhd->bvrwhus", "bvrwhus,buswhd->bvrwhd", col_views(q), col_views(k), col_views(v))
    col = torch.cat([col[:, :1].flip(3), col[:, 1:]], dim=1)
    out = torch.stack(
        [(row[:, 0] + col[:, 0]) / 2, row[:, 1], (row[:, 2] + col[:, 1]) / 2, row[:, 3], col[:, 2], col[:, 3]], dim=1
    )
    return out.reshape(bv, n, c)


class OfficialDecoupledProcessor:
    """Einsum restatement of the official decoupled processor (row mode), used on every attention of the UNet.

    ``attn2`` instances have no branches (plain cross-attention). ``stats`` records the largest branch
    contribution so the test can check the branches are not negligible.
    """

    def __init__(
        self, name: str, weights: dict[str, torch.Tensor], num_views: int, stats: dict[str, float], mv_attend=None
    ):
        self.name, self.w, self.num_views, self.stats = name, weights, num_views, stats
        self.mv_attend = mv_attend or _row_attend
        self.use_mv = f"{name}.to_q_mv.weight" in weights
        self.use_ref = f"{name}.to_q_ref.weight" in weights

    def _branch(self, attn, kind, x, kv, fn):
        w = self.w
        q, k, v = (F.linear(t, w[f"{self.name}.to_{p}_{kind}.weight"]) for p, t in (("q", x), ("k", kv), ("v", kv)))
        out = F.linear(fn(q, k, v), w[f"{self.name}.to_out_{kind}.0.weight"], w[f"{self.name}.to_out_{kind}.0.bias"])
        return out

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        mv_scale=1.0,
        ref_hidden_states=None,
        ref_scale=1.0,
        cache_hidden_states=None,
        use_mv=True,
        use_ref=True,
        num_views=None,
    ):
        assert attention_mask is None and attn.spatial_norm is None and attn.group_norm is None
        if num_views is not None:
            self.num_views = num_views
        if cache_hidden_states is not None:
            cache_hidden_states[self.name] = hidden_states.clone()
        use_mv, use_ref = self.use_mv and use_mv, self.use_ref and use_ref
        residual, x = hidden_states, hidden_states
        context = x if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        out = attn.to_out[0](_attend(attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads))
        if use_mv:
            mv = self._branch(attn, "mv", x, x, lambda q, k, v: self.mv_attend(q, k, v, attn.heads, self.num_views))
            self.stats["mv"] = max(self.stats.get("mv", 0.0), float((mv * mv_scale).abs().max()))
            out = out + mv * mv_scale
        if use_ref:
            ref = ref_hidden_states[self.name]
            r = self._branch(attn, "ref", x, ref, lambda q, k, v: _attend(q, k, v, attn.heads))
            self.stats["ref"] = max(self.stats.get("ref", 0.0), float((r * ref_scale)[x.shape[0] // 2 :].abs().max()))
            out = out + r * ref_scale
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@torch.no_grad()
def official_reference(
    base_dir: Path,
    xl: bool,
    weights_file: Path,
    image: PIL.Image.Image | None,
    geometry: tuple[np.ndarray, np.ndarray] | None = None,
    dtype: torch.dtype = DTYPE,
) -> dict:
    """Final latents (V, C, h, w), images (V, H, W, 3) and branch statistics of the official inference.

    ``geometry``: ``(positions, normals)`` ``(6, H, W, 3)`` for the geometry variants (row-column attention, the
    condition ``[(pos + 0.5), (normal / 2 + 0.5)]`` clamped, as the official tg2mv/ig2mv scripts build it).
    """
    pipe_cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    base = pipe_cls.from_pretrained(base_dir).to(dtype=dtype)
    weights = {k: v.to(dtype) for k, v in load_file(str(weights_file)).items()}
    unet, vae, vsf = base.unet, base.vae, base.vae_scale_factor
    num_views = 6
    size = unet.config.sample_size * vsf  # official: UNet default (SD) / 768 script size (SDXL; tiny: 32)
    guidance = 3.0 if image is not None else 7.0
    device = torch.device("cpu")

    # scheduler: shifted SNR (interpolated, 8), the pipeline's scheduler is replaced
    base.scheduler = official_shift_snr_scheduler(base.scheduler, OFFICIAL_SHIFT)
    scheduler = base.scheduler

    # processors on every attention, loaded from the official file
    stats: dict[str, float] = {}
    unet.set_attn_processor(
        {
            name: OfficialDecoupledProcessor(name, weights, num_views, stats, _row_col_attend if geometry else None)
            for name in unet.attn_processors
        }
    )
    encoder = official_encoder(unet, vsf, xl)
    encoder.load_state_dict({k: v for k, v in weights.items() if k.startswith("adapter.")}, strict=True)
    encoder.to(dtype=dtype)

    # text, CFG layout [negative, positive]
    added = None
    if xl:
        pe, ne, pp, npp = base.encode_prompt(
            prompt=PROMPT, device=device, num_images_per_prompt=num_views, do_classifier_free_guidance=True,
            negative_prompt=OFFICIAL_NEGATIVE,
        )  # fmt: skip
        time_ids = base._get_add_time_ids(
            (size, size), (0, 0), (size, size), dtype=pe.dtype,
            text_encoder_projection_dim=base.text_encoder_2.config.projection_dim,
        )  # fmt: skip
        prompt_embeds = torch.cat([ne, pe])
        added = {"text_embeds": torch.cat([npp, pp]), "time_ids": torch.cat([time_ids, time_ids]).repeat(num_views, 1)}
    else:
        pe, ne = base.encode_prompt(PROMPT, device, num_views, True, OFFICIAL_NEGATIVE)
        prompt_embeds = torch.cat([ne, pe])

    scheduler.set_timesteps(STEPS, device=device)
    timesteps = scheduler.timesteps
    generator = torch.Generator().manual_seed(SEED)
    shape = (num_views, unet.config.in_channels, size // vsf, size // vsf)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
    extra_step_kwargs = base.prepare_extra_step_kwargs(generator, 0.0)

    cross_attention_kwargs = {"mv_scale": 1.0, "num_views": num_views}
    if image is not None:
        reference = base.image_processor.preprocess(image).to(device=device, dtype=dtype)  # the image's own size
        ref_latents = vae.encode(reference).latent_dist.sample(generator) * vae.config.scaling_factor
        cache: dict[str, torch.Tensor] = {}
        unet(
            ref_latents, torch.zeros_like(timesteps[0]), encoder_hidden_states=prompt_embeds[-1:],
            added_cond_kwargs={k: v[-1:] for k, v in added.items()} if added is not None else None,
            cross_attention_kwargs={"cache_hidden_states": cache, "use_mv": False, "use_ref": False},
        )  # fmt: skip
        ref_states = {k: v.repeat_interleave(num_views, dim=0) for k, v in cache.items()}
        ref_states = {k: torch.cat([torch.zeros_like(v), v]) for k, v in ref_states.items()}
        cross_attention_kwargs.update(ref_hidden_states=ref_states, ref_scale=1.0)

    if geometry is None:
        control = official_ortho_condition(official_ring_c2w(num_views), size)
    else:
        pos, nrm = (torch.from_numpy(a) for a in geometry)
        control = torch.cat([(pos + 0.5).clamp(0, 1), (nrm / 2 + 0.5).clamp(0, 1)], dim=-1).permute(0, 3, 1, 2)
    control = VaeImageProcessor(vae_scale_factor=vsf, do_convert_rgb=True, do_normalize=False).preprocess(
        control, height=size, width=size
    )
    control = torch.cat([control.to(device=device, dtype=dtype)] * 2)
    features = [f * 1.0 for f in encoder(control)]
    stats["cond"] = max(float(f.abs().max()) for f in features)

    for t in timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps = unet(
            model_input, t, encoder_hidden_states=prompt_embeds, cross_attention_kwargs=cross_attention_kwargs,
            down_intrablock_additional_residuals=[f.clone() for f in features], added_cond_kwargs=added,
            return_dict=False,
        )[0]  # fmt: skip
        uncond, cond = eps.chunk(2)
        eps = uncond + guidance * (cond - uncond)
        latents = scheduler.step(eps, t, latents, **extra_step_kwargs, return_dict=False)[0]

    decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    images = base.image_processor.postprocess(decoded, output_type="np")
    return {"latents": latents, "images": images, "stats": stats, "size": size}


# ----------------------------------------------------------------------------------------------------------------------
# Official-layout random adapter file
# ----------------------------------------------------------------------------------------------------------------------
def save_official_adapter(base_dir: Path, xl: bool, variant: str, directory: Path, seed: int = 0) -> Path:
    """Random weights under the official keys (``<processor>.to_q_mv.weight``, ``adapter.*``), no metadata."""
    base = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_pretrained(base_dir)
    unet = base.unet
    torch.manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    branches = ("mv", "ref") if variant.startswith("i") else ("mv",)
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        c = attn.to_q.in_features
        for kind in branches:
            for p in ("q", "k", "v"):
                base_w = getattr(attn, f"to_{p}").weight
                tensors[f"{name}.to_{p}_{kind}.weight"] = base_w + 0.5 * torch.randn(c, c) / c**0.5
            tensors[f"{name}.to_out_{kind}.0.weight"] = 0.5 * torch.randn(c, c) / c**0.5
            tensors[f"{name}.to_out_{kind}.0.bias"] = 0.02 * torch.randn(c)
    encoder = official_encoder(unet, base.vae_scale_factor, xl)
    tensors.update({key: value.clone() for key, value in encoder.state_dict().items()})  # keys are "adapter.*"
    path = directory / f"mvadapter_{variant}_{'sdxl' if xl else 'sd21'}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _reference_image(size: int) -> PIL.Image.Image:
    rng = np.random.default_rng(3)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _geometry(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    pos = rng.uniform(-0.6, 0.6, (6, size, size, 3))
    nrm = rng.normal(size=(6, size, size, 3))
    return pos, nrm / np.linalg.norm(nrm, axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("family", "variant", "ref_size"),
    [
        ("sd21", "t2mv", None),
        ("sd21", "i2mv", 48),  # a reference larger than the output: encoded at its own size, as the official pipeline
        ("sdxl", "t2mv", None),
        ("sdxl", "i2mv", 32),
        ("sdxl", "ig2mv", 32),  # geometry maps + row-column attention
    ],
)
def test_pipeline_matches_official_inference(family, variant, ref_size, tiny_sd21, tiny_sdxl, tmp_path):
    xl = family == "sdxl"
    base_dir = tiny_sdxl if xl else tiny_sd21
    weights_file = save_official_adapter(base_dir, xl, variant, tmp_path)
    image = _reference_image(ref_size) if ref_size else None
    geometry = _geometry(32) if "g2mv" in variant else None
    expected = official_reference(base_dir, xl, weights_file, image, geometry)
    # the branches and the condition must matter, else equality would prove little
    assert expected["stats"]["mv"] > 1e-2 and expected["stats"]["cond"] > 1e-2
    if image is not None:
        assert expected["stats"]["ref"] > 1e-2

    pipe = MVAdapterPipeline.from_pretrained(base_dir, mv_adapter=weights_file).to(dtype=DTYPE)
    pipe.set_progress_bar_config(disable=True)
    mode = "row_col" if geometry else "row"
    assert pipe.mv_adapter.config.variant == variant and pipe.mv_adapter.config.attention_mode == mode
    captured = {}

    def grab(p, i, t, tensors):
        captured["latents"] = tensors["latents"].clone()
        return {}

    maps = {"position_map": geometry[0], "normal_map": geometry[1]} if geometry else {}
    out = pipe(PROMPT, image=image, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED),
               output_type="np", callback_on_step_end=grab, **maps)  # fmt: skip
    views = out.images[0]
    assert views.shape == (6, expected["size"], expected["size"], 3)
    torch.testing.assert_close(captured["latents"], expected["latents"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(views, expected["images"], atol=1e-5, rtol=0)


def official_preprocess_rgba(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """The official scripts' reference preparation: crop the alpha box (1 px margin), scale the longer side to 90% of
    the target, centre on a transparent canvas, composite over gray 0.5."""
    arr = np.array(image)
    ys, xs = np.where(arr[..., 3] > 0)
    crop = arr[
        max(ys.min() - 1, 0) : min(ys.max() + 1, arr.shape[0]), max(xs.min() - 1, 0) : min(xs.max() + 1, arr.shape[1])
    ]
    h, w = crop.shape[:2]
    if h > w:
        h, w = int(height * 0.9), int(w * (height * 0.9) / h)
    else:
        h, w = int(h * (width * 0.9) / w), int(width * 0.9)
    crop = np.array(PIL.Image.fromarray(crop).resize((w, h)))
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = crop
    rgba = canvas.astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:4] + (1 - rgba[..., 3:4]) * 0.5
    return PIL.Image.fromarray((rgb * 255).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("box", [(5, 15, 10, 30), (2, 37, 20, 31)])
def test_reference_preparation_matches_official_scripts(box):
    from pipelines.pipeline_mv_adapter import prepare_reference_image

    rng = np.random.default_rng(0)
    arr = np.zeros((40, 60, 4), dtype=np.uint8)
    y0, y1, x0, x1 = box
    arr[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 4), dtype=np.uint8)
    arr[y0:y1, x0:x1, 3] = np.maximum(arr[y0:y1, x0:x1, 3], 1)  # soft but non-empty alpha
    image = PIL.Image.fromarray(arr, mode="RGBA")
    for height, width in ((32, 32), (48, 32)):
        ours = np.asarray(prepare_reference_image(image, height, width))
        assert np.array_equal(ours, np.asarray(official_preprocess_rgba(image, height, width)))


def test_sdxl_applies_the_invisible_watermark_when_present(tiny_sdxl):
    """The official SDXL pipelines watermark decoded images when ``invisible-watermark`` is installed; so do we."""

    class Marker:
        def apply_watermark(self, images):
            return torch.zeros_like(images)

    pipe = MVAdapterPipeline.from_pretrained(tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    pipe.watermark = Marker()
    out = pipe("a", num_views=2, num_inference_steps=1, output_type="np").images[0]
    np.testing.assert_allclose(out, 0.5)  # zeros in [-1, 1] -> 0.5 after postprocessing
