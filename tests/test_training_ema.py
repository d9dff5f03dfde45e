"""training.core.ema: diffusers' ``EMAModel`` with the repository's checkpoint format.

``_OldTrainableEMA`` is the EMA class the trainer held before (its update and state dict kept here verbatim as the
reference); ``tests/data/ema_model_trainable_ema.safetensors`` is a file it wrote (two parameters ``(3, 2)`` and
``(4,)``, decay 0.9, 5 updates), as in every existing checkpoint's ``ema_model.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.training_utils import EMAModel

from adapters.weights import load_weights, save_weights
from training.core.ema import ema_state_dict, load_ema_state_dict

OLD_FILE = Path(__file__).parent / "data" / "ema_model_trainable_ema.safetensors"


class _OldTrainableEMA:
    def __init__(self, parameters, decay=0.9999):
        self.parameters = list(parameters)
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().to(torch.float32).clone() for p in self.parameters]

    def current_decay(self):
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self):
        decay = self.current_decay()
        for s, p in zip(self.shadow, self.parameters):
            s.lerp_(p.detach().to(s.device, torch.float32), 1.0 - decay)
        self.num_updates += 1

    def state_dict(self):
        sd = {f"shadow.{i}": s for i, s in enumerate(self.shadow)}
        sd["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return sd


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 2, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]


def _train_step(params, g) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _ema(params, decay):
    return EMAModel(params, decay=decay, foreach=True)  # as the trainer builds it


@pytest.mark.parametrize("decay", [0.05, 0.5, 0.9, 0.999])
def test_diffusers_ema_follows_the_old_schedule_and_update(decay):
    params = _params()
    old, new = _OldTrainableEMA(params, decay), _ema(params, decay)
    g = torch.Generator().manual_seed(1)
    for n in range(30):
        _train_step(params, g)
        old.step()
        new.step(params)
        # the same decay after the first update (see the next test for that one)
        assert new.cur_decay_value == (0.0 if n == 0 else pytest.approx(min(decay, (1 + n) / (10 + n))))
    # the first update's difference has decayed away (weight < 1e-8 after 30 updates), and the update
    # s - (1 - d) (s - p) rounds like lerp to fp32 precision (not bitwise)
    for s_old, s_new in zip(old.shadow, new.shadow_params):
        torch.testing.assert_close(s_new, s_old, rtol=1e-6, atol=1e-6)
    assert ema_state_dict(new).keys() == old.state_dict().keys()
    assert int(ema_state_dict(new)["num_updates"]) == old.num_updates == 30


def test_the_one_difference_is_the_first_update():
    """diffusers' first update copies the parameters (decay 0); the old class kept 0.1 of the initial weights."""
    params = _params()
    before = [p.detach().clone() for p in params]
    old, new = _OldTrainableEMA(params, 0.9), _ema(params, 0.9)
    _train_step(params, torch.Generator().manual_seed(1))
    old.step()
    new.step(params)
    assert all(torch.equal(s, p) for s, p in zip(new.shadow_params, params))
    for s, p, b in zip(old.shadow, params, before):
        torch.testing.assert_close(s, 0.1 * b + 0.9 * p)


def test_copy_to_store_restore_round_trip():
    params = _params()
    ema = _ema(params, 0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        _train_step(params, g)
        ema.step(params)
    trained = [p.detach().clone() for p in params]
    ema.store(params)
    ema.copy_to(params)
    assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow_params))
    assert not all(torch.equal(p, t) for p, t in zip(params, trained))
    ema.restore(params)
    assert all(torch.equal(p, t) for p, t in zip(params, trained))


def test_resumes_a_file_written_by_the_old_ema(tmp_path):
    state, _ = load_weights(OLD_FILE)
    params = _params(5)
    ema = _ema(params, 0.9)
    load_ema_state_dict(ema, state)
    assert ema.optimization_step == 5
    assert all(torch.equal(s, state[f"shadow.{i}"]) for i, s in enumerate(ema.shadow_params))
    # the next update continues the old schedule: decay min(0.9, 6 / 15) after 5 updates
    old = _OldTrainableEMA(params, 0.9)
    old.shadow = [state[f"shadow.{i}"].clone() for i in range(2)]
    old.num_updates = 5
    _train_step(params, torch.Generator().manual_seed(2))
    old.step()
    ema.step(params)
    assert ema.cur_decay_value == pytest.approx(0.4)
    for s_old, s_new in zip(old.shadow, ema.shadow_params):
        torch.testing.assert_close(s_new, s_old, rtol=1e-6, atol=1e-6)
    # and what it writes is the same format, read back exactly
    save_weights(ema_state_dict(ema), tmp_path / "ema_model.safetensors")
    again = _ema(_params(6), 0.9)
    load_ema_state_dict(again, load_weights(tmp_path / "ema_model.safetensors")[0])
    assert again.optimization_step == 6
    assert all(torch.equal(a, b) for a, b in zip(again.shadow_params, ema.shadow_params))


def test_why_the_checkpoint_format_is_ours(tmp_path):
    params = _params()
    ema = _ema(params, 0.9)
    # diffusers' state dict is a list plus Python scalars: safetensors cannot write it
    with pytest.raises((TypeError, AttributeError, ValueError)):
        save_weights(ema.state_dict(), tmp_path / "stock.safetensors")
    # and its load_state_dict takes shadows of any count and shape without a word; ours refuses by name
    stock = _ema(params, 0.9)
    stock.load_state_dict({"shadow_params": [torch.zeros(7)]})
    assert len(stock.shadow_params) == 1
    with pytest.raises(ValueError, match=r"missing \['shadow.1'\]"):
        load_ema_state_dict(ema, {"shadow.0": torch.zeros(3, 2), "num_updates": torch.tensor(1)})
    with pytest.raises(ValueError, match=r"shadow.1 has shape \(7,\), expected \(4,\)"):
        load_ema_state_dict(
            ema, {"shadow.0": torch.zeros(3, 2), "shadow.1": torch.zeros(7), "num_updates": torch.tensor(1)}
        )
    with pytest.raises(ValueError, match=r"unexpected \['shadow.2'\]"):
        load_ema_state_dict(
            ema,
            {
                **{f"shadow.{i}": torch.zeros(p.shape) for i, p in enumerate(params)},
                "shadow.2": torch.zeros(1),
                "num_updates": torch.tensor(1),
            },
        )
    assert ema.optimization_step == 0 and all(torch.equal(s, p) for s, p in zip(ema.shadow_params, params))
