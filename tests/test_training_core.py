"""The shared training core on the tiny SD 1.5-like UNet with a toy adapter.

The toy adapter is a zero-initialised low-rank residual from the UNet's input sample to its output
(``up(down(sample))`` added to ``conv_out``'s output, attached by forward hooks), held outside the UNet as ``trainer.adapter`` like the real adapters' hook-based
layers. The data are fixed random latents and text states.

This module is also a train script (used by tests/test_training_ddp.py)::

    accelerate launch --cpu --num_processes 2 -m tests.test_training_core --pretrained_model_name_or_path DIR ...
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from training.core import (
    AdapterTrainer,
    NonFiniteLossError,
    TrainConfig,
    diffusion_loss,
    get_target,
    latest_checkpoint,
    main,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
)

LATENT = 8  # latent side: 8x8 keeps a step in the tens of milliseconds


# ----------------------------------------------------------------------------------------------------------------------
# the toy adapter trainer
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ToyConfig(TrainConfig):
    num_examples: int = field(default=8, metadata={"help": "Synthetic examples."})
    toy_rank: int = field(default=4, metadata={"help": "Rank of the toy residual."})
    nan_at_step: int | None = field(default=None, metadata={"help": "Return a NaN loss at this step (test)."})
    crash_at_step: int | None = field(default=None, metadata={"help": "Raise at this step (test)."})
    record_indices: bool = field(default=False, metadata={"help": "Write the example indices each rank saw."})
    pause_at_step: int | None = field(
        default=None, metadata={"help": "Write output_dir/paused and sleep at this step, to be killed (test)."}
    )
    pause_in_checkpoint: bool = field(
        default=False, metadata={"help": "Pause inside the checkpoint write of pause_at_step instead (test)."}
    )


class ToyLatents(Dataset):
    """Fixed random ``latents (4, 8, 8)`` and ``encoder_hidden_states (4, 32)``; item ``index`` for bookkeeping."""

    def __init__(self, n: int, seed: int = 123):
        g = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, 4, LATENT, LATENT, generator=g)
        self.states = torch.randn(n, 4, 32, generator=g)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"latents": self.latents[i], "encoder_hidden_states": self.states[i], "index": i}


class InjectedCrash(RuntimeError):
    pass


class ToyTrainer(AdapterTrainer):
    """Toy adapter: zero-init low-rank residual on the tiny UNet's conv_out."""

    config_class = ToyConfig
    adapter_kind = "toy"

    def build_models(self) -> None:
        self.load_components("unet", "noise_scheduler")
        c = self.unet.conv_in.in_channels
        r = self.config.toy_rank
        self.adapter = nn.ModuleDict({"down": nn.Conv2d(c, r, 1, bias=False), "up": nn.Conv2d(r, c, 1, bias=False)})
        nn.init.normal_(self.adapter["down"].weight, std=0.5)
        nn.init.zeros_(self.adapter["up"].weight)
        # residual from the UNet's input sample to its output: out + up(down(sample))
        inputs: dict[str, torch.Tensor] = {}
        self.unet.conv_in.register_forward_pre_hook(lambda module, args: inputs.__setitem__("sample", args[0]))
        self.unet.conv_out.register_forward_hook(
            lambda module, args, out: out + self.adapter["up"](self.adapter["down"](inputs["sample"]))
        )
        self.seen_indices: list[list[int]] = []

    def trainable_parameters(self):
        return list(self.adapter.named_parameters())

    def adapter_state_dict(self):
        return {k: v.detach().clone() for k, v in self.adapter.state_dict().items()}

    def load_adapter_state_dict(self, sd):
        self.adapter.load_state_dict(sd)

    def build_dataset(self):
        return ToyLatents(self.config.num_examples)

    def compute_loss(self, batch):
        cfg = self.config
        step = self.global_step + 1
        if cfg.crash_at_step == step:
            raise InjectedCrash(f"injected crash at step {step}")
        if cfg.pause_at_step == step and not cfg.pause_in_checkpoint:
            self._pause()
        if cfg.record_indices:
            self.seen_indices.append([int(i) for i in batch["index"]])
        latents = batch["latents"]
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = sample_timesteps(latents.shape[0], self.noise_scheduler, latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=batch["encoder_hidden_states"]).sample
        target = get_target(self.noise_scheduler, latents, noise, timesteps)
        loss = diffusion_loss(pred, target, timesteps, self.noise_scheduler, cfg.snr_gamma)
        if cfg.nan_at_step == step:
            loss = loss * float("nan")
        return loss

    def _pause(self) -> None:
        (Path(self.config.output_dir) / "paused").write_text(str(self.global_step))
        time.sleep(600)  # the test kills the process here

    def _save_state_hook(self, models, weights, output_dir):
        super()._save_state_hook(models, weights, output_dir)
        if self.config.pause_in_checkpoint and self.config.pause_at_step == self.global_step:
            self._pause()  # killed with the adapter written but the optimizer, RNG states and marker not yet

    def train(self) -> None:
        super().train()
        if self.config.record_indices:  # per-rank evidence for the DDP test
            rank = self.accelerator.process_index
            out = Path(self.config.output_dir) / f"rank{rank}.json"
            sd = {k: v.flatten().tolist() for k, v in self.adapter_state_dict().items()}
            out.write_text(json.dumps({"indices": self.seen_indices, "adapter": sd}))


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_config(model: Path, out: Path, **overrides) -> ToyConfig:
    values = dict(
        pretrained_model_name_or_path=str(model),
        output_dir=str(out),
        seed=0,
        train_batch_size=2,
        num_examples=6,
        learning_rate=1e-2,
        report_to="none",
        checkpointing_steps=1000,
        max_train_steps=4,
        mixed_precision="no",
    )
    values.update(overrides)
    return ToyConfig(**values)


