"""adapters.weights: safetensors I/O, strict validation, metadata, pickle refusal, atomic writes, format registry."""

from __future__ import annotations

import os

import pytest
import torch

from adapters import weights as W
from adapters.weights import AdapterWeightsError


def _sd():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(4, generator=g)}


def test_save_load_round_trip_with_metadata(tmp_path):
    sd = _sd()
    meta = W.adapter_metadata("res_adapter", "sd1", trained_min=128)
    path = W.save_weights(sd, tmp_path / "sub" / "w.safetensors", metadata=meta)
    loaded, loaded_meta = W.load_weights(path)
    assert loaded.keys() == sd.keys()
    for k in sd:
        assert torch.equal(loaded[k], sd[k])
    assert loaded_meta[W.KIND_KEY] == "res_adapter"
    assert loaded_meta[W.FAMILY_KEY] == "sd1"
    assert loaded_meta[W.VERSION_KEY] == W.FORMAT_VERSION
    assert loaded_meta["diffusion_adapters.trained_min"] == "128"
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_save_refuses_non_str_metadata_and_wrong_suffix(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        W.save_weights(_sd(), tmp_path / "w.safetensors", metadata={"x": 1})
    with pytest.raises(ValueError, match="safetensors"):
        W.save_weights(_sd(), tmp_path / "w.bin")


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = W.save_weights(_sd(), tmp_path / "w.safetensors")
    before = path.read_bytes()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(W, "_st_save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        W.save_weights({"other": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.parametrize("cut", [10, 200])
def test_truncated_file_is_refused(tmp_path, cut):
    path = W.save_weights(_sd(), tmp_path / "w.safetensors")
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - cut] if cut < len(data) else data[:5])
    with pytest.raises(AdapterWeightsError, match="corrupt"):
        W.load_weights(tmp_path / "t.safetensors")


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterWeightsError):
        W.load_weights(tmp_path / "g.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        W.load_weights(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt", ".pth"])
def test_pickle_needs_opt_in(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    torch.save(_sd(), path)
    with pytest.raises(AdapterWeightsError, match="allow_pickle=True"):
        W.load_weights(path)
    loaded, meta = W.load_weights(path, allow_pickle=True)
    assert meta == {}
    assert torch.equal(loaded["a.weight"], _sd()["a.weight"])


def test_pickle_with_code_is_refused_even_with_opt_in(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.bin"
    torch.save({"x": Evil()}, path)
    with pytest.raises(AdapterWeightsError, match="torch checkpoint"):
        W.load_weights(path, allow_pickle=True)


def test_pickle_nested_state_dict(tmp_path):
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": _sd()}, path)
    loaded, _ = W.load_weights(path, allow_pickle=True)
    assert set(loaded) == {"a.weight", "b.bias"}


def test_validate_lists_missing_unexpected_and_shapes():
    expected = {f"k{i}": (2, 2) for i in range(8)}
    sd = {f"k{i}": torch.zeros(2, 2) for i in range(1, 8)}
    sd["k7"] = torch.zeros(3, 2)
    sd["extra"] = torch.zeros(1)
    with pytest.raises(AdapterWeightsError) as info:
        W.validate_state_dict(sd, expected, what="ResAdapter", source="f.safetensors")
    err = info.value
    assert err.missing == ["k0"]
    assert err.unexpected == ["extra"]
    assert err.mismatched == [("k7", (3, 2), (2, 2))]
    msg = str(err)
    for part in ("1 missing keys: k0", "1 unexpected keys: extra", "k7 (file [3, 2], model [2, 2])", "f.safetensors"):
        assert part in msg
    assert "nothing was changed" in msg


def test_validate_truncates_long_listings():
    expected = {f"k{i:02d}": (1,) for i in range(20)}
    with pytest.raises(AdapterWeightsError) as info:
        W.validate_state_dict({}, expected)
    assert "20 missing keys" in str(info.value)
    assert "(and 15 more)" in str(info.value)
    assert len(info.value.missing) == 20


def test_validate_passes_exact_match():
    W.validate_state_dict({"a": torch.zeros(2, 3)}, {"a": torch.Size([2, 3])})


class _Cfg(dict):
    pass


class _FakeUNet(torch.nn.Module):
    def __init__(self, **cfg):
        super().__init__()
        self.config = _Cfg(cfg)


@pytest.mark.parametrize(
    ("cfg", "family"),
    [
        ({"addition_embed_type": "text_time", "use_linear_projection": True}, "sdxl"),
        ({"use_linear_projection": True}, "sd2"),
        ({"use_linear_projection": False}, "sd1"),
        ({}, "sd1"),
    ],
)
def test_base_family(cfg, family):
    assert W.base_family(_FakeUNet(**cfg)) == family


def test_family_and_kind_checks():
    meta = W.adapter_metadata("res_adapter", "sdxl")
    with pytest.raises(AdapterWeightsError, match="'sdxl' base.*'sd1'"):
        W.check_base_family(meta, _FakeUNet(), what="ResAdapter")
    W.check_base_family({}, _FakeUNet())  # official files carry no metadata
    W.check_base_family(meta, _FakeUNet(addition_embed_type="text_time"))
    with pytest.raises(AdapterWeightsError, match="'res_adapter' adapter, not a 'mv_adapter'"):
        W.check_adapter_kind(meta, "mv_adapter")
    W.check_adapter_kind(meta, "res_adapter")
    W.check_adapter_kind({}, "mv_adapter")


def test_format_registry_round_trip():
    kind = "test_kind"
    W.register_format(
        kind,
        "official",
        detect=lambda sd, meta: any(k.startswith("official.") for k in sd),
        to_ours=lambda sd: {k.removeprefix("official."): v for k, v in sd.items()},
        from_ours=lambda sd: {f"official.{k}": v for k, v in sd.items()},
    )
    W.register_format(kind, "ours", detect=lambda sd, meta: meta.get(W.KIND_KEY) == kind)
    ours = {"x": torch.ones(1)}
    official = W.convert_from_ours(kind, "official", ours)
    assert list(official) == ["official.x"]
    assert W.detect_format(kind, official, {}) == "official"
    assert W.detect_format(kind, ours, {W.KIND_KEY: kind}) == "ours"
    assert list(W.convert_to_ours(kind, official, {})) == ["x"]
    assert W.registered_formats(kind) == ["official", "ours"]
    with pytest.raises(AdapterWeightsError, match="Unrecognised"):
        W.detect_format(kind, {"zzz": torch.ones(1)}, {})
    with pytest.raises(ValueError, match="allowed"):
        W.get_format(kind, "nope")


def test_atomic_directory_success_and_failure(tmp_path):
    target = tmp_path / "ckpt"
    with W.atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with W.atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "one"
    assert os.listdir(tmp_path) == ["ckpt"]
    with W.atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_load_accepts_indexed_cpu_device(tmp_path):
    path = W.save_weights(_sd(), tmp_path / "w.safetensors")
    loaded, _ = W.load_weights(path, device=torch.device("cpu", 0))
    assert loaded["a.weight"].device.type == "cpu"
