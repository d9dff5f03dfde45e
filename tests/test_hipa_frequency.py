"""HiPA's high-pass filter, loss, x0 prediction, config and preset table (no models needed)."""

from __future__ import annotations

import math

import pytest
import torch

from adapters.hipa import (
    PRESETS,
    HiPAConfig,
    get_preset,
    high_pass,
    high_pass_transfer,
    hipa_loss,
    low_pass,
    make_scheduler,
    predict_x0,
    sobel_edges,
)


@pytest.mark.parametrize("kind", ["ideal", "gaussian"])
def test_constant_image_has_no_high_frequencies(kind):
    x = torch.full((2, 3, 16, 16), 0.7, dtype=torch.float64)
    assert high_pass(x, 0.2, kind).abs().max() < 1e-12
    torch.testing.assert_close(low_pass(x, 0.2, kind), x)


@pytest.mark.parametrize("kind", ["ideal", "gaussian"])
def test_impulse_keeps_energy_at_high_frequencies(kind):
    size, cutoff = 32, 0.25
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    x[..., 10, 7] = 1.0
    kept = high_pass(x, cutoff, kind).pow(2).sum().item()
    # A unit impulse has a flat spectrum: the kept energy is the mean of H^2 over the frequency grid.
    expected = high_pass_transfer(size, size, cutoff, kind, dtype=torch.float64).pow(2).mean().item()
    assert kept == pytest.approx(expected, rel=1e-9)
    if kind == "ideal":
        assert kept == pytest.approx(1 - math.pi * cutoff**2, abs=0.02)
    assert kept > 0.4  # an impulse keeps much of its energy (flat spectrum, most bins are high-frequency)


def test_ideal_filter_separates_sinusoids_and_is_a_projection():
    n = 32
    grid = torch.arange(n, dtype=torch.float64)
    low = torch.cos(2 * math.pi * 2 / n * grid)[None, :].expand(n, n)  # 2/32 = 0.0625 cycles/pixel
    high = torch.cos(2 * math.pi * 12 / n * grid)[:, None].expand(n, n)  # 0.375 cycles/pixel
    x = (low + high)[None, None]
    hp = high_pass(x, 0.25)
    torch.testing.assert_close(hp[0, 0], high, atol=1e-10, rtol=0)
    torch.testing.assert_close(high_pass(hp, 0.25), hp, atol=1e-10, rtol=0)  # idempotent
    torch.testing.assert_close(low_pass(x, 0.25)[0, 0], low, atol=1e-10, rtol=0)


def test_high_pass_is_linear_and_keeps_shape_and_dtype():
    a, b = torch.randn(2, 4, 8, 12), torch.randn(2, 4, 8, 12)
    torch.testing.assert_close(high_pass(a) - high_pass(b), high_pass(a - b), atol=1e-5, rtol=0)
    half = high_pass(a.half())
    assert half.dtype == torch.float16 and half.shape == a.shape


def test_filter_argument_errors():
    with pytest.raises(ValueError, match="cutoff"):
        high_pass(torch.zeros(4, 4), cutoff=0.0)
    with pytest.raises(ValueError, match="kind"):
        high_pass(torch.zeros(4, 4), kind="box")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sobel_edges(torch.zeros(4, 4))


def test_sobel_edges_zero_on_constant_positive_on_edge():
    x = torch.zeros(1, 1, 8, 8)
    assert sobel_edges(x + 3.0).abs().max() < 1e-6
    x[..., 4:] = 1.0
    edges = sobel_edges(x)
    assert edges[..., 3:5].min() > 0.1 and edges[..., :2].max() < 1e-6


def test_hipa_loss_zero_when_equal_and_parts_add_up():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 16, 16)
    assert hipa_loss(s, s.clone(), lambda_hf=2.0, lambda_edge=1.0).item() == 0.0
    t = s + 0.1 * torch.randn_like(s)
    loss, parts = hipa_loss(s, t, lambda_hf=2.0, lambda_edge=0.5, return_parts=True)
    expected = parts["spatial"] + 2.0 * parts["high_freq"] + 0.5 * parts["edge"]
    torch.testing.assert_close(loss, expected)
    assert parts["high_freq"] > 0 and parts["edge"] > 0
    # A smooth (low-frequency) difference costs almost nothing in the high-frequency term.
    smooth = s + torch.linspace(0, 0.1, 16)[None, None, None, :]
    _, p2 = hipa_loss(s, smooth, return_parts=True)
    assert p2["high_freq"] < 0.2 * p2["spatial"]


def test_hipa_loss_has_gradients_and_validates():
    s = torch.randn(1, 4, 8, 8, requires_grad=True)
    hipa_loss(s, torch.zeros(1, 4, 8, 8), lambda_hf=1.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        hipa_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 4))
    with pytest.raises(ValueError, match="lambda_hf"):
        hipa_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), lambda_hf=-1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_inverts_the_forward_process(prediction_type):
    torch.manual_seed(0)
    alphas_cumprod = torch.linspace(0.999, 0.005, 1000)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([999, 400])
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    output = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}
    recovered = predict_x0(output[prediction_type], x_t, t, alphas_cumprod, prediction_type)
    torch.testing.assert_close(recovered, x0, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        predict_x0(noise, x_t, t, alphas_cumprod, "flow")


def test_config_to_lora_config_and_errors():
    config = HiPAConfig(rank=4, alpha=2.0)
    lora = config.to_lora_config()
    assert lora.r == 4 and lora.lora_alpha == 2.0
    assert set(lora.target_modules) == {"to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"}
    assert HiPAConfig(rank=4).lora_alpha == 4.0
    assert set(HiPAConfig.attention_only(2).to_lora_config().target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    with pytest.raises(ValueError, match="rank"):
        HiPAConfig(rank=0)
    with pytest.raises(ValueError, match="alpha"):
        HiPAConfig(alpha=-1.0)


def test_preset_table():
    assert set(PRESETS) == {"hipa", "lcm", "tcd", "lightning", "hyper-sd"}
    assert get_preset("HIPA").num_inference_steps == 1 and get_preset("hipa").one_step_x0
    assert get_preset("hyper_sd").name == "hyper-sd"
    with pytest.raises(ValueError, match="preset"):
        get_preset("turbo")
    base = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
    }
    expected = {
        "hipa": "DDIMScheduler",
        "lcm": "LCMScheduler",
        "tcd": "TCDScheduler",
        "lightning": "EulerDiscreteScheduler",
        "hyper-sd": "DDIMScheduler",
    }
    for name, cls_name in expected.items():
        scheduler = make_scheduler(name, base)
        assert type(scheduler).__name__ == cls_name
        assert scheduler.config.prediction_type == "v_prediction"  # the base's parameterisation is kept
        preset = get_preset(name)
        assert preset.min_steps <= preset.num_inference_steps <= preset.max_steps
    euler = make_scheduler("lightning", base)
    euler.set_timesteps(4)
    assert euler.timesteps[0].item() == 999  # trailing spacing starts at the last training step