def run(model: Path, out: Path, **overrides) -> ToyTrainer:
    _reset_accelerate()
    trainer = ToyTrainer(make_config(model, out, **overrides))
    trainer.train()
    return trainer


def final_adapter(out: Path) -> dict[str, torch.Tensor]:
    from adapters.weights import load_weights

    return load_weights(out / "adapter_model.safetensors")[0]


@torch.no_grad()
def fixed_loss(trainer: ToyTrainer) -> float:
    """The toy loss on the first two examples with fixed noise and timesteps."""
    data = ToyLatents(trainer.config.num_examples)
    latents, states = data.latents[:2], data.states[:2]
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.tensor([100, 600])
    noisy = trainer.noise_scheduler.add_noise(latents, noise, timesteps)
    pred = trainer.unet(noisy, timesteps, encoder_hidden_states=states).sample
    return float(diffusion_loss(pred, noise))


@pytest.fixture(autouse=True)
def _clean_accelerate():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the CPU is shared
    yield
    torch.set_num_threads(threads)
    _reset_accelerate()


# ----------------------------------------------------------------------------------------------------------------------
# (a) (b) (d): training lowers the loss, leaves the base bitwise unchanged, saves only adapter keys
# ----------------------------------------------------------------------------------------------------------------------
def test_training_lowers_loss_and_keeps_base_frozen(tiny_sd15, tmp_path):
    from diffusers import UNet2DConditionModel

    _reset_accelerate()
    trainer = ToyTrainer(make_config(tiny_sd15, tmp_path / "run", num_examples=2, max_train_steps=30))
    # the zero-initialised toy adapter leaves the base output as it is: loss before == base loss
    trainer.train()
    after = fixed_loss(trainer)
    with torch.no_grad():
        trainer.adapter["up"].weight.zero_()
    before = fixed_loss(trainer)
    assert after < 0.9 * before, (before, after)

    # (b) every frozen base tensor is bitwise what is on disk
    reference = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet").state_dict()
    trained = trainer.unet.state_dict()
    assert reference.keys() == trained.keys()
    changed = [k for k in reference if not torch.equal(reference[k], trained[k])]
    assert not changed, changed[:5]
    assert all(not p.requires_grad for p in trainer.unet.parameters())


