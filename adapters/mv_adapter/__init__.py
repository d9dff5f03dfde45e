"""MV-Adapter (arXiv 2412.03632): multi-view generation with decoupled attention on a frozen SD/SDXL UNet."""

from .attention import ATTENTION_MODES, MVAdapterAttnProcessor, MVAttentionState, layer_grid
from .camera import (
    Cameras,
    camera_maps,
    convert_c2w_convention,
    default_azimuths,
    default_cameras,
    geometry_maps,
    ray_bundle,
)
from .condition import build_condition_encoder, condition_encoder_config, encode_condition
from .convert import KIND, OFFICIAL_VARIANTS, detect_variant
from .loader import WEIGHT_NAME, MVAdapter, MVAdapterConfig, load_mv_adapter
from .mesh import GeometryMaps, Mesh, bake_texture, export_textured_mesh, geometry_cameras, load_mesh, render_geometry
from .schedule import shifted_snr_scheduler

__all__ = [
    "ATTENTION_MODES",
    "KIND",
    "OFFICIAL_VARIANTS",
    "WEIGHT_NAME",
    "Cameras",
    "GeometryMaps",
    "MVAdapter",
    "MVAdapterAttnProcessor",
    "MVAdapterConfig",
    "MVAttentionState",
    "Mesh",
    "bake_texture",
    "build_condition_encoder",
    "camera_maps",
    "condition_encoder_config",
    "convert_c2w_convention",
    "default_azimuths",
    "default_cameras",
    "detect_variant",
    "encode_condition",
    "export_textured_mesh",
    "geometry_cameras",
    "geometry_maps",
    "layer_grid",
    "load_mesh",
    "load_mv_adapter",
    "ray_bundle",
    "render_geometry",
    "shifted_snr_scheduler",
]
