"""I2V-Adapter (arXiv 2312.16693): image-to-video on AnimateDiff with every pretrained weight frozen.

* :mod:`.attention` -- first-frame attention processor for the spatial ``attn1`` layers of a ``UNetMotionModel``;
* :mod:`.content` -- optional content adapter (IP-Adapter-style decoupled cross-attention, diffusers' machinery);
* :mod:`.prior` -- Frame Similarity Prior for the initial latents;
* :mod:`.first_frame` -- the clean first frame (encoding, re-insertion, noising, loss mask), pipeline and trainer;
* :mod:`.loader` -- attach / save / load / unload with strict validation.
"""

from .attention import FrameContext, I2VAdapterAttnProcessor, first_frame_attention, install_num_frames_hook
from .content import ContentAdapter
from .first_frame import (
    add_noise_keep_first_frame,
    clip_latents,
    first_frame_latents,
    first_frame_loss_mask,
    insert_first_frame,
)
from .loader import KIND, I2VAdapter, get_i2v_adapter, i2v_expected_shapes, load_i2v_adapter, save_i2v_adapter
from .prior import SimilarityPrior, apply_similarity_prior, degrade_latents, gaussian_blur

__all__ = [
    "KIND",
    "ContentAdapter",
    "FrameContext",
    "I2VAdapter",
    "I2VAdapterAttnProcessor",
    "SimilarityPrior",
    "add_noise_keep_first_frame",
    "apply_similarity_prior",
    "clip_latents",
    "degrade_latents",
    "first_frame_attention",
    "first_frame_latents",
    "first_frame_loss_mask",
    "gaussian_blur",
    "get_i2v_adapter",
    "i2v_expected_shapes",
    "insert_first_frame",
    "install_num_frames_hook",
    "load_i2v_adapter",
    "save_i2v_adapter",
]
