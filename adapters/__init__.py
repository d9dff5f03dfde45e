"""Adapter modules, attention processors and weight I/O for diffusers UNets.

Public names only; each adapter lives in its own subpackage (``adapters.res_adapter``, ``adapters.mv_adapter``,
``adapters.i2v_adapter``, ``adapters.hipa``).
"""

from . import log_filters  # noqa: F401 -- first: filters unactionable library warnings before diffusers is imported
from .lora import LowRankAdapter, LowRankDelta
from .processors import restore_attn_processors, swap_attn_processors
from .weights import (
    AdapterWeightsError,
    adapter_metadata,
    atomic_directory,
    base_family,
    load_weights,
    save_weights,
    validate_state_dict,
)

__all__ = [
    "AdapterWeightsError",
    "LowRankAdapter",
    "LowRankDelta",
    "adapter_metadata",
    "atomic_directory",
    "base_family",
    "load_weights",
    "restore_attn_processors",
    "save_weights",
    "swap_attn_processors",
    "validate_state_dict",
]