def test_checkpoint_and_final_file_hold_only_adapter_keys(tiny_sd15, tmp_path):
    from adapters.weights import load_weights

    out = tmp_path / "run"
    trainer = run(tiny_sd15, out, max_train_steps=3, checkpointing_steps=2)
    expected = {"down.weight", "up.weight"}
    ckpt = out / "checkpoint-2"
    assert ckpt.is_dir()
    sd, meta = load_weights(ckpt / "adapter_model.safetensors")
    assert set(sd) == expected
    assert meta["diffusion_adapters.kind"] == "toy"
    # nothing else of the models in the checkpoint: no model weight file of any format
    names = {p.name for p in ckpt.iterdir()}
    assert not [n for n in names if n.startswith(("model", "pytorch_model"))], names
    total = sum(p.stat().st_size for p in ckpt.iterdir())
    unet_bytes = sum(p.numel() * p.element_size() for p in trainer.unet.parameters())
    assert total < unet_bytes / 4, (total, unet_bytes)
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2

    sd, meta = load_weights(out / "adapter_model.safetensors")
    assert set(sd) == expected
    assert meta["diffusion_adapters.base_family"] == "sd1"
    assert meta["diffusion_adapters.kind"] == "toy"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


# ----------------------------------------------------------------------------------------------------------------------
# (c) resume == uninterrupted
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "gradient_accumulation_steps": 2,
            "num_examples": 10,
            "use_ema": True,
            "ema_decay": 0.9,
            "snr_gamma": 5.0,
            "noise_offset": 0.05,
        },
    ],
    ids=["plain", "accum-ema-snr"],
)
def test_resume_matches_uninterrupted_run(tiny_sd15, tmp_path, extra):
    # plain: 3 batches per epoch, crash at 6, resume at 4 (epoch 1, batch 1); accum: 5 batches = 3 steps per epoch
    # (the last one a single micro-batch), crash at 4, resume at 2 (epoch 0, after 4 batches)
    common = dict(
        max_train_steps=7, checkpointing_steps=2, lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=5e-3, **extra
    )
    run(tiny_sd15, tmp_path / "a", **common)
    reference = final_adapter(tmp_path / "a")

    crash = 6 if not extra else 4
    with pytest.raises(InjectedCrash):
        run(tiny_sd15, tmp_path / "b", crash_at_step=crash, **common)
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()
    assert latest_checkpoint(tmp_path / "b").name == f"checkpoint-{crash - 2}"
    resumed = run(tiny_sd15, tmp_path / "b", resume_from_checkpoint="latest", **common)
    assert resumed.global_step == 7
    got = final_adapter(tmp_path / "b")
    assert got.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=0, atol=1e-6)
    assert torch.count_nonzero(reference["up.weight"]) > 0


