"""One adapter API: ``load_X`` / ``set_X_scale`` / ``fuse_X`` / ``unfuse_X`` / ``unload_X`` and
``from_pretrained(base, X=...)`` for all four adapters; the old names still work and warn; unloading is exact; the
two factories in ``pipelines.auto_pipeline`` are what they say (not pipelines); normal use fires no deprecation."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.models.attention_processor import Attention

import pipelines
from adapters.hipa import HiPAConfig, add_hipa_lora, hipa_lora_state_dict, set_hipa_lora_scale, set_hipa_scale
from pipelines import auto_pipeline, pipeline_hipa, pipeline_mv_adapter
from pipelines.auto_pipeline import HiPAPipeline, MVAdapterPipeline
from pipelines.pipeline_hipa import HiPASDPipeline
from pipelines.pipeline_mv_adapter_sd import MVAdapterSDPipeline
from pipelines.pipeline_mv_adapter_sdxl import MVAdapterXLPipeline

SIZE = 32
NO_SAFETY = {"safety_checker": None, "requires_safety_checker": False}


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _future(record) -> list:
    return [w for w in record if issubclass(w.category, FutureWarning)]


def _points_here(record) -> bool:
    """Every deprecation warning names the caller's line (this file), not the library's."""
    return bool(_future(record)) and all(w.filename == __file__ for w in _future(record))


def _module_types(module: torch.nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in module.named_modules()]


def _hipa_latents(pipe, seed=0):
    return pipe(
        "a red cube", height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed), output_type="latent"
    ).images


def _random_lora(tiny_sd15, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random HiPA LoRA state dict (peft layout) for the tiny SD 1.5 UNet, with the ``unet.`` prefix."""
    donor = StableDiffusionPipeline.from_pretrained(tiny_sd15, **NO_SAFETY)
    add_hipa_lora(donor.unet, HiPAConfig(rank=rank))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in donor.unet.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return {f"unet.{k}": v for k, v in hipa_lora_state_dict(donor.unet).items()}


@pytest.fixture(scope="module")
def loras(tiny_sd15):
    return {"a": _random_lora(tiny_sd15, seed=1), "b": _random_lora(tiny_sd15, seed=2)}


# ------------------------------------------------------------------------------------------------ the factories
@pytest.mark.parametrize("factory", [MVAdapterPipeline, HiPAPipeline])
def test_factories_say_what_they_are(factory):
    """Like diffusers' AutoPipelineFor*: not a DiffusionPipeline, __init__ refused with a message naming the
    classmethods; one class whatever the import path."""
    assert not issubclass(factory, DiffusionPipeline)
    with pytest.raises(OSError, match=rf"{factory.__name__}\.from_pretrained.*{factory.__name__}\.from_pipe"):
        factory()
    name = factory.__name__
    assert getattr(pipelines, name) is factory is getattr(auto_pipeline, name)
    old_home = pipeline_mv_adapter if factory is MVAdapterPipeline else pipeline_hipa
    assert getattr(old_home, name) is factory
    with pytest.raises(AttributeError):
        old_home.NoSuchName  # noqa: B018


def test_mv_modules_import_without_a_circle():
    """pipeline_mv_adapter no longer imports its SD / SDXL variants (which import it); each imports on its own."""
    code = (
        "import sys, pipelines.pipeline_mv_adapter\n"
        "assert not {'pipelines.pipeline_mv_adapter_sd', 'pipelines.pipeline_mv_adapter_sdxl', "
        "'pipelines.auto_pipeline'} & set(sys.modules), sorted(m for m in sys.modules if m.startswith('pipelines'))\n"
        "import pipelines.pipeline_mv_adapter_sdxl, pipelines.auto_pipeline\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_mv_factory_from_pretrained_and_from_pipe(tiny_sd15, tiny_sdxl):
    xl = MVAdapterPipeline.from_pretrained(tiny_sdxl, mv_adapter=False)
    assert type(xl) is MVAdapterXLPipeline and xl.mv_adapter is None
    base = StableDiffusionPipeline.from_pretrained(tiny_sd15, **NO_SAFETY)
    mv = MVAdapterPipeline.from_pipe(base, mv_adapter_config={"use_ref": True})
    assert type(mv) is MVAdapterSDPipeline and mv.unet is base.unet and mv.mv_adapter.config.use_ref
    shared = MVAdapterPipeline.from_pipe(mv)  # the UNet holds the adapter: shared, not a second one
    assert shared.mv_adapter is mv.mv_adapter
    with pytest.raises(ValueError, match="mv_adapter"):
        MVAdapterPipeline.from_pipe(mv, mv_adapter=False)
    mv.unload_mv_adapter()
    bare = MVAdapterPipeline.from_pipe(base, mv_adapter=False)
    assert bare.mv_adapter is None


# ------------------------------------------------------------------------------------------------ MV-Adapter
@pytest.fixture(scope="module")
def mv_pipe(tiny_sd15):
    return _quiet(MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter_config={"use_ref": True}))


