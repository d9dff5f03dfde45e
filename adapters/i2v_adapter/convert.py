"""Convert the authors' I2V-Adapter release to safetensors in our layout (one command).

    python -m adapters.i2v_adapter.convert animatediff_v15_v1_ipplus.pth \\
        --ip_adapter IP-Adapter/models/ip-adapter-plus_sd15.bin --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --output_dir i2v_adapter_release --allow_pickle

writes

* ``<output_dir>/motion_adapter/``: the motion modules as a diffusers ``MotionAdapter`` folder;
* ``<output_dir>/i2v_adapter.safetensors``: first-frame projections + content adapter (IP-Adapter-Plus resampler and
  branches), our I2V-Adapter file (``load_i2v_adapter`` / ``from_pretrained(..., i2v_adapter=...)``);
* ``<output_dir>/unet/``: the release's spatial UNet as a ``UNet2DConditionModel`` folder (the base's config).

Use them with ``I2VAdapterPipeline.from_pretrained(base, unet=UNet2DConditionModel.from_pretrained(out / "unet"),
motion_adapter=out / "motion_adapter", i2v_adapter=out / "i2v_adapter.safetensors", image_encoder=...)`` (leave out
``unet=`` to keep the base's spatial UNet). The base is read for its UNet config only (cross-attention ids).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from diffusers.utils import logging

from ..weights import adapter_metadata, atomic_directory, save_weights, validate_state_dict
from .content import content_expected_shapes
from .loader import CONTENT_DIM_KEY, CONTENT_PLUS_KEY, CONTENT_TOKENS_KEY, KIND, i2v_expected_shapes
from .release import read_ip_adapter_file, read_release

logger = logging.get_logger(__name__)

__all__ = ["convert_release", "main"]


def convert_release(
    release: str | os.PathLike,
    ip_adapter: str | os.PathLike,
    base: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    first_frame_query: str = "to_q",
) -> Path:
    """Write the release as ``motion_adapter/``, ``i2v_adapter.safetensors`` and ``unet/`` under ``output_dir``.

    Everything is validated before anything is written; the folder appears complete or not at all.

    Returns:
        ``output_dir``.
    """
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    parts = read_release(release, allow_pickle=allow_pickle)
    image_proj, _ = read_ip_adapter_file(ip_adapter, allow_pickle=allow_pickle)
    config = UNet2DConditionModel.load_config(base, subfolder="unet")
    motion = parts.motion_adapter()
    with torch.device("meta"):  # names and shapes only
        spatial = UNet2DConditionModel.from_config(config)
        unet = UNetMotionModel.from_unet2d(spatial, MotionAdapter(**parts.motion_config), load_weights=False)
    shapes = {k: v.shape for k, v in spatial.state_dict().items()}
    validate_state_dict(parts.spatial, shapes, what="spatial UNet", source=str(release))
    i2v = parts.i2v_state_dict(unet, image_proj, first_frame_query=first_frame_query)
    latents, proj_in = image_proj["latents"], image_proj.get("proj_in.weight")
    dim, tokens, hidden = (int(proj_in.shape[1]) if proj_in is not None else 0), latents.shape[1], latents.shape[2]
    expected = i2v_expected_shapes(unet)
    expected.update(content_expected_shapes(unet, dim, int(tokens), plus_hidden_dims=int(hidden)))
    validate_state_dict(i2v, expected, what="I2V-Adapter", source=str(release))
    meta = adapter_metadata(
        KIND,
        "sd1",
        **{CONTENT_DIM_KEY: dim, CONTENT_TOKENS_KEY: int(tokens), CONTENT_PLUS_KEY: int(hidden)},
        first_frame_query=first_frame_query,
        source=Path(str(release)).name,
    )
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as tmp:
        motion.save_pretrained(tmp / "motion_adapter", safe_serialization=True)
        save_weights(i2v, tmp / "i2v_adapter.safetensors", metadata=meta)
        spatial_model = UNet2DConditionModel.from_config(config)
        spatial_model.load_state_dict(parts.spatial, strict=True)
        spatial_model.save_pretrained(tmp / "unet", safe_serialization=True)
    logger.info("Wrote %s (motion_adapter/, i2v_adapter.safetensors, unet/).", output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.i2v_adapter.convert",
        description="Convert the authors' I2V-Adapter release (animatediff_v15_v1_ipplus.pth) to safetensors.",
    )
    parser.add_argument("release", help="the authors' .pth (or a safetensors with the same keys)")
    parser.add_argument("--ip_adapter", required=True, help="h94/IP-Adapter models/ip-adapter-plus_sd15.bin")
    parser.add_argument("--base", required=True, help="SD 1.5 base folder or hub id (UNet config only)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--allow_pickle", action="store_true", help="allow .pth/.bin (read with weights_only=True)")
    parser.add_argument("--first_frame_query", choices=("to_q", "file"), default="to_q")
    args = parser.parse_args(argv)
    convert_release(
        args.release,
        args.ip_adapter,
        args.base,
        args.output_dir,
        allow_pickle=args.allow_pickle,
        first_frame_query=args.first_frame_query,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