# ----------------------------------------------------------------------------------------------------------------------
# (e) NaN loss, (f) pruning
# ----------------------------------------------------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_sd15, tmp_path):
    from adapters.weights import load_weights

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b") as info:
        run(tiny_sd15, out, max_train_steps=8, checkpointing_steps=2, nan_at_step=5)
    assert info.value.step == 5
    assert info.value.last_checkpoint == out / "checkpoint-4"
    assert "checkpoint-4" in str(info.value)
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "adapter_model.safetensors").exists()
    good, _ = load_weights(out / "checkpoint-4" / "adapter_model.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())
    # the checkpoint is the 4-step state: an uninterrupted 4-step run (constant lr) ends at the same weights
    run(tiny_sd15, tmp_path / "four", max_train_steps=4)
    for key, value in final_adapter(tmp_path / "four").items():
        torch.testing.assert_close(good[key], value, rtol=0, atol=1e-6)
    # and it resumes
    trainer = run(tiny_sd15, out, max_train_steps=8, checkpointing_steps=2, resume_from_checkpoint="latest")
    assert trainer.global_step == 8


def test_checkpoints_total_limit_prunes_oldest(tiny_sd15, tmp_path):
    out = tmp_path / "run"
    (out / ".checkpoint-99.tmp").mkdir(parents=True)  # left behind by a killed run: removed at start
    (out / "checkpoint-98").mkdir()  # incomplete (no trainer_state.json): never picked, never counted
    run(tiny_sd15, out, max_train_steps=5, checkpointing_steps=1, checkpoints_total_limit=2)
    names = sorted(p.name for p in out.iterdir() if "checkpoint" in p.name)
    assert names == ["checkpoint-4", "checkpoint-5", "checkpoint-98"]
    assert latest_checkpoint(out).name == "checkpoint-5"


def test_resume_paths(tiny_sd15, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        run(tiny_sd15, tmp_path / "a", resume_from_checkpoint=str(tmp_path / "no-such-checkpoint"))
    # "latest" without any checkpoint starts a fresh run; an explicit folder name is looked up in output_dir
    trainer = run(tiny_sd15, tmp_path / "b", resume_from_checkpoint="latest", max_train_steps=2, checkpointing_steps=1)
    assert trainer.global_step == 2
    trainer = run(tiny_sd15, tmp_path / "b", resume_from_checkpoint="checkpoint-1", max_train_steps=3)
    assert trainer.global_step == 3


# ----------------------------------------------------------------------------------------------------------------------
# (g) config: YAML/TOML + CLI overrides
# ----------------------------------------------------------------------------------------------------------------------
def test_config_from_yaml_with_cli_override(tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(
        "learning_rate: 1e-3\n"  # YAML reads this as a string; it is coerced to float
        "train_batch_size: 4\n"
        "center_crop: false\n"
        "validation_prompts: [a red cube, a blue ball]\n"
        "toy_rank: 8\n"
    )
    cfg = ToyConfig.from_args(["--config", str(cfg_file), "--train_batch_size", "2", "--center_crop", "--seed", "3"])
    assert cfg.learning_rate == pytest.approx(1e-3)
    assert cfg.train_batch_size == 2  # CLI wins
    assert cfg.center_crop is True
    assert cfg.validation_prompts == ["a red cube", "a blue ball"]
    assert cfg.toy_rank == 8  # subclass field from the file
    assert cfg.seed == 3
    assert cfg.mixed_precision is None

    toml_file = tmp_path / "train.toml"
    toml_file.write_text('lr_scheduler = "cosine"\nmax_train_steps = 10\nsnr_gamma = 5.0\n')
    cfg = ToyConfig.from_args(["--config", str(toml_file), "--no-center_crop"])
    assert (cfg.lr_scheduler, cfg.max_train_steps, cfg.snr_gamma, cfg.center_crop) == ("cosine", 10, 5.0, False)


def test_config_errors_name_the_option(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 1.0\n")
    with pytest.raises(ValueError, match="learning_rat"):
        ToyConfig.from_args(["--config", str(bad)])
    bad.write_text("train_batch_size: two\n")
    with pytest.raises(ValueError, match="train_batch_size"):
        ToyConfig.from_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        TrainConfig(gradient_accumulation_steps=0)
    with pytest.raises(SystemExit):
        ToyConfig.from_args(["--lr_scheduler", "sometimes"])
    assert "lr_scheduler" in capsys.readouterr().err


def test_shipped_configs_parse():
    import yaml

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    cfg = TrainConfig.from_args(["--config", str(configs / "example_train.yaml"), "--learning_rate", "3e-5"])
    assert cfg.learning_rate == pytest.approx(3e-5) and cfg.snr_gamma == 5.0 and cfg.resume_from_checkpoint == "latest"
    kinds = {
        name: yaml.safe_load((configs / f"{name}.yaml").read_text())["distributed_type"]
        for name in ("accelerate_ddp", "accelerate_deepspeed_zero2", "accelerate_fsdp")
    }
    assert kinds == {
        "accelerate_ddp": "MULTI_GPU",
        "accelerate_deepspeed_zero2": "DEEPSPEED",
        "accelerate_fsdp": "FSDP",
    }
    fsdp = yaml.safe_load((configs / "accelerate_fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_use_orig_params"] is True  # frozen base + trainable adapter in the same modules


def test_bf16_gradient_checkpointing_scale_lr(tiny_sd15, tmp_path):
    trainer = run(
        tiny_sd15,
        tmp_path / "run",
        max_train_steps=2,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        scale_lr=True,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
    )
    assert trainer.weight_dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in trainer.unet.parameters())  # frozen base in the weight dtype
    assert all(p.dtype == torch.float32 for p in trainer.adapter.parameters())  # trainable weights stay fp32
    assert trainer.unet.is_gradient_checkpointing
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-3 * 2 * 2)  # lr * accum * batch
    assert trainer.total_batch_size == 4
    assert torch.count_nonzero(final_adapter(tmp_path / "run")["up.weight"]) > 0


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tiny_sd15, tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(ImportError, match="bitsandbytes"):
        run(tiny_sd15, tmp_path, use_8bit_adam=True)


class HalfAdapterTrainer(ToyTrainer):
    """The toy adapter built in bf16, plus a trainable bf16 parameter held outside any module, on a bf16 base."""

    def build_models(self) -> None:
        super().build_models()
        self.unet.to(torch.bfloat16)
        self.adapter.to(torch.bfloat16)
        self.gain = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))

    def trainable_parameters(self):
        return [*super().trainable_parameters(), ("gain", self.gain)]


def test_trainable_parameters_are_cast_to_fp32_and_nothing_else(tiny_sd15, tmp_path):
    """diffusers' ``cast_training_params`` on the prepared container: every trainable parameter (the loose one too,
    which is in no module attribute) becomes fp32, values and Parameter objects kept; the frozen base stays bf16."""
    _reset_accelerate()
    trainer = HalfAdapterTrainer(make_config(tiny_sd15, tmp_path))
    trainer._setup_accelerator()
    trainer._setup_models()
    assert [n for n, _ in trainer._trainable] == ["down.weight", "up.weight", "gain"]
    assert all(p.dtype == torch.float32 for _, p in trainer._trainable)
    assert trainer._trainable[2][1] is trainer.gain and trainer._trainable[0][1] is trainer.adapter["down"].weight
    assert all(torch.equal(p, p.bfloat16().float()) for _, p in trainer._trainable)  # the bf16 values, kept
    assert torch.count_nonzero(trainer.adapter["down"].weight) > 0 and torch.equal(trainer.gain, torch.ones(3))
    assert all(p.dtype == torch.bfloat16 for p in trainer.unet.parameters())
    trainer.accelerator.end_training()


# ----------------------------------------------------------------------------------------------------------------------
# only-the-adapter-trains guarantee, validation images, main()
# ----------------------------------------------------------------------------------------------------------------------
class LeakyTrainer(ToyTrainer):
    def build_models(self) -> None:
        super().build_models()
        self.unet.conv_in.requires_grad_(True)  # a base layer left trainable by mistake


def test_base_parameter_left_trainable_is_refused(tiny_sd15, tmp_path):
    _reset_accelerate()
    trainer = LeakyTrainer(make_config(tiny_sd15, tmp_path))
    with pytest.raises(AssertionError, match=r"unet\.conv_in\.weight"):
        trainer.train()


def test_assert_only_trainable(tiny_sd15, tmp_path):
    _reset_accelerate()
    trainer = ToyTrainer(make_config(tiny_sd15, tmp_path))
    trainer._setup_accelerator()
    trainer.build_models()
    trainer.assert_only_trainable(lambda name: name.startswith("adapter."))
    with pytest.raises(AssertionError, match="adapter.up.weight"):
        trainer.assert_only_trainable(lambda name: name.startswith("adapter.down"))
    trainer.accelerator.end_training()


class ValidatingTrainer(ToyTrainer):
    def log_validation(self, step):
        from PIL import Image

        assert not torch.is_grad_enabled()
        torch.randn(100)  # like a pipeline without a generator: must not perturb training
        value = int(self.adapter["up"].weight.abs().sum().item() * 1000) % 255
        return [Image.new("RGB", (8, 8), (value, 0, 0)), Image.new("RGB", (8, 8), (0, value, 0))]


def test_validation_images_saved_and_logged(tiny_sd15, tmp_path):
    _reset_accelerate()
    out = tmp_path / "run"
    ValidatingTrainer(
        make_config(tiny_sd15, out, max_train_steps=3, validation_steps=2, report_to="tensorboard")
    ).train()
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-2", "step-3"]
    assert sorted(p.name for p in (out / "validation" / "step-2").iterdir()) == ["00.png", "01.png"]
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1000


def test_validation_with_ema_does_not_perturb_training(tiny_sd15, tmp_path):
    common = dict(max_train_steps=4, use_ema=True, ema_decay=0.5)
    run(tiny_sd15, tmp_path / "plain", **common)
    _reset_accelerate()
    trainer = ValidatingTrainer(make_config(tiny_sd15, tmp_path / "val", validation_steps=1, **common))
    trainer.train()
    assert len(list((tmp_path / "val" / "validation").iterdir())) == 4
    for key, value in final_adapter(tmp_path / "plain").items():
        torch.testing.assert_close(final_adapter(tmp_path / "val")[key], value, rtol=0, atol=0)


def test_main_runs_from_argv(tiny_sd15, tmp_path):
    _reset_accelerate()
    out = tmp_path / "run"
    trainer = main(
        ToyTrainer,
        [
            "--pretrained_model_name_or_path",
            str(tiny_sd15),
            "--output_dir",
            str(out),
            "--max_train_steps",
            "2",
            "--train_batch_size",
            "2",
            "--report_to",
            "none",
            "--seed",
            "0",
        ],
    )
    assert trainer.global_step == 2
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "train_config.yaml").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# diffusion helpers
# ----------------------------------------------------------------------------------------------------------------------
def _scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