def test_mv_scale_new_and_deprecated_names(mv_pipe):
    state = mv_pipe.mv_adapter.state
    mv_pipe.set_mv_adapter_scale(0.25, ref_scale=0.75)
    assert (state.mv_scale, state.ref_scale) == (0.25, 0.75)
    mv_pipe.set_mv_adapter_scale(0.5)  # None keeps a branch
    assert (state.mv_scale, state.ref_scale) == (0.5, 0.75)
    with pytest.warns(FutureWarning, match="set_mv_adapter_scale") as record:
        mv_pipe.set_adapter_scale(mv=0.125, ref=0.375)
    assert _points_here(record)
    assert (state.mv_scale, state.ref_scale) == (0.125, 0.375)
    with pytest.warns(FutureWarning, match="set_scale") as record:
        mv_pipe.mv_adapter.set_adapter_scale(mv=1.0)
    assert _points_here(record)
    assert (state.mv_scale, state.ref_scale) == (1.0, 0.375)
    mv_pipe.mv_adapter.set_scale(1.0, ref_scale=1.0)


def test_mv_from_pretrained_deprecated_keywords(tiny_sd15, tmp_path, mv_pipe):
    torch.manual_seed(0)
    for p in mv_pipe.mv_adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = mv_pipe.mv_adapter.save(tmp_path / "folder" / "mv.safetensors")
    new = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter=path.parent, mv_adapter_weight_name=path.name)
    with pytest.warns(FutureWarning, match="mv_adapter") as record:
        old = MVAdapterPipeline.from_pretrained(tiny_sd15, adapter=path.parent, adapter_weight_name=path.name)
    assert len(_future(record)) == 2 and _points_here(record)
    assert _same_state(old.mv_adapter.state_dict(), new.mv_adapter.state_dict())
    assert _same_state(new.mv_adapter.state_dict(), mv_pipe.mv_adapter.state_dict())
    with pytest.warns(FutureWarning, match="mv_adapter_config"):
        cfg = MVAdapterPipeline.from_pretrained(tiny_sd15, adapter_config={"num_views": 4})
    assert cfg.mv_adapter.config.num_views == 4
    with pytest.warns(FutureWarning, match="mv_adapter_config") as record:
        direct = MVAdapterSDPipeline.from_pretrained(tiny_sd15, adapter_config={"num_views": 4}, **NO_SAFETY)
    assert direct.mv_adapter.config.num_views == 4 and _points_here(record)
    with pytest.raises(ValueError, match="`mv_adapter`"):
        MVAdapterPipeline.from_pretrained(tiny_sd15, adapter=False, mv_adapter=path)
    with pytest.raises(ValueError, match="`mv_adapter_weight_name`"):
        MVAdapterPipeline.from_pretrained(tiny_sd15, adapter_weight_name="a", mv_adapter_weight_name="b")
    mv_pipe.init_mv_adapter(use_ref=True)


