"""One conformance mixin for every pipeline of the suite: the conventions diffusers' own pipeline tests check.

Each check follows one of diffusers' shared test mixins (``tests/pipelines/test_pipelines_common.py``:
``PipelineTesterMixin``, ``SDFunctionTesterMixin``; ``tests/pipelines/animatediff/test_animatediff.py`` for video),
written for our pipelines and tiny components (:mod:`tests.tiny_models`): what each asserts is said in its docstring.
A test class sets the pipeline, its components and inputs, and whether an adapter is loaded; with an adapter, its
zero-initialised parts are set to random values first, so the adapter changes the output (checked by
:meth:`PipelineConformance.test_adapter_changes_output`) and every check runs on an adapter that does something.

Outputs are compared as arrays of shape ``(batch, ...)``: images ``(B, H, W, C)``, videos ``(B, F, H, W, C)`` and
multi-view samples ``(B, V, H, W, C)``; :func:`as_array` turns any output (PIL, lists, tensors) into one.
"""

from __future__ import annotations

import copy
import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

STEPS = 2
SIZE = 16


def as_array(value: Any) -> np.ndarray:
    """Any pipeline output (an array, a tensor, PIL images, nested lists of them) as one float ``np.ndarray``; PIL
    images become ``(H, W, C)`` in [0, 1]."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    if isinstance(value, PIL.Image.Image):
        return np.asarray(value, dtype=np.float32) / 255.0
    if isinstance(value, (list, tuple)):
        return np.stack([as_array(v) for v in value])
    return np.asarray(value, dtype=np.float32)


def perturb_(params, seed: int = 0, std: float = 0.1) -> None:
    """Add seeded ``N(0, std)`` noise to ``params`` in place: zero-initialised adapter parts become non-zero, the rest
    moves a little."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen).to(p) * std)


def ip_adapter_state_dict(unet: torch.nn.Module, image_embed_dim: int, seed: int = 0) -> dict[str, dict]:
    """Random IP-Adapter weights for ``unet`` in the official (h94) nested layout that ``load_ip_adapter`` takes as a
    dict: ``image_proj`` (``proj`` / ``norm``: ``image_embed_dim`` -> 4 tokens) and ``ip_adapter``
    (``{k}.to_{k,v}_ip.weight``, k = 1, 3, 5, ... over the cross-attention processors in ``attn_processors`` order,
    motion modules skipped, as diffusers' loader numbers them)."""
    gen = torch.Generator().manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    num_tokens = 4
    image_proj = {
        "proj.weight": torch.randn(num_tokens * cross_dim, image_embed_dim, generator=gen) * 0.1,
        "proj.bias": torch.randn(num_tokens * cross_dim, generator=gen) * 0.1,
        "norm.weight": torch.ones(cross_dim),
        "norm.bias": torch.zeros(cross_dim),
    }
    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_q.in_features
        for kv in ("k", "v"):
            ip[f"{key_id}.to_{kv}_ip.weight"] = torch.randn(hidden, cross_dim, generator=gen) * 0.3
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


def wrapping_processors(pipe) -> dict[str, object]:
    """``{layer: processor}`` of the adapter processors that wrap a base processor (MV- / I2V-Adapter ``attn1``)."""
    return {
        name: proc for name, proc in pipe.unet.attn_processors.items() if getattr(proc, "wraps_base_processor", False)
    }


def max_diff(a: Any, b: Any) -> float:
    a, b = as_array(a), as_array(b)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max())


