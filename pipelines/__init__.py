"""diffusers pipelines for the four adapters, plus the registry of the embedded models.

Names are imported lazily, so ``import pipelines`` is cheap and pulls in no model code until a class is used.
"""

from __future__ import annotations

import importlib

import adapters.log_filters  # noqa: F401 -- unactionable library warnings filtered before diffusers is imported

_LAZY = {
    "ResAdapterLoaderMixin": "pipeline_res_adapter",
    "ResAdapterPipeline": "pipeline_res_adapter",
    "ResAdapterXLPipeline": "pipeline_res_adapter",
    "load_res_adapter": "pipeline_res_adapter",
    "MVAdapterPipeline": "auto_pipeline",
    "MVAdapterSDPipeline": "pipeline_mv_adapter_sd",
    "MVAdapterXLPipeline": "pipeline_mv_adapter_sdxl",
    "I2VAdapterPipeline": "pipeline_i2v_adapter",
    "HiPAPipeline": "auto_pipeline",
    "HiPASDPipeline": "pipeline_hipa",
    "HiPAXLPipeline": "pipeline_hipa",
    "load_embedded": "embedded",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