def test_mv_unload_is_exact(tiny_sd15):
    never = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter=False)
    pipe = MVAdapterPipeline.from_pretrained(tiny_sd15, mv_adapter=False)
    processors = {n: m.processor for n, m in pipe.unet.named_modules() if isinstance(m, Attention)}
    before = _state(pipe.unet)
    adapter = pipe.init_mv_adapter(use_ref=True)
    torch.manual_seed(0)
    for p in adapter.trainable_parameters():
        torch.nn.init.normal_(p, std=0.1)
    pipe.unload_mv_adapter()
    assert pipe.mv_adapter is None
    assert {n: m.processor for n, m in pipe.unet.named_modules() if isinstance(m, Attention)} == processors
    assert _same_state(_state(pipe.unet), before) and _module_types(pipe.unet) == _module_types(never.unet)
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = pipe.unet(sample, 10, encoder_hidden_states=text).sample
        expected = never.unet(sample, 10, encoder_hidden_states=text).sample
    assert torch.equal(got, expected)


# ------------------------------------------------------------------------------------------------ HiPA
@pytest.fixture(scope="module")
def hipa_base(tiny_sd15):
    pipe = _quiet(HiPAPipeline.from_pretrained(tiny_sd15, **NO_SAFETY))
    return pipe, _hipa_latents(pipe), _state(pipe.unet), _module_types(pipe.unet)


def test_hipa_unload_is_exact(hipa_base, loras):
    pipe, base_latents, base_state, base_types = hipa_base
    pipe.load_hipa_lora(loras["a"])
    assert not torch.equal(_hipa_latents(pipe), base_latents)
    pipe.unload_hipa_lora()
    assert not getattr(pipe.unet, "peft_config", None)
    assert _module_types(pipe.unet) == base_types and _same_state(_state(pipe.unet), base_state)
    assert torch.equal(_hipa_latents(pipe), base_latents)
    with pytest.raises(ValueError, match="adapter_name"):
        pipe.unload_hipa_lora()  # nothing left to unload


def test_hipa_unload_one_of_two_leaves_the_other(hipa_base, loras):
    """Unloading one LoRA leaves the pipeline exactly as if only the other had been loaded."""
    pipe, base_latents, base_state, base_types = hipa_base
    pipe.load_hipa_lora(loras["b"], adapter_name="b", scale=0.5)
    only_b = _hipa_latents(pipe)
    pipe.unload_hipa_lora("b")
    pipe.load_hipa_lora(loras["a"], scale=0.8)
    pipe.load_hipa_lora(loras["b"], adapter_name="b", scale=0.5)
    pipe.set_hipa_lora_scale(0.8)  # loading "b" made it the only active LoRA (diffusers' rule): both on
    assert pipe.get_active_adapters() == ["b", "hipa"]
    assert not torch.equal(_hipa_latents(pipe), only_b)
    pipe.unload_hipa_lora()  # "hipa"
    assert list(pipe.unet.peft_config) == ["b"]
    assert torch.equal(_hipa_latents(pipe), only_b)
    pipe.unload_hipa_lora("b")
    assert _module_types(pipe.unet) == base_types and _same_state(_state(pipe.unet), base_state)
    assert torch.equal(_hipa_latents(pipe), base_latents)


