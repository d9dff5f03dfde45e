"""Auto pipelines for the adapters that come in an SD 1.x / 2.x and an SDXL variant, as diffusers' ``AutoPipelineFor*``.

:class:`MVAdapterPipeline` and :class:`HiPAPipeline` are factories, not :class:`~diffusers.DiffusionPipeline`
subclasses: they cannot be instantiated, and their ``from_pretrained`` / ``from_pipe`` classmethods return an instance
of the variant that fits the base (read from its config, no weights loaded to decide):

==============================  =======================================  =======================================
factory                         SD 1.x / 2.x base                        SDXL base
==============================  =======================================  =======================================
:class:`MVAdapterPipeline`      :class:`~.MVAdapterSDPipeline`           :class:`~.MVAdapterXLPipeline`
:class:`HiPAPipeline`           :class:`~.HiPASDPipeline`                :class:`~.HiPAXLPipeline`
==============================  =======================================  =======================================

Example::

    base = "stabilityai/stable-diffusion-xl-base-1.0"
    mv = MVAdapterPipeline.from_pretrained(base, mv_adapter="mvadapter_t2mv_sdxl.safetensors")
    hipa = HiPAPipeline.from_pipe(mv, hipa_lora="hipa_lora/")  # same components, one-step sampling
"""

from __future__ import annotations

import os
from typing import Any

from diffusers.utils import logging

from adapters.deprecation import deprecated_kwarg
from adapters.hipa.loader import DEFAULT_ADAPTER_NAME

from .checks import validate_numbers
from .pipeline_hipa import HiPASDPipeline, HiPAXLPipeline
from .pipeline_mv_adapter import _mv_adapter_kwargs
from .pipeline_mv_adapter_sd import MVAdapterSDPipeline
from .pipeline_mv_adapter_sdxl import MVAdapterXLPipeline
from .utils import is_sdxl

logger = logging.get_logger(__name__)

__all__ = ["HiPAPipeline", "MVAdapterPipeline"]

_CONFIG_KWARGS = ("cache_dir", "local_files_only", "revision", "token")


def _refuse_init(cls: type, variants: str) -> None:
    raise OSError(
        f"{cls.__name__} is a factory, not a pipeline: create one with `{cls.__name__}.from_pretrained(base, ...)` "
        f"or `{cls.__name__}.from_pipe(pipeline, ...)`, or instantiate {variants} directly."
    )


def _pipeline_is_sdxl(pipeline: Any) -> bool:
    """Whether a loaded pipeline's components are SDXL's (it has a ``text_encoder_2`` slot)."""
    return "text_encoder_2" in pipeline.components


