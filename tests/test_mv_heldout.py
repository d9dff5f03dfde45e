"""benchmarks.mv_heldout: the probe behind the MV-Adapter recipe separates own, swapped and no reference."""

from __future__ import annotations

import torch

from benchmarks.mv_heldout import evaluate


def test_zero_reference_branch_measures_nothing_and_a_trained_one_does(tiny_sd21):
    from pipelines import MVAdapterPipeline

    pipe = MVAdapterPipeline.from_pretrained(tiny_sd21, mv_adapter_config={"use_ref": True})
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_items": 3, "num_views": 2, "size": 16, "timesteps": (500,)}
    fresh = evaluate(pipe, [None], **kwargs)["loaded"]
    for caption in ("full", "empty"):  # zero-initialised output projections: the reference cannot matter
        assert fresh[caption]["own"] == fresh[caption]["swapped"] == fresh[caption]["none"]
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "to_out_ref" in name and name.endswith("weight"):
                param.normal_(0, 0.5)
    moved = evaluate(pipe, [None], **kwargs)["loaded"]
    assert moved["empty"]["own"] != moved["empty"]["swapped"] != moved["empty"]["none"]
