"""IP-Adapter on the MV-Adapter and HiPA pipelines: tiny IP-Adapter weights in the official h94 layout
with a tiny ``CLIPVisionModelWithProjection`` (:func:`tests.tiny_models.tiny_ip_adapter_path`), loaded with diffusers'
``load_ip_adapter`` onto pipelines with their own adapter loaded (random, so it changes the output)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from adapters.hipa.config import HiPAConfig
from adapters.hipa.loader import add_hipa_lora
from pipelines.pipeline_hipa import HiPASDPipeline, HiPAXLPipeline
from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline
from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline
from tests import tiny_models
from tests.conformance.common import perturb_

SIZE = 16
IP_IMAGE = PIL.Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
EMBED_DIM = tiny_models.IMAGE_ENCODER_CONFIG["projection_dim"]


def _components(base: str) -> dict:
    if base == "sdxl":
        return tiny_models.build_sdxl_components()
    return {**tiny_models.build_sd15_components(), "requires_safety_checker": False}


def _mv(base: str = "sd15", variant: str = "t2mv"):
    cls = MVAdapterXLPipeline if base == "sdxl" else MVAdapterSDPipeline
    pipe = cls(**_components(base))
    pipe.set_progress_bar_config(disable=True)
    perturb_(pipe.init_mv_adapter(variant=variant).trainable_parameters(), seed=1, std=0.1)
    return pipe


def _hipa(base: str = "sd15"):
    cls = HiPAXLPipeline if base == "sdxl" else HiPASDPipeline
    pipe = cls(**_components(base))
    pipe.set_progress_bar_config(disable=True)
    add_hipa_lora(pipe.unet, HiPAConfig(rank=4))
    perturb_([p for n, p in pipe.unet.named_parameters() if ".lora_" in n], seed=1, std=0.1)
    return pipe


def _run(pipe, seed: int = 0, **kwargs) -> np.ndarray:
    inputs = {
        "prompt": "a red cube",
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
        "height": SIZE,
        "width": SIZE,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(seed),
    }
    if isinstance(pipe, (MVAdapterSDPipeline, MVAdapterXLPipeline)):
        inputs["num_views"] = 2
    inputs.update(kwargs)
    return np.asarray(pipe(**inputs).images)


def _load_ip(pipe, base: str) -> None:
    subfolder, weight_name = tiny_models.IP_ADAPTER_WEIGHTS[base]
    pipe.load_ip_adapter(tiny_models.tiny_ip_adapter_path(), subfolder=subfolder, weight_name=weight_name)


def _ip_processors(pipe) -> list[str]:
    return [n for n, p in pipe.unet.attn_processors.items() if type(p).__name__.startswith("IPAdapter")]


@pytest.mark.parametrize(
    ("make", "base"),
    [(_mv, "sd15"), (_mv, "sdxl"), (_hipa, "sd15"), (_hipa, "sdxl")],
    ids=["mv-sd", "mv-sdxl", "hipa-sd", "hipa-sdxl"],
)
def test_ip_adapter_loads_steers_and_unloads_exactly(make, base):
    """With the pipeline's own adapter loaded: ``load_ip_adapter`` (h94 layout + image encoder) works and keeps the
    adapter's processors (the same objects); the IP image changes the output; IP-Adapter scale 0 gives the output
    without an IP-Adapter bit for bit; ``unload_ip_adapter`` restores the pre-load output bit for bit."""
    pipe = make(base)
    before = _run(pipe)
    own = {n: p for n, p in pipe.unet.attn_processors.items() if getattr(p, "wraps_base_processor", False)}
    assert bool(own) == (make is _mv)
    _load_ip(pipe, base)
    assert pipe.image_encoder is not None and _ip_processors(pipe)
    assert all(pipe.unet.attn_processors[n] is p for n, p in own.items())
    with_ip = _run(pipe, ip_adapter_image=IP_IMAGE)
    assert np.abs(with_ip - before).max() > 1e-3
    other = PIL.Image.fromarray(255 - np.asarray(IP_IMAGE))
    assert np.abs(_run(pipe, ip_adapter_image=other) - with_ip).max() > 1e-4
    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(_run(pipe, ip_adapter_image=IP_IMAGE), before)
    pipe.set_ip_adapter_scale(1.0)
    pipe.unload_ip_adapter()
    assert not _ip_processors(pipe) and pipe.image_encoder is None
    assert all(pipe.unet.attn_processors[n] is p for n, p in own.items())
    assert np.array_equal(_run(pipe), before)


def test_mv_embeds_are_per_sample_and_repeated_per_view():
    """Embeddings with one row per prompt: sample 1 of a 2-prompt call equals the single call with prompt 1 and its
    row (so each sample's row reaches all of its views); the image's own embeddings from
    ``prepare_ip_adapter_image_embeds`` give the ``ip_adapter_image`` output exactly."""
    pipe = _mv()
    _load_ip(pipe, "sd15")
    gen = torch.Generator().manual_seed(5)
    pos = torch.randn(2, 1, EMBED_DIM, generator=gen)
    embeds = [torch.cat([torch.zeros_like(pos), pos])]  # negatives first
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    both = _run(pipe, prompt=["a red cube", "a blue sphere"], ip_adapter_image_embeds=embeds, generator=generators)
    single = _run(pipe, seed=1, prompt="a blue sphere", ip_adapter_image_embeds=[embeds[0][[1, 3]]])
    assert both.shape == (2, 2, SIZE, SIZE, 3)
    assert np.abs(both[1:] - single).max() < 1e-5
    assert np.abs(both[0, 0] - both[0, 1]).max() > 1e-4  # the views still differ (cameras)
    prepared = pipe.prepare_ip_adapter_image_embeds(IP_IMAGE, None, torch.device("cpu"), 1, True)
    assert np.array_equal(_run(pipe, ip_adapter_image_embeds=prepared), _run(pipe, ip_adapter_image=IP_IMAGE))


def test_mv_image_to_multiview_with_ip_adapter():
    """Image-to-multi-view (reference branch) with an IP-Adapter: the reference pass gets the samples' positive
    embeddings; scale 0 equals the call without the IP-Adapter."""
    pipe = _mv(variant="i2mv")
    reference = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    before = _run(pipe, image=reference)
    _load_ip(pipe, "sd15")
    assert np.abs(_run(pipe, image=reference, ip_adapter_image=IP_IMAGE) - before).max() > 1e-3
    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(_run(pipe, image=reference, ip_adapter_image=IP_IMAGE), before)


_BAD = [
    ("both", {"ip_adapter_image": IP_IMAGE, "ip_adapter_image_embeds": [torch.zeros(2, 1, EMBED_DIM)]},
     ValueError, "either `ip_adapter_image` or `ip_adapter_image_embeds`"),
    ("not-a-list", {"ip_adapter_image_embeds": torch.zeros(2, 1, EMBED_DIM)}, TypeError,
     "`ip_adapter_image_embeds` must be a list"),
    ("count", {"ip_adapter_image_embeds": [torch.zeros(2, 1, EMBED_DIM)] * 2}, ValueError,
     "`ip_adapter_image_embeds` has 2 tensors but 1 IP-Adapter"),
    ("ndim", {"ip_adapter_image_embeds": [torch.zeros(2, EMBED_DIM)]}, ValueError,
     r"`ip_adapter_image_embeds\[0\]` must be \(batch, num_images, embed_dim\)"),
    ("dim", {"ip_adapter_image_embeds": [torch.zeros(2, 1, EMBED_DIM + 1)]}, ValueError,
     r"`ip_adapter_image_embeds\[0\]` has embed_dim 33 but the loaded IP-Adapter takes 32"),
    ("rows", {"ip_adapter_image_embeds": [torch.zeros(3, 1, EMBED_DIM)]}, ValueError,
     r"`ip_adapter_image_embeds\[0\]` has 3 rows; with classifier-free guidance"),
    ("rows-no-cfg", {"ip_adapter_image_embeds": [torch.zeros(2, 1, EMBED_DIM)], "guidance_scale": 1.0}, ValueError,
     r"`ip_adapter_image_embeds\[0\]` has 2 rows; without classifier-free guidance it holds 1"),
    ("nan", {"ip_adapter_image_embeds": [torch.full((2, 1, EMBED_DIM), float("nan"))]}, ValueError,
     r"ip_adapter_image_embeds\[0\]"),
    ("images", {"ip_adapter_image": [IP_IMAGE, IP_IMAGE]}, ValueError,
     "`ip_adapter_image` has 2 entries but 1 IP-Adapter"),
]  # fmt: skip


@pytest.fixture(scope="module", params=[_mv, _hipa], ids=["mv", "hipa"])
def ip_pipe(request):
    pipe = request.param("sd15")
    _load_ip(pipe, "sd15")
    return pipe


@pytest.mark.parametrize(("kwargs", "error", "match"), [b[1:] for b in _BAD], ids=[b[0] for b in _BAD])
def test_bad_ip_adapter_inputs_are_refused_by_name(ip_pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(ip_pipe, **kwargs)


@pytest.mark.parametrize("make", [_mv, _hipa], ids=["mv", "hipa"])
def test_ip_adapter_inputs_need_a_loaded_ip_adapter_and_an_encoder(make):
    """Without an IP-Adapter the inputs are refused naming ``load_ip_adapter``; an image without an image encoder
    names the encoder (embeddings still work)."""
    pipe = make("sd15")
    with pytest.raises(ValueError, match=r"`ip_adapter_image` needs an IP-Adapter.*load_ip_adapter"):
        _run(pipe, ip_adapter_image=IP_IMAGE)
    with pytest.raises(ValueError, match=r"`ip_adapter_image_embeds` needs an IP-Adapter"):
        _run(pipe, ip_adapter_image_embeds=[torch.zeros(2, 1, EMBED_DIM)])
    _load_ip(pipe, "sd15")
    pipe.image_encoder = None
    with pytest.raises(ValueError, match="`ip_adapter_image` needs an image encoder"):
        _run(pipe, ip_adapter_image=IP_IMAGE)
    assert np.isfinite(_run(pipe, ip_adapter_image_embeds=[torch.zeros(2, 1, EMBED_DIM)])).all()