def test_targets_and_min_snr_weights():
    from diffusers.training_utils import compute_snr

    torch.manual_seed(0)
    latents, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([1, 500, 999])
    assert torch.equal(get_target(_scheduler("epsilon"), latents, noise, t), noise)
    assert torch.equal(get_target(_scheduler("sample"), latents, noise, t), latents)
    v = _scheduler("v_prediction")
    torch.testing.assert_close(get_target(v, latents, noise, t), v.get_velocity(latents, noise, t))

    for kind in ("epsilon", "v_prediction"):
        sched = _scheduler(kind)
        snr = compute_snr(sched, t)
        expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr if kind == "epsilon" else snr + 1)
        torch.testing.assert_close(min_snr_weights(sched, t, 5.0), expected)
    # weighted loss == mean of per-sample MSE * weight
    sched = _scheduler("epsilon")
    pred = torch.randn(3, 4, 2, 2)
    per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(
        diffusion_loss(pred, noise, t, sched, 5.0), (per_sample * min_snr_weights(sched, t, 5.0)).mean()
    )


def test_masked_loss_ignores_masked_elements():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)  # (B, C, F, H, W)
    mask = torch.ones(1, 1, 3, 1, 1)
    mask[:, :, 0] = 0  # exclude the first frame
    corrupted = pred.clone()
    corrupted[:, :, 0] = 1e6
    masked = diffusion_loss(corrupted, target, mask=mask)
    torch.testing.assert_close(masked, diffusion_loss(pred[:, :, 1:], target[:, :, 1:]))
    with pytest.raises(ValueError, match="mask"):
        diffusion_loss(pred, target, mask=torch.zeros(1, 1, 3, 1, 1))


