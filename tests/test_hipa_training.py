"""HiPA training on the tiny models: teacher cache, loss goes down, only LoRA weights change, resume, interop."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open

from pipelines.pipeline_hipa import HiPAPipeline
from training.train_hipa import HiPATrainConfig, HiPATrainer, load_prompts

SIZE = 32


class RecordingTrainer(HiPATrainer):
    """Records every training loss."""

    def compute_loss(self, batch):
        loss = super().compute_loss(batch)
        self.__dict__.setdefault("_losses", []).append(float(loss.detach()))
        return loss

    @property
    def losses(self) -> list[float]:
        return self.__dict__.get("_losses", [])


def _config(base, out, cache, **overrides) -> HiPATrainConfig:
    values = {
        "pretrained_model_name_or_path": str(base),
        "output_dir": str(out),
        "teacher_cache_dir": str(cache),
        "resolution": SIZE,
        "num_prompts": 2,
        "teacher_steps": 3,
        "teacher_guidance_scale": 3.0,
        "train_batch_size": 2,  # the whole cache: the same fixed batch every step
        "learning_rate": 3e-3,
        "rank": 4,
        "lora_alpha": 8.0,
        "report_to": "none",
        "seed": 0,
        "checkpointing_steps": 1000,
    }
    values.update(overrides)
    return HiPATrainConfig(**values)


@pytest.fixture(scope="module")
def trained_sd15(tiny_sd15, tmp_path_factory):
    root = tmp_path_factory.mktemp("hipa_train")
    trainer = RecordingTrainer(
        _config(tiny_sd15, root / "run", root / "cache", max_train_steps=16, validation_steps=16, lambda_hf=2.0)
    )
    trainer.train()
    return trainer, root


def test_training_lowers_loss_and_changes_only_lora(trained_sd15, tiny_sd15):
    trainer, root = trained_sd15
    losses = trainer.losses
    assert len(losses) == 16
    assert losses[-1] < 0.9 * losses[0], losses

    fresh = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").state_dict()
    trained = trainer.unet.state_dict()
    lora_keys = [k for k in trained if ".lora_" in k]
    assert lora_keys
    assert any(trained[k].abs().sum() > 0 for k in lora_keys if ".lora_B." in k)  # B left zero-init
    base_keys = {k.replace(".base_layer", "") for k in trained if ".lora_" not in k}
    assert base_keys == set(fresh)
    for key, value in trained.items():
        if ".lora_" not in key:
            assert torch.equal(value, fresh[key.replace(".base_layer", "")]), key
    # the validation grid (base one-step | HiPA one-step | teacher) was written
    assert list((root / "run" / "validation" / "step-16").glob("*.png"))


def test_trained_lora_loads_in_stock_and_hipa_pipelines(trained_sd15, tiny_sd15):
    trainer, root = trained_sd15
    out = root / "run"
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["diffusion_adapters.kind"] == "hipa" and meta["diffusion_adapters.trained_steps"] == "16"
    assert meta["diffusion_adapters.lambda_hf"] == "2.0"

    stock = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    stock.load_lora_weights(out)  # plain diffusers
    assert stock.unet.peft_config["default_0"].lora_alpha == 8.0

    # HiPAPipeline with the trained LoRA reproduces the trainer's one-step student on a cached sample.
    pipe = HiPAPipeline.from_pretrained(tiny_sd15, hipa_lora=out, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    batch = {k: v[:1] for k, v in trainer.cache.tensors.items()}
    with torch.no_grad():
        expected = trainer.student_x0(batch)
    latents = pipe(
        prompt_embeds=batch["prompt_embeds"], latents=batch["noise"], height=SIZE, width=SIZE, output_type="latent"
    ).images
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)


def test_teacher_cache_is_reused_and_resume_is_exact(trained_sd15, tiny_sd15, monkeypatch):
    _, root = trained_sd15

    def no_teacher(self, prompts):
        raise AssertionError("the teacher cache should have been reused")

    # Uninterrupted 4 steps (checkpoint at 2) vs resumed from that checkpoint: same LoRA.
    monkeypatch.setattr(HiPATrainer, "build_teacher_cache", no_teacher)
    full = HiPATrainer(_config(tiny_sd15, root / "full", root / "cache", max_train_steps=4, checkpointing_steps=2))
    full.train()
    resumed = HiPATrainer(
        _config(
            tiny_sd15,
            root / "resumed",
            root / "cache",
            max_train_steps=4,
            resume_from_checkpoint=str(root / "full" / "checkpoint-2"),
        )
    )
    resumed.train()
    a, b = full.adapter_state_dict(), resumed.adapter_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_sdxl_training_smoke(tiny_sdxl, tmp_path):
    trainer = RecordingTrainer(
        _config(
            tiny_sdxl,
            tmp_path / "run",
            tmp_path / "cache",
            max_train_steps=2,
            loss_space="both",
            teacher_scheduler="dpm",
            lambda_edge=0.5,
        )
    )
    trainer.train()
    assert len(trainer.losses) == 2 and all(torch.isfinite(torch.tensor(trainer.losses)))
    assert set(trainer.cache.tensors) >= {"noise", "target", "prompt_embeds", "pooled_prompt_embeds", "add_time_ids"}
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_config_and_prompts(tmp_path):
    with pytest.raises(ValueError, match="lambda_hf"):
        HiPATrainConfig(lambda_hf=-1.0)
    with pytest.raises(ValueError, match="hf_cutoff"):
        HiPATrainConfig(hf_cutoff=0.9)
    with pytest.raises(ValueError, match="loss_space"):
        HiPATrainConfig(loss_space="pixels")
    config = HiPATrainConfig.from_args(["--rank", "2", "--lora_targets", "attention", "--lambda_hf", "0.5"])
    assert config.hipa_config().target_modules == ["to_q", "to_k", "to_v", "to_out.0"] and config.rank == 2
    file = tmp_path / "prompts.txt"
    file.write_text("# comment\na red cube\n\na blue sphere\n")
    assert load_prompts(str(file), 10) == ["a red cube", "a blue sphere"]
    captions = load_prompts(None, 3)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    file.write_text("\n")
    with pytest.raises(ValueError, match="no prompt"):
        load_prompts(str(file), 1)
