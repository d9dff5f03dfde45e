"""Shared pytest setup: offline mode (set before anything imports diffusers) and the tiny-model fixtures.

Keep this file minimal; test-specific fixtures belong in the test files that use them.
"""

from __future__ import annotations

import os

# Nothing is ever downloaded: set before diffusers / transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core machine two OpenMP threads
# per process make a 2-step tiny pipeline call 15-30x slower (0.45 s -> 7-13 s measured under load). Subprocesses
# (accelerate launch, scripts) inherit the variables. Override by exporting OMP_NUM_THREADS before running pytest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import tiny_models  # noqa: E402


def _quiet_libraries() -> None:
    """Silence model-loading progress bars and info logs (pipeline denoising bars are per pipeline)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


_quiet_libraries()
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def seeded() -> None:
    """Seed torch's global RNG with 0 for the test."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_sd15() -> Path:
    """SD 1.5-like ``StableDiffusionPipeline`` folder (epsilon, PNDM, cross-attention dim 32)."""
    return tiny_models.tiny_sd15_path()


@pytest.fixture(scope="session")
def tiny_sd21() -> Path:
    """SD 2.1-like ``StableDiffusionPipeline`` folder (v-prediction, linear projection, cross-attention dim 64)."""
    return tiny_models.tiny_sd21_path()


@pytest.fixture(scope="session")
def tiny_sdxl() -> Path:
    """SDXL-like ``StableDiffusionXLPipeline`` folder (two text encoders, text_time, cross-attention dim 96)."""
    return tiny_models.tiny_sdxl_path()


@pytest.fixture(scope="session")
def tiny_animatediff() -> Path:
    """SD 1.5-like base folder with a ``motion_adapter/`` subfolder (``MotionAdapter``)."""
    return tiny_models.tiny_animatediff_path()


@pytest.fixture(scope="session")
def tiny_t2i_adapter() -> Path:
    """``T2IAdapter`` (full_adapter, RGB input) folder for the SD 1.5-like UNet."""
    return tiny_models.tiny_t2i_adapter_path("full_adapter")


@pytest.fixture(scope="session")
def tiny_t2i_adapter_xl() -> Path:
    """``T2IAdapter`` (full_adapter_xl, RGB input) folder for the SDXL-like UNet."""
    return tiny_models.tiny_t2i_adapter_path("full_adapter_xl")


@pytest.fixture(scope="session")
def tiny_controlnet() -> Path:
    """``ControlNetModel`` folder made from the SD 1.5-like UNet."""
    return tiny_models.tiny_controlnet_path("sd15")


@pytest.fixture(scope="session")
def tiny_controlnet_xl() -> Path:
    """``ControlNetModel`` folder made from the SDXL-like UNet."""
    return tiny_models.tiny_controlnet_path("sdxl")


@pytest.fixture(scope="session")
def tiny_ip_adapter() -> Path:
    """h94/IP-Adapter-like folder: ``models/`` (sd15, sd21) and ``sdxl_models/`` weights + ``image_encoder/``."""
    return tiny_models.tiny_ip_adapter_path()


@pytest.fixture(scope="module")
def sd15_unet(tiny_sd15):
    """The tiny SD 1.5 UNet in eval mode, one instance per test module (tests may attach adapters to it)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").eval()


@pytest.fixture(scope="module")
def motion_unet(tiny_animatediff):
    """A tiny ``UNetMotionModel`` in eval mode, one instance per test module."""
    return tiny_models.tiny_motion_unet().eval()