def test_hipa_fuse_unfuse_and_unload_refused_while_fused(hipa_base, loras):
    pipe, base_latents, base_state, _ = hipa_base
    pipe.load_hipa_lora(loras["a"], scale=0.7)
    adapted = _hipa_latents(pipe)
    pipe.fuse_hipa_lora()
    torch.testing.assert_close(_hipa_latents(pipe), adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unfuse_hipa_lora"):
        pipe.unload_hipa_lora()
    pipe.unfuse_hipa_lora()
    torch.testing.assert_close(_hipa_latents(pipe), adapted, atol=1e-5, rtol=1e-5)
    pipe.unload_hipa_lora()
    # unfuse subtracts what fuse added: the weights are back to float tolerance (not bitwise), as diffusers' own
    restored = _state(pipe.unet)
    assert restored.keys() == base_state.keys()
    assert all(torch.allclose(restored[k], base_state[k], atol=1e-6) for k in base_state)
    pipe.unet.load_state_dict(base_state)
    assert torch.equal(_hipa_latents(pipe), base_latents)


def test_hipa_scale_new_and_deprecated_names(hipa_base, loras):
    pipe, *_ = hipa_base
    pipe.load_hipa_lora(loras["a"])
    pipe.set_hipa_lora_scale(0.5)
    half = _hipa_latents(pipe)
    pipe.set_hipa_lora_scale(1.0)
    with pytest.warns(FutureWarning, match="set_hipa_lora_scale") as record:
        pipe.set_hipa_scale(0.5)
    assert _points_here(record)
    assert torch.equal(_hipa_latents(pipe), half)
    set_hipa_lora_scale(pipe, 1.0)
    with pytest.warns(FutureWarning, match="set_hipa_lora_scale") as record:
        set_hipa_scale(pipe, 0.5)
    assert _points_here(record)
    assert torch.equal(_hipa_latents(pipe), half)
    pipe.unload_hipa_lora()


def test_hipa_from_pretrained_new_and_deprecated_keywords(tiny_sd15, loras):
    new = _quiet(HiPAPipeline.from_pretrained(tiny_sd15, hipa_lora=loras["a"], hipa_lora_scale=0.5, **NO_SAFETY))
    assert type(new) is HiPASDPipeline and new.preset.name == "hipa"
    with pytest.warns(FutureWarning, match="hipa_lora") as record:
        old = _quiet(HiPAPipeline.from_pretrained(tiny_sd15, lora=loras["a"], lora_scale=0.5, **NO_SAFETY))
    assert len(_future(record)) == 2 and _points_here(record)
    assert torch.equal(_hipa_latents(old), _hipa_latents(new))
    direct = _quiet(HiPASDPipeline.from_pretrained(tiny_sd15, hipa_lora=loras["a"], hipa_lora_scale=0.5, **NO_SAFETY))
    direct.set_preset("hipa")
    assert torch.equal(_hipa_latents(direct), _hipa_latents(new))
    with pytest.warns(FutureWarning, match="hipa_lora"):
        piped = _quiet(HiPAPipeline.from_pipe(direct.__class__.from_pipe(direct), lora=None))
    assert piped.unet is direct.unet
    with pytest.raises(ValueError, match="`hipa_lora`"):
        HiPAPipeline.from_pretrained(tiny_sd15, lora=loras["a"], hipa_lora=loras["a"])
    with pytest.raises(TypeError, match="lora_weight"):
        HiPAPipeline.from_pipe(direct, lora_weight=1.0)
    with pytest.raises(ValueError, match="hipa_lora_scale"):
        HiPAPipeline.from_pretrained(tiny_sd15, hipa_lora=loras["a"], hipa_lora_scale=-1.0)


# ------------------------------------------------------------------------------------------------ normal use
@pytest.mark.parametrize("name", ["mv", "hipa"])
def test_embedded_load_and_call_fire_no_deprecation(name):
    """The shipped models load and run through the app's task functions with no deprecated name involved."""
    from pipelines import tasks
    from pipelines.embedded import load_embedded

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        pipe = load_embedded(name, device="cpu", dtype="float32", progress_bar=False)
        if name == "mv":
            pipe.set_mv_adapter_scale(1.0, ref_scale=1.0)
            pipe("a red cube", num_views=2, num_inference_steps=1, output_type="latent")
        else:
            results = tasks.one_step(pipe, "a red cube", lora_scale=0.5)
            assert results and results[0][1].size[0] > 0


def test_deprecated_names_do_not_depend_on_the_diffusers_version(monkeypatch):
    """diffusers' own ``deprecate`` raises once diffusers reaches the removal version; ours follows this package."""
    import diffusers

    from adapters.deprecation import deprecated_kwarg, deprecated_name

    monkeypatch.setattr(diffusers, "__version__", "9.0.0")
    with pytest.warns(FutureWarning, match="`old_name` is deprecated"):
        deprecated_name("old_name", "new_name", stacklevel=2)
    kwargs = {"lora": "x"}
    with pytest.warns(FutureWarning, match="Use `hipa_lora=` instead"):
        assert deprecated_kwarg(kwargs, "lora", "hipa_lora", None, stacklevel=2) == "x"
    assert kwargs == {}
