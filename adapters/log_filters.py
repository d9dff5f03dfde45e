"""Filters for library warnings a user of this suite cannot act on; every other warning stays.

Each filter is attached to the logger that emits the message (its source), and matches that one message only:

- transformers (``transformers.utils.import_utils``): "`CLIPImageProcessor` requires torchvision (not installed);
  falling back to `CLIPImageProcessorPil` ..." -- the PIL image processor is what the suite uses; torchvision is not
  a dependency.
- diffusers (``diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion`` and its SDXL / AnimateDiff kin):
  "You have disabled the safety checker for <class> by passing `safety_checker=None` ..." -- the embedded and tiny
  models have no safety checker to enable.
- diffusers (``diffusers.loaders.lora_base`` / ``diffusers.loaders.peft``): "No LoRA keys associated to
  CLIPTextModel found with the prefix='text_encoder' ..." -- UNet-only LoRAs (HiPA, LCM, Hyper-SD) have no text
  encoder keys by design.
- diffusers (``diffusers.models.modeling_utils``): "There are modules in <Model> that should be kept in float32: []"
  -- only with an empty list, i.e. no module is affected (a non-empty list is a real warning and stays).

Not here: accelerate's "The following values were not passed to `accelerate launch` and had defaults used instead"
is logged by the ``accelerate launch`` process itself, before our script starts, so no filter of ours can reach it.
``training/configs/accelerate_single.yaml`` spells those defaults out (``accelerate launch --config_file
training/configs/accelerate_single.yaml -q -m training.train_<adapter>``; ``-q`` also drops the launcher's own
traceback when the script exits with an error), tested in ``tests/test_readme_training.py``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["UNACTIONABLE", "filter_unactionable_warnings"]

#: logger name -> pattern of the one message filtered there.
UNACTIONABLE: dict[str, re.Pattern[str]] = {
    "transformers.utils.import_utils": re.compile(r"requires torchvision \(not installed\); falling back to"),
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion": re.compile(
        r"You have disabled the safety checker"
    ),
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl": re.compile(
        r"You have disabled the safety checker"
    ),
    "diffusers.pipelines.pipeline_utils": re.compile(r"You have disabled the safety checker"),
    "diffusers.loaders.lora_base": re.compile(r"No LoRA keys associated to CLIPTextModel"),
    "diffusers.loaders.peft": re.compile(r"No LoRA keys associated to CLIPTextModel"),
    "diffusers.loaders.lora_pipeline": re.compile(r"No LoRA keys associated to CLIPTextModel"),
    "diffusers.models.modeling_utils": re.compile(r"should be kept in float32: \[\]"),
}


class _DropMessage(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def filter_unactionable_warnings() -> None:
    """Attach the :data:`UNACTIONABLE` filters to their loggers (idempotent)."""
    for name, pattern in UNACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))


filter_unactionable_warnings()  # on import: ``adapters`` (and so ``pipelines``, ``training``) imports this first