class MVAdapterPipeline:
    r"""Factory for the MV-Adapter pipelines: :class:`~.MVAdapterSDPipeline` on an SD 1.x / 2.x base,
    :class:`~.MVAdapterXLPipeline` on an SDXL base (decided from the base's ``model_index.json``).

    Like diffusers' ``AutoPipelineFor*`` it is not a :class:`~diffusers.DiffusionPipeline` and ``__init__`` raises
    ``OSError``: use :meth:`from_pretrained` or :meth:`from_pipe`. Both take the adapter keywords of
    :meth:`~.MVAdapterPipelineMixin.from_pretrained` (``mv_adapter``, ``mv_adapter_weight_name``,
    ``mv_adapter_config``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        _refuse_init(type(self), "MVAdapterSDPipeline / MVAdapterXLPipeline")

    @staticmethod
    def variant_class(
        pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> type[MVAdapterSDPipeline] | type[MVAdapterXLPipeline]:
        """The pipeline class for a base (from its config files; hub look-ups take ``cache_dir``, ``revision``,
        ``token``, ``local_files_only`` from ``kwargs``)."""
        config_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        return MVAdapterXLPipeline if is_sdxl(pretrained_model_name_or_path, **config_kwargs) else MVAdapterSDPipeline

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        mv_adapter: str | os.PathLike | dict | bool | None = None,
        mv_adapter_weight_name: str | None = None,
        mv_adapter_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Load the base with the matching variant and attach the adapter (the adapter keywords are those of
        :meth:`~.MVAdapterPipelineMixin.from_pretrained`; other ``kwargs`` go to diffusers' ``from_pretrained``)."""
        mv_adapter, mv_adapter_weight_name, mv_adapter_config = _mv_adapter_kwargs(
            kwargs, mv_adapter, mv_adapter_weight_name, mv_adapter_config
        )
        variant = cls.variant_class(pretrained_model_name_or_path, **kwargs)
        return variant.from_pretrained(
            pretrained_model_name_or_path,
            *args,
            mv_adapter=mv_adapter,
            mv_adapter_weight_name=mv_adapter_weight_name,
            mv_adapter_config=mv_adapter_config,
            **kwargs,
        )

    @classmethod
    def from_pipe(
        cls,
        pipeline: Any,
        *,
        mv_adapter: str | os.PathLike | dict | bool | None = None,
        mv_adapter_weight_name: str | None = None,
        mv_adapter_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """The matching variant on a loaded SD / SDXL pipeline's components (shared, not copied; diffusers'
        ``from_pipe``, which takes component overrides in ``kwargs``).

        Args:
            mv_adapter: ``None``: the MV-Adapter of ``pipeline`` when it has one (shared, since the UNet is), else a
                fresh zero-initialised adapter; a weight file / folder / state dict to load; ``False``: none.
            mv_adapter_weight_name: file name inside an ``mv_adapter`` folder.
            mv_adapter_config: :class:`~adapters.mv_adapter.MVAdapterConfig` overrides.

        Raises:
            ValueError: ``pipeline`` holds an MV-Adapter and ``mv_adapter`` is not ``None`` (its UNet would hold two).
        """
        mv_adapter, mv_adapter_weight_name, mv_adapter_config = _mv_adapter_kwargs(
            kwargs, mv_adapter, mv_adapter_weight_name, mv_adapter_config
        )
        source_adapter = getattr(pipeline, "mv_adapter", None)
        if source_adapter is not None and mv_adapter is not None:
            raise ValueError(
                f"`mv_adapter`={mv_adapter!r}: the pipeline's UNet already holds an MV-Adapter, which the new pipeline "
                "shares with `mv_adapter=None`; call `pipeline.unload_mv_adapter()` first to load another or none."
            )
        variant = MVAdapterXLPipeline if _pipeline_is_sdxl(pipeline) else MVAdapterSDPipeline
        pipe = variant.from_pipe(pipeline, **kwargs)
        overrides = dict(mv_adapter_config or {})
        if source_adapter is not None:
            pipe.mv_adapter = source_adapter
        elif mv_adapter is None:
            logger.info("No MV-Adapter given: attaching a fresh zero-initialised adapter (output == base).")
            pipe.init_mv_adapter(**overrides)
        elif mv_adapter is not False:
            pipe.load_mv_adapter(mv_adapter, weight_name=mv_adapter_weight_name, **overrides)
        return pipe


class HiPAPipeline:
    r"""Factory for the HiPA one-step pipelines: :class:`~.HiPASDPipeline` on an SD 1.x / 2.x base,
    :class:`~.HiPAXLPipeline` on an SDXL base (decided from the base's config).

    Like diffusers' ``AutoPipelineFor*`` it is not a :class:`~diffusers.DiffusionPipeline` and ``__init__`` raises
    ``OSError``: use :meth:`from_pretrained` or :meth:`from_pipe`. Both apply ``preset`` (default ``"hipa"``) and,
    when given, load ``hipa_lora`` (a HiPA or other few-step LoRA in diffusers format: file, folder or state dict)
    as ``adapter_name`` with weight ``hipa_lora_scale``. ``lora`` / ``lora_scale`` are their deprecated names.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        _refuse_init(type(self), "HiPASDPipeline / HiPAXLPipeline")

    @staticmethod
    def _lora_kwargs(kwargs: dict[str, Any], hipa_lora: Any, hipa_lora_scale: float) -> tuple[Any, float]:
        """The deprecated ``lora`` / ``lora_scale`` taken out of ``kwargs``; the warning points at the caller of
        ``from_pretrained`` / ``from_pipe`` (behind their ``validate_numbers`` wrapper)."""
        hipa_lora = deprecated_kwarg(kwargs, "lora", "hipa_lora", hipa_lora, stacklevel=6)
        hipa_lora_scale = deprecated_kwarg(
            kwargs, "lora_scale", "hipa_lora_scale", hipa_lora_scale, default=1.0, stacklevel=6
        )
        return hipa_lora, hipa_lora_scale

    @classmethod
    @validate_numbers
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        hipa_lora: str | os.PathLike | dict | None = None,
        hipa_lora_scale: float = 1.0,
        preset: str | None = "hipa",
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        **kwargs: Any,
    ) -> HiPASDPipeline | HiPAXLPipeline:
        """Load a base model with the matching HiPA pipeline class; see the class docstring (other ``kwargs`` go to
        diffusers' ``from_pretrained``)."""
        hipa_lora, hipa_lora_scale = cls._lora_kwargs(kwargs, hipa_lora, hipa_lora_scale)
        config_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        pipeline_cls = HiPAXLPipeline if is_sdxl(pretrained_model_name_or_path, **config_kwargs) else HiPASDPipeline
        pipe = pipeline_cls.from_pretrained(
            pretrained_model_name_or_path,
            hipa_lora=hipa_lora,
            hipa_lora_scale=hipa_lora_scale,
            adapter_name=adapter_name,
            **kwargs,
        )
        if preset is not None:
            pipe.set_preset(preset)
        return pipe

    @classmethod
    @validate_numbers
    def from_pipe(
        cls,
        pipeline: Any,
        *,
        hipa_lora: str | os.PathLike | dict | None = None,
        hipa_lora_scale: float = 1.0,
        preset: str | None = "hipa",
        adapter_name: str = DEFAULT_ADAPTER_NAME,
        **kwargs: Any,
    ) -> HiPASDPipeline | HiPAXLPipeline:
        """Wrap a loaded SD / SDXL pipeline's components (shared, not copied; LoRAs already on its UNet stay) in the
        matching HiPA class; see the class docstring."""
        hipa_lora, hipa_lora_scale = cls._lora_kwargs(kwargs, hipa_lora, hipa_lora_scale)
        if kwargs:
            raise TypeError(f"HiPAPipeline.from_pipe() got an unexpected keyword argument {next(iter(kwargs))!r}.")
        pipeline_cls = HiPAXLPipeline if _pipeline_is_sdxl(pipeline) else HiPASDPipeline
        expected = set(pipeline_cls._get_signature_keys(pipeline_cls)[0]) | set(
            pipeline_cls._get_signature_keys(pipeline_cls)[1]
        )
        pipe = pipeline_cls(**{k: v for k, v in pipeline.components.items() if k in expected})
        if preset is not None:
            pipe.set_preset(preset)
        if hipa_lora is not None:
            pipe.load_hipa_lora(hipa_lora, adapter_name=adapter_name, scale=hipa_lora_scale)
        return pipe