class PipelineConformance:
    """diffusers' pipeline conventions, checked on one pipeline (with or without its adapter).

    Subclasses set :attr:`pipeline_class`, :attr:`with_adapter` and implement :meth:`get_components`,
    :meth:`load_adapter` and :meth:`get_inputs`.
    """

    pipeline_class: type
    with_adapter: bool = False
    #: inputs that get one entry per sample in batched calls
    batch_params: tuple[str, ...] = ("prompt",)
    #: the keyword of ``num_images_per_prompt`` (``None``: the pipeline has none)
    per_prompt_param: str | None = "num_images_per_prompt"
    #: files (relative to the saved folder) that hold the adapter after ``save_pretrained``
    adapter_files: tuple[str, ...] = ()
    #: exact save/load round trip (max difference allowed)
    save_load_max_diff: float = 1e-6
    #: ``fuse_qkv_projections()`` is refused (a ``ValueError`` matching this) where the pipeline must differ
    fused_qkv_refused: str | None = None
    #: schedulers a user may swap in
    schedulers: tuple[tuple[type, dict[str, Any]], ...] = (
        (EulerDiscreteScheduler, {}),
        (EulerAncestralDiscreteScheduler, {}),
        (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    )

    # ------------------------------------------------------------------------------------------------ set up
    def get_components(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_adapter(self, pipe) -> None:
        """Attach the adapter to ``pipe`` and make its zero-initialised parts random."""
        raise NotImplementedError

    def get_inputs(self, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def reload_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments for the save/load round trip."""
        return {}

    def make_pipe(self, components: dict[str, Any] | None = None, *, adapter: bool | None = None):
        pipe = self.pipeline_class(**(components if components is not None else self.get_components()))
        pipe.set_progress_bar_config(disable=True)
        if self.with_adapter if adapter is None else adapter:
            self.load_adapter(pipe)
        return pipe

    def run(self, pipe, **overrides) -> np.ndarray:
        inputs = self.get_inputs()
        inputs.update(overrides)
        return as_array(pipe(**inputs)[0])

    def batched_inputs(self, batch_size: int, seed: int = 0) -> dict[str, Any]:
        inputs = self.get_inputs(seed)
        for name in self.batch_params:
            if name in inputs:
                inputs[name] = [inputs[name]] * batch_size
        return inputs

    @property
    def call_parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.pipeline_class.__call__).parameters)

    # ------------------------------------------------------------------------------------------------ checks
    def test_adapter_changes_output(self):
        """With the adapter loaded (random branches) the output differs from the base pipeline's."""
        if not self.with_adapter:
            pytest.skip("no adapter loaded")
        components = self.get_components()
        base = self.make_pipe(copy.deepcopy(components), adapter=False)
        adapted = self.make_pipe(components)
        assert max_diff(self.run(adapted), self.run(base)) > 1e-3

    def test_dict_tuple_outputs_equivalent(self):
        """``return_dict=False`` returns the same first output as the dict form (diffusers: 1e-4)."""
        pipe = self.make_pipe()
        out_dict = pipe(**self.get_inputs())[0]
        out_tuple = pipe(**self.get_inputs(), return_dict=False)[0]
        assert max_diff(out_dict, out_tuple) == 0

    def test_output_types_equivalent(self):
        """``output_type`` "pt", "np" and "pil" hold the same images (pil to 1/255)."""
        pipe = self.make_pipe()
        out_np = self.run(pipe, output_type="np")
        out_pt = np.moveaxis(self.run(pipe, output_type="pt"), -3, -1)
        out_pil = self.run(pipe, output_type="pil")
        assert max_diff(out_np, out_pt) < 1e-6
        assert max_diff(out_np, out_pil) <= 1.0 / 255 + 1e-6

    def test_num_images_per_prompt(self):
        """``B`` prompts x ``num_images_per_prompt`` ``N`` give ``B * N`` outputs."""
        if self.per_prompt_param is None or self.per_prompt_param not in self.call_parameters:
            pytest.skip("the pipeline has no num_images_per_prompt")
        pipe = self.make_pipe()
        for batch_size in (1, 2):
            for per_prompt in (1, 2):
                inputs = self.batched_inputs(batch_size)
                inputs[self.per_prompt_param] = per_prompt
                inputs["num_inference_steps"] = 1
                assert as_array(pipe(**inputs)[0]).shape[0] == batch_size * per_prompt

    def test_inference_batch_single_identical(self):
        """One generator per sample: sample 0 of a batch of 3 (other prompts longer) equals the single call."""
        pipe = self.make_pipe()
        single = self.run(pipe, generator=torch.Generator().manual_seed(0))
        inputs = self.batched_inputs(3)
        if "prompt" in inputs:
            inputs["prompt"] = [self.get_inputs()["prompt"], "a blue sphere", 20 * "very long "]
        inputs["generator"] = [torch.Generator().manual_seed(i) for i in range(3)]
        batch = as_array(pipe(**inputs)[0])
        assert batch.shape[0] == 3
        assert max_diff(batch[:1], single[:1]) < 1e-4
        assert max_diff(batch[1:2], single[:1]) > 1e-4  # another prompt and noise

    def test_callback_inputs(self):
        """``callback_on_step_end`` gets exactly the requested tensors (a subset or ``_callback_tensor_inputs``) and
        what it returns is used: latents set to zero at the last step give zero output latents."""
        pipe = self.make_pipe()
        allowed = list(pipe._callback_tensor_inputs)

        def subset(p, i, t, kwargs):
            assert set(kwargs) == {"latents"}
            return kwargs

        def everything(p, i, t, kwargs):
            assert set(kwargs) == set(allowed)
            return kwargs

        def zero_last(p, i, t, kwargs):
            if i == p.num_timesteps - 1:
                kwargs["latents"] = torch.zeros_like(kwargs["latents"])
            return kwargs

        for callback, names in ((subset, ["latents"]), (everything, allowed)):
            self.run(
                pipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names, output_type="latent"
            )
        out = self.run(
            pipe, callback_on_step_end=zero_last, callback_on_step_end_tensor_inputs=allowed, output_type="latent"
        )
        assert np.abs(out).sum() == 0

    def test_callback_cfg(self):
        """A callback that raises ``pipe._guidance_scale`` each step: the pipeline reads it back (ends at start +
        ``num_timesteps``)."""
        pipe = self.make_pipe()

        def more_guidance(p, i, t, kwargs):
            p._guidance_scale += 1.0
            return kwargs

        self.run(pipe, guidance_scale=2.0, callback_on_step_end=more_guidance)
        assert pipe.guidance_scale == 2.0 + pipe.num_timesteps

    def test_save_load_local(self):
        """``save_pretrained`` then ``from_pretrained`` of the folder gives the same output (exact); with an adapter
        loaded its files are saved beside the base components and loaded back."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp)
            for name in self.adapter_files:
                assert (Path(tmp) / name).is_file() == self.with_adapter, name
            loaded = self.pipeline_class.from_pretrained(tmp, **self.reload_kwargs())
            loaded.set_progress_bar_config(disable=True)
            assert max_diff(self.run(loaded), expected) <= self.save_load_max_diff
            assert max_diff(self.run(pipe), expected) == 0  # saving left the pipeline as it was

    def test_set_default_attn_processor(self):
        """``set_default_attn_processor()`` on every component (as diffusers' tests do first): works with the adapter
        loaded, keeps it, and the output stays (default vs SDPA attention: 1e-4)."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        for component in pipe.components.values():
            if hasattr(component, "set_default_attn_processor"):
                component.set_default_attn_processor()
        assert max_diff(self.run(pipe), expected) < 1e-4

    def test_attention_slicing_forward_pass(self):
        """``enable_attention_slicing(1 | 2)`` leaves the output (diffusers: 1e-3); adapter processors stay."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        for size in (1, 2):
            pipe.enable_attention_slicing(slice_size=size)
            assert max_diff(self.run(pipe), expected) < 1e-3
        pipe.disable_attention_slicing()
        assert max_diff(self.run(pipe), expected) < 1e-5

    def test_fused_qkv_projections(self):
        """``fuse_qkv_projections()``: every base processor is a fused one (adapter processors wrap them), the output
        holds (diffusers: 1e-2); ``unfuse_qkv_projections()`` restores it."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        if self.fused_qkv_refused is not None:
            with pytest.raises(ValueError, match=self.fused_qkv_refused):
                pipe.fuse_qkv_projections()
            assert max_diff(self.run(pipe), expected) == 0  # refused before anything changed
            return
        pipe.fuse_qkv_projections()
        for name, proc in pipe.unet.attn_processors.items():
            base = getattr(proc, "base_processor", proc) if getattr(proc, "wraps_base_processor", False) else proc
            assert type(base).__name__.startswith("Fused"), (name, type(proc).__name__)
        assert max_diff(self.run(pipe), expected) < 1e-4
        pipe.unfuse_qkv_projections()
        assert max_diff(self.run(pipe), expected) < 1e-4

    def test_vae_slicing(self):
        """``vae.enable_slicing()`` decodes a batch of 2 to the same images (diffusers: 1e-2)."""
        pipe = self.make_pipe()
        inputs = self.batched_inputs(2)
        expected = as_array(pipe(**inputs)[0])
        pipe.vae.enable_slicing()
        assert max_diff(pipe(**self.batched_inputs(2))[0], expected) < 1e-4

    def test_vae_tiling(self):
        """``vae.enable_tiling()``: the same images (diffusers: 0.5) and odd latent shapes decode."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        pipe.vae.enable_tiling()
        assert max_diff(self.run(pipe), expected) < 1e-4
        with torch.no_grad():
            for shape in ((1, 4, 73, 97), (1, 4, 65, 49)):
                pipe.vae.decode(torch.zeros(shape))

    def test_cpu_offload_sequence(self):
        """``model_cpu_offload_seq`` names only the pipeline's components, and names every model component that is
        not excluded from offloading (so ``enable_model_cpu_offload`` moves them all)."""
        pipe = self.make_pipe()
        seq = pipe.model_cpu_offload_seq.split("->")
        components = pipe.components
        assert all(name in components for name in seq), seq
        excluded = set(getattr(pipe, "_exclude_from_cpu_offload", []))
        models = {k for k, v in components.items() if isinstance(v, torch.nn.Module) and k not in excluded}
        models -= {"motion_adapter", "safety_checker"}  # merged into the UNet / never on the offload path
        assert models <= set(seq), models - set(seq)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="model CPU offload needs an accelerator")
    def test_model_cpu_offload_forward_pass(self):
        """``enable_model_cpu_offload()`` on a GPU gives the CPU result (diffusers: 2e-4)."""
        pipe = self.make_pipe()
        expected = self.run(pipe)
        pipe.enable_model_cpu_offload()
        assert max_diff(self.run(pipe), expected) < 1e-3

    def test_prompt_embeds(self):
        """``encode_prompt`` in isolation, then ``prompt_embeds`` / ``negative_prompt_embeds`` instead of the prompt,
        give the prompt's output."""
        if "prompt_embeds" not in self.call_parameters:
            pytest.fail(f"{self.pipeline_class.__name__}.__call__ has no `prompt_embeds`")
        pipe = self.make_pipe()
        expected = self.run(pipe)
        inputs = self.get_inputs()
        prompt = inputs.pop("prompt")
        negative = inputs.pop("negative_prompt", None)
        if negative is None and self.call_parameters["negative_prompt"].default is not None:
            negative = self.call_parameters["negative_prompt"].default
        encoded = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True, negative_prompt=negative)
        embeds, negative_embeds = encoded[:2]
        out = pipe(**inputs, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, negative_prompt=None)[0]
        assert max_diff(out, expected) < 1e-5

    def test_generator_list_per_sample(self):
        """A list of one generator per sample (prompts x per-prompt) reproduces each sample's single call."""
        pipe = self.make_pipe()
        inputs = self.batched_inputs(2)
        inputs["generator"] = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
        batch = as_array(pipe(**inputs)[0])
        second = self.run(pipe, generator=torch.Generator().manual_seed(8))
        assert max_diff(batch[1:2], second) < 1e-4

    # ------------------------------------------------------------------------------------------------ IP-Adapter
    #: size of the image embeddings of the test IP-Adapter (diffusers' tests use the cross-attention size)
    ip_adapter_embed_dim: int = 32

    def ip_adapter_embeds(self, cfg: bool = True, seed: int = 0) -> list[torch.Tensor]:
        """One IP-Adapter's embeddings ``(2 or 1, 1, D)`` (negative first under guidance), as diffusers' tests."""
        embeds = torch.randn(1, 1, self.ip_adapter_embed_dim, generator=torch.Generator().manual_seed(seed))
        return [torch.cat([torch.zeros_like(embeds), embeds]) if cfg else embeds]

    def load_test_ip_adapter(self, pipe) -> None:
        pipe.load_ip_adapter(
            ip_adapter_state_dict(pipe.unet, self.ip_adapter_embed_dim), subfolder="", weight_name="",
            image_encoder_folder=None,
        )  # fmt: skip

    def test_ip_adapter(self):
        """diffusers' ``IPAdapterTesterMixin.test_ip_adapter``: ``load_ip_adapter`` works (with the adapter loaded: the
        adapter's processors stay, the same objects), IP-Adapter scale 0 gives the output without an IP-Adapter
        (exact), scale 42 changes it, and ``unload_ip_adapter`` restores the pre-load output (exact) and processors."""
        if "ip_adapter_image_embeds" not in self.call_parameters:
            pytest.fail(f"{self.pipeline_class.__name__}.__call__ has no `ip_adapter_image_embeds`")
        pipe = self.make_pipe()
        expected = self.run(pipe)
        own = wrapping_processors(pipe)
        self.load_test_ip_adapter(pipe)
        assert wrapping_processors(pipe) == own and all(pipe.unet.attn_processors[k] is v for k, v in own.items())
        assert any(type(p).__name__.startswith("IPAdapter") for p in pipe.unet.attn_processors.values())
        pipe.set_ip_adapter_scale(0.0)
        assert max_diff(self.run(pipe, ip_adapter_image_embeds=self.ip_adapter_embeds()), expected) == 0
        pipe.set_ip_adapter_scale(42.0)
        assert max_diff(self.run(pipe, ip_adapter_image_embeds=self.ip_adapter_embeds()), expected) > 1e-3
        pipe.unload_ip_adapter()
        assert all(pipe.unet.attn_processors[k] is v for k, v in own.items())
        assert not any(type(p).__name__.startswith("IPAdapter") for p in pipe.unet.attn_processors.values())
        assert max_diff(self.run(pipe), expected) == 0

    def test_ip_adapter_cfg(self):
        """diffusers' ``test_ip_adapter_cfg``: without guidance (``guidance_scale=1``) one row of embeddings per
        sample is accepted and the embeddings steer the output. (Malformed embeddings are refused by name by our
        MV-Adapter and HiPA pipelines: ``tests/test_ip_adapter_mv_hipa.py``.)"""
        pipe = self.make_pipe()
        self.load_test_ip_adapter(pipe)
        pipe.set_ip_adapter_scale(1.0)
        plain = self.run(pipe, ip_adapter_image_embeds=self.ip_adapter_embeds(cfg=False, seed=1), guidance_scale=1.0)
        other = self.run(pipe, ip_adapter_image_embeds=self.ip_adapter_embeds(cfg=False, seed=2), guidance_scale=1.0)
        assert np.isfinite(plain).all() and max_diff(plain, other) > 1e-4

    def test_scheduler_swap(self):
        """A swapped-in scheduler (Euler, Euler ancestral, DPM-Solver++ with Karras sigmas) is used as given: the
        pipeline keeps ``pipe.scheduler`` and the outputs are finite and differ between schedulers."""
        pipe = self.make_pipe()
        outputs = []
        for cls, kwargs in self.schedulers:
            scheduler = cls.from_config(pipe.scheduler.config, **kwargs)
            pipe.scheduler = scheduler
            out = self.run(pipe)
            assert pipe.scheduler is scheduler
            assert np.isfinite(out).all()
            outputs.append(out)
        assert max_diff(outputs[0], outputs[2]) > 1e-4
