"""HiPA's ``__call__`` is diffusers' SD / SDXL ``__call__`` on the preset's scheduler.

Each case runs the HiPA pipeline and a stock ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` over the same
components (shared modules, so the same weights and a loaded LoRA), the stock one given the preset's scheduler
(``make_scheduler(preset, base config)``) and the HiPA call's resolved steps, guidance and eta, both from the same
seed. The comparison is bitwise (``torch.equal`` / ``np.array_equal``): on CPU in float32 both calls run the same
operations in the same order; in particular the hipa preset's one step is DDIM on trailing timesteps with
``set_alpha_to_one``, whose single step from ``t = T - 1`` to ``alpha = 1`` computes the closed-form x0
(:func:`adapters.hipa.one_step.predict_x0`) with the same arithmetic, plus ``0 * eps``. In float16 the one step differs
from the fp32-computed x0 the old call returned by fp16 rounding (``test_one_step_in_half_precision_...``).

The cases where the HiPA call deliberately differs from the stock call are tested here too, with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from adapters.hipa.config import HiPAConfig
from adapters.hipa.loader import add_hipa_lora
from adapters.hipa.one_step import last_timestep, predict_x0
from adapters.hipa.presets import get_preset, make_scheduler
from pipelines.pipeline_hipa import HiPASDPipeline, HiPAXLPipeline
from pipelines.testing import (
    build_sd15_components,
    build_sd21_components,
    build_sdxl_components,
    randomise_,
)
from tests.conformance.common import ip_adapter_state_dict

SIZE = 16
BUILDERS = {"sd15": build_sd15_components, "sd21": build_sd21_components, "sdxl": build_sdxl_components}


def _pipes(base: str, lora: bool = False):
    """``(hipa, stock_class, components)`` over one set of components."""
    components = BUILDERS[base]()
    if base != "sdxl":
        components["requires_safety_checker"] = False
    cls = HiPAXLPipeline if base == "sdxl" else HiPASDPipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        add_hipa_lora(pipe.unet, HiPAConfig(rank=4))
        randomise_([p for n, p in pipe.unet.named_parameters() if ".lora_" in n], seed=1, std=0.1)
    stock_cls = StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline
    return pipe, stock_cls, components


def _stock(stock_cls, components, pipe, scheduler):
    stock = stock_cls(**{**components, "unet": pipe.unet, "scheduler": scheduler})
    stock.set_progress_bar_config(disable=True)
    return stock


def _images(output) -> np.ndarray | torch.Tensor:
    images = output.images
    if isinstance(images, list):
        return np.stack([np.asarray(image) for image in images])
    return images


def _assert_same(ours, theirs) -> None:
    a, b = _images(ours), _images(theirs)
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), float((a - b).abs().max())
    else:
        assert a.dtype == b.dtype and np.array_equal(a, b), float(np.abs(a.astype(float) - b.astype(float)).max())


def _call_kwargs(seed: int = 0, **kwargs):
    return {
        "prompt": "a red cube",
        "height": SIZE,
        "width": SIZE,
        "generator": torch.Generator().manual_seed(seed),
        **kwargs,
    }


# (base, preset, steps, guidance, output_type, LoRA): every preset, one and few steps, with and without guidance,
# every output type, SD (epsilon), SD 2.1 (v-prediction) and SDXL.
CASES = [
    ("sd15", "hipa", 1, None, "latent", False),
    ("sd15", "hipa", 1, None, "pil", True),
    ("sd15", "hipa", 1, 3.0, "np", True),
    ("sd15", "hipa", 3, None, "np", True),
    ("sd15", "hipa", 4, 3.0, "latent", False),
    ("sd21", "hipa", 1, None, "np", False),
    ("sd21", "hipa", 1, 3.0, "latent", True),
    ("sd21", "hipa", 2, None, "pt", False),
    ("sd15", "lcm", 4, None, "np", True),
    ("sd15", "lcm", 2, 3.0, "latent", False),
    ("sd15", "tcd", 4, None, "latent", True),
    ("sd21", "tcd", 2, 3.0, "np", False),
    ("sd15", "lightning", 4, None, "pil", False),
    ("sd15", "lightning", 2, 3.0, "latent", True),
    ("sd15", "hyper-sd", 2, None, "np", True),
    ("sd21", "hyper-sd", 8, 3.0, "latent", False),
    ("sdxl", "hipa", 1, None, "latent", True),
    ("sdxl", "hipa", 1, 3.0, "pil", False),
    ("sdxl", "hipa", 2, None, "np", False),
    ("sdxl", "lcm", 4, None, "np", False),
    ("sdxl", "tcd", 2, 3.0, "latent", True),
    ("sdxl", "lightning", 4, None, "latent", True),
    ("sdxl", "lightning", 2, 3.0, "np", False),
    ("sdxl", "hyper-sd", 2, None, "pt", False),
]


@pytest.mark.parametrize(("base", "preset", "steps", "guidance", "output_type", "lora"), CASES)
def test_call_is_the_stock_call_on_the_preset_scheduler(base, preset, steps, guidance, output_type, lora):
    pipe, stock_cls, components = _pipes(base, lora=lora)
    spec = get_preset(preset)
    extra = {"negative_prompt": "blurry"} if guidance else {}
    ours = pipe(
        **_call_kwargs(output_type=output_type, **extra),
        preset=preset,
        num_inference_steps=steps,
        guidance_scale=guidance,
    )
    stock = _stock(stock_cls, components, pipe, make_scheduler(spec, components["scheduler"].config))
    theirs = stock(
        **_call_kwargs(output_type=output_type, **extra),
        num_inference_steps=steps,
        guidance_scale=spec.guidance_scale if guidance is None else guidance,
        eta=spec.eta,
    )
    _assert_same(ours, theirs)


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_set_preset_batches_and_generator_lists(base):
    """``set_preset`` (the pipeline's scheduler), two prompts x two images, one generator per sample."""
    pipe, stock_cls, components = _pipes(base, lora=True)
    pipe.set_preset("tcd")
    kwargs = {"prompt": ["a red cube", "a blue sphere"], "num_images_per_prompt": 2, "output_type": "np"}
    ours = pipe(**kwargs, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    stock = _stock(stock_cls, components, pipe, make_scheduler("tcd", components["scheduler"].config))
    theirs = stock(
        **kwargs, height=SIZE, width=SIZE, generator=[torch.Generator().manual_seed(i) for i in range(4)],
        num_inference_steps=4, guidance_scale=1.0, eta=0.3,
    )  # fmt: skip
    _assert_same(ours, theirs)


@pytest.mark.parametrize("scheduler_cls", [PNDMScheduler, EulerDiscreteScheduler])
def test_one_step_on_any_scheduler_is_the_trailing_ddim_step(scheduler_cls):
    """Without a preset the pipeline's own (PNDM) or a swapped-in (Euler) scheduler runs as given for several steps,
    but one hipa step is always the x0 prediction at ``T - 1``: the stock call on the hipa preset's scheduler built
    from that scheduler's config."""
    pipe, stock_cls, components = _pipes("sd15", lora=True)
    pipe.scheduler = scheduler_cls.from_config(components["scheduler"].config)
    ours = pipe(**_call_kwargs(output_type="latent"))
    stock = _stock(stock_cls, components, pipe, make_scheduler("hipa", pipe.scheduler.config))
    _assert_same(ours, stock(**_call_kwargs(output_type="latent"), num_inference_steps=1, guidance_scale=1.0))
    # several steps: the swapped-in scheduler as given
    ours = pipe(**_call_kwargs(output_type="latent"), num_inference_steps=3)
    stock = _stock(stock_cls, components, pipe, scheduler_cls.from_config(components["scheduler"].config))
    _assert_same(ours, stock(**_call_kwargs(output_type="latent"), num_inference_steps=3, guidance_scale=1.0))


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
def test_ip_adapter_embeds(base):
    """One row of IP-Adapter embeddings (shared by every sample), under guidance: the stock call. One row per prompt:
    diffusers' ``prepare_ip_adapter_image_embeds`` repeats every given row once per sample (2 prompts x 2 images: 8
    rows for a batch of 4), so the HiPA pipeline overrides it to lay the rows out one per sample, as before."""
    pipe, stock_cls, components = _pipes(base)
    dim = 32
    pipe.load_ip_adapter(
        ip_adapter_state_dict(pipe.unet, dim), subfolder="", weight_name="", image_encoder_folder=None
    )
    pipe.set_ip_adapter_scale(1.0)
    stock = _stock(stock_cls, components, pipe, make_scheduler("lcm", components["scheduler"].config))
    embeds = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(3))
    cfg = {"ip_adapter_image_embeds": [torch.cat([torch.zeros_like(embeds), embeds])], "guidance_scale": 3.0}
    ours = pipe(**_call_kwargs(output_type="latent", **cfg), preset="lcm", num_inference_steps=2)
    _assert_same(ours, stock(**_call_kwargs(output_type="latent", **cfg), num_inference_steps=2))

    rows = torch.randn(2, 1, dim, generator=torch.Generator().manual_seed(4))
    repeated = stock_cls.prepare_ip_adapter_image_embeds(stock, None, [rows], torch.device("cpu"), 4, False)
    assert repeated[0].shape[0] == 8  # the stock layout: every row once per sample
    noise = torch.randn(4, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(5))
    out = pipe(
        ["a red cube", "a blue sphere"], num_images_per_prompt=2, height=SIZE, width=SIZE, latents=noise,
        ip_adapter_image_embeds=[rows], output_type="latent",
    ).images  # fmt: skip
    # sample 2 (second prompt, first image) uses row 1: a call with that prompt, row and noise alone
    single = pipe(
        "a blue sphere", height=SIZE, width=SIZE, latents=noise[2:3], ip_adapter_image_embeds=[rows[1:]],
        output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(out[2:3], single, atol=1e-5, rtol=1e-5)
    other = pipe(
        "a blue sphere", height=SIZE, width=SIZE, latents=noise[2:3], ip_adapter_image_embeds=[rows[:1]],
        output_type="latent",
    ).images  # fmt: skip
    assert (other - single).abs().max() > 1e-4


def test_one_step_in_half_precision_is_the_x0_to_fp16_rounding():
    """In float16 the one step is not bitwise the fp32-computed x0 of :func:`predict_x0` (which the HiPA call used
    before it became the stock call): diffusers' DDIM step computes in the model output's dtype, so x0 carries fp16
    rounding (measured: 1 ulp, 0.031 on |x0| up to 56). Within 2 ulp of the largest value here."""
    pipe, _, _ = _pipes("sd15")
    pipe.to(dtype=torch.float16)
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(0)).half()
    out = pipe("a red cube", height=SIZE, width=SIZE, latents=noise, output_type="latent").images
    embeds, _ = pipe.encode_prompt("a red cube", torch.device("cpu"), 1, False)
    timestep = torch.tensor(last_timestep(pipe.scheduler))
    with torch.no_grad():
        eps = pipe.unet(noise, timestep, encoder_hidden_states=embeds, return_dict=False)[0]
    x0 = predict_x0(eps, noise, timestep, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x0.float(), rtol=0, atol=2 * 2**-10 * float(x0.float().abs().max()))
