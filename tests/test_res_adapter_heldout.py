"""The held-out loss used to pick the embedded ResAdapter: a no-op adapter measures exactly the base, a real one
does not, and the pipeline is left as it was."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from benchmarks.bench_res_adapter import random_res_adapter
from benchmarks.res_adapter_heldout import compare, heldout_loss, main

SIZES = ((16, 16), (16, 32))
SMALL = {"num_items": 2, "timesteps": (100, 900)}


@pytest.fixture(scope="module")
def pipe(tiny_sd15):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _identity_adapter(unet) -> dict[str, torch.Tensor]:
    sd = random_res_adapter(unet)
    for key, value in sd.items():
        if key.endswith("lora_up.weight"):
            sd[key] = torch.zeros_like(value)
        elif not key.startswith("lora_unet_"):
            sd[key] = unet.get_submodule(key.rsplit(".", 1)[0]).get_parameter(key.rsplit(".", 1)[1]).detach().clone()
    return sd


def test_heldout_loss_is_deterministic_and_per_item(pipe):
    first = heldout_loss(pipe, (16, 32), **SMALL)
    second = heldout_loss(pipe, (16, 32), **SMALL)
    assert first.shape == (2,)
    assert torch.isfinite(first).all() and (first > 0).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, heldout_loss(pipe, (16, 32), empty_prompt=True, **SMALL))


def test_identity_adapter_measures_the_base_and_a_trained_one_differs(pipe):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rows = compare(pipe, [_identity_adapter(pipe.unet), random_res_adapter(pipe.unet, seed=3)], SIZES, **SMALL)
    assert {r["arm"] for r in rows} == {"base", "adapter 0", "adapter 1"}
    assert len(rows) == 3 * len(SIZES) * 2
    for row in rows:
        if row["arm"] in ("base", "adapter 0"):
            assert row["diff"] == 0.0, row
    assert all(r["diff"] != 0.0 for r in rows if r["arm"] == "adapter 1")
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_command_rejects_bad_sizes_and_counts(tmp_path):
    with pytest.raises(SystemExit):
        main(["x", "--sizes", "0x16"])
    with pytest.raises(SystemExit):
        main(["x", "--items", "0"])