def test_noise_offset_is_per_sample_channel():
    torch.manual_seed(0)
    latents = torch.zeros(64, 4, 8, 8)
    plain = sample_noise(latents, 0.0)
    offset = sample_noise(latents, 1.0)
    # the offset adds a constant per (sample, channel): the spatial means spread much more
    assert offset.mean(dim=(2, 3)).std() > 3 * plain.mean(dim=(2, 3)).std()
    t = sample_timesteps(1000, _scheduler("epsilon"))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < 1000


# ----------------------------------------------------------------------------------------------------------------------
# training/data.py
# ----------------------------------------------------------------------------------------------------------------------
def _image_folder(root: Path, sizes: list[tuple[int, int]], manifest: bool = True) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 40 % 255, 100, 200)).save(root / f"{i:02d}.png")
        if manifest:
            lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"image {i}", "tag": i}))
        else:
            (root / f"{i:02d}.txt").write_text(f"caption {i}\n")
    if manifest:
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_image_caption_dataset_items_and_captions(tmp_path):
    from training.data import ImageCaptionDataset

    ds = ImageCaptionDataset(_image_folder(tmp_path / "m", [(40, 20), (20, 20)]), resolution=16)
    item = ds[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    assert -1.0 <= float(item["pixel_values"].min()) and float(item["pixel_values"].max()) <= 1.0
    assert item["text"] == "image 0" and item["extra"] == {"tag": 0}
    assert item["original_size"] == (20, 40) and item["crop_top_left"] == (0, 8)  # centre crop of the 32x16 resize
    batch = ImageCaptionDataset.collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["text"] == ["image 0", "image 1"]

    sidecar = ImageCaptionDataset(_image_folder(tmp_path / "s", [(8, 8)], manifest=False), resolution=8)
    assert sidecar[0]["text"] == "caption 0"

    # random crops depend only on (seed, epoch, index): a resumed run sees the same crops
    a = ImageCaptionDataset(tmp_path / "m", resolution=16, center_crop=False, random_flip=True, seed=1)
    b = ImageCaptionDataset(tmp_path / "m", resolution=16, center_crop=False, random_flip=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a[0]["pixel_values"], b[0]["pixel_values"]) and a[0]["crop_top_left"] == b[0]["crop_top_left"]


def test_missing_and_unreadable_files_error_or_skip(tmp_path):
    from training.data import DataFileError, ImageCaptionDataset

    root = _image_folder(tmp_path / "m", [(8, 8), (8, 8), (8, 8)])
    (root / "01.png").unlink()
    with pytest.raises(DataFileError, match=r"01\.png") as info:
        ImageCaptionDataset(root, resolution=8)
    assert info.value.path.endswith("01.png")
    ds = ImageCaptionDataset(root, resolution=8, on_missing_file="skip")
    assert len(ds) == 2 and ds.skipped[0].endswith("01.png")

    _image_folder(root, [(8, 8), (8, 8), (8, 8)])  # all back
    (root / "02.png").write_bytes(b"not an image")  # unreadable: found when the dataset is built, not mid-run
    with pytest.raises(DataFileError, match=r"02\.png.*--on_missing_file skip"):
        ImageCaptionDataset(root, resolution=8)
    skipping = ImageCaptionDataset(root, resolution=8, on_missing_file="skip")
    assert len(skipping) == 2 and [Path(p).name for p in skipping.paths] == ["00.png", "01.png"]
    assert any(p.endswith("02.png") for p in skipping.skipped)

    (root / "metadata.jsonl").write_text('{"file_name": "00.png", "text": "ok"}\n{broken\n')
    with pytest.raises(DataFileError, match=r"metadata\.jsonl:2"):
        ImageCaptionDataset(root)


def test_buckets_and_bucket_batch_sampler():
    from training.data import BucketBatchSampler, make_buckets

    buckets = make_buckets(256, 1024, 64, max_aspect_ratio=2.0)  # (height, width)
    assert all(w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024 for h, w in buckets)
    assert all(max(w / h, h / w) <= 2.0 for h, w in buckets) and buckets == sorted(buckets)
    assert (512, 1024) in buckets and (448, 1024) not in buckets
    kohya = make_buckets(256, 2048, 64, max_aspect_ratio=4.0, max_area=1024 * 1024)
    assert (1024, 1024) in kohya and all(w * h <= 1024 * 1024 for h, w in kohya)
    assert len({w for _, w in kohya}) == len(kohya)  # one (the tallest) height per width

    # images of three aspect ratios (w / h): each batch shares one size, of the ratio nearest its images'
    ratios = [2.0, 0.5, 2.0, 1.0, 0.5, 2.1, 1.9, 1.0, 0.45]
    sizes = [(8, 16), (16, 8), (16, 16)]
    sampler = BucketBatchSampler(len(ratios), sizes, batch_size=2, aspect_ratios=ratios, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5  # classes of 4, 3 and 2 images
    assert all(len({(h, w) for _, h, w in b}) == 1 for b in batches)
    nearest = {i: min((0.5, 1.0, 2.0), key=lambda r: abs(math.log(r / ratio))) for i, ratio in enumerate(ratios)}
    assert all(w / h == nearest[i] for b in batches for i, h, w in b)
    assert sorted(i for b in batches for i, _, _ in b) == list(range(9))
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropping = BucketBatchSampler(len(ratios), sizes, 2, ratios, drop_last=True)
    assert len(dropping) == 4 == len(list(dropping))


class BucketImageTrainer(ToyTrainer):
    """The toy adapter on images of two aspect ratios, batched by bucket (pixels + luminance as 4 channels)."""

    def build_dataset(self):
        from training.data import ImageCaptionDataset

        root = Path(self.config.train_data_dir)
        return ImageCaptionDataset(root, seed=self.seed)

    def build_dataloader(self, dataset):
        from torch.utils.data import DataLoader

        from training.data import BucketBatchSampler

        buckets = [(8, 16), (16, 8)]  # (height, width)
        sampler = BucketBatchSampler(
            len(dataset), buckets, self.config.train_batch_size, dataset.aspect_ratios, seed=self.seed or 0
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)

    def compute_loss(self, batch):
        pixels = batch["pixel_values"]
        self.shapes = getattr(self, "shapes", []) + [tuple(pixels.shape)]
        latents = torch.cat([pixels, pixels.mean(dim=1, keepdim=True)], dim=1)
        return super().compute_loss(
            {
                "latents": latents,
                "encoder_hidden_states": torch.zeros(len(pixels), 4, 32),
                "index": torch.zeros(len(pixels)),
            }
        )


def test_bucketed_image_folder_trains_and_resumes(tiny_sd15, tmp_path):
    data = _image_folder(tmp_path / "data", [(32, 16), (16, 32), (30, 14), (14, 30), (40, 20), (20, 44)])
    common = dict(train_data_dir=str(data), max_train_steps=5, checkpointing_steps=2, center_crop=False)
    _reset_accelerate()
    ref = BucketImageTrainer(make_config(tiny_sd15, tmp_path / "a", **common))
    ref.train()
    assert {s[2:] for s in ref.shapes} == {(8, 16), (16, 8)}  # one bucket per batch, both buckets used
    _reset_accelerate()
    with pytest.raises(InjectedCrash):
        BucketImageTrainer(make_config(tiny_sd15, tmp_path / "b", crash_at_step=4, **common)).train()
    _reset_accelerate()
    BucketImageTrainer(make_config(tiny_sd15, tmp_path / "b", resume_from_checkpoint="latest", **common)).train()
    reference, got = final_adapter(tmp_path / "a"), final_adapter(tmp_path / "b")
    for key in reference:
        torch.testing.assert_close(got[key], reference[key], rtol=0, atol=1e-6)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(ToyTrainer)
