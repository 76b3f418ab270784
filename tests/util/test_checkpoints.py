"""ldm/util/checkpoints.py on mistaken (not hostile) files (issue 18): the format is told by the
content, not the name; NaN/inf weights, complex and non-float weights are one line up front."""
import os

import pytest
import torch
from safetensors.torch import save_file

from ldm.util import (
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_tensor_shapes,
    compare_state_dict,
    load_checkpoint,
    load_state_dict_checked,
)
from ldm.util.checkpoint_files import SAFETENSORS, TORCH_LEGACY, TORCH_ZIP, sniff_format


def _weights():
    return {"model.diffusion_model.weight": torch.randn(3, 3), "model.diffusion_model.bias": torch.randn(3)}


@pytest.mark.parametrize("name, write, kind", [
    ("model.ckpt", lambda sd, p: save_file(sd, p), SAFETENSORS),         # a safetensors file named .ckpt
    ("model.safetensors", lambda sd, p: torch.save({"state_dict": sd}, p), TORCH_ZIP),
    ("model.bin", lambda sd, p: torch.save(sd, p, _use_new_zipfile_serialization=False), TORCH_LEGACY),
    ("model", lambda sd, p: save_file(sd, p), SAFETENSORS),              # no extension at all
], ids=["safetensors-named-ckpt", "zip-named-safetensors", "legacy-named-bin", "no-extension"])
def test_the_format_comes_from_the_content_not_the_name(tmp_path, name, write, kind):
    weights = _weights()
    write(weights, str(tmp_path / name))
    assert sniff_format(str(tmp_path / name)) == kind
    state_dict, _ = load_checkpoint(tmp_path / name)
    assert all(torch.equal(state_dict[key], value) for key, value in weights.items()) and len(state_dict) == 2
    assert checkpoint_tensor_shapes(tmp_path / name) == {key: tuple(v.shape) for key, v in weights.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_nan_or_infinite_weights_are_refused_naming_the_tensors(tmp_path, dtype, bad, suffix):
    weights = {key: value.to(dtype) for key, value in _weights().items()}
    weights["model.diffusion_model.weight"][1, 2] = bad
    path = str(tmp_path / f"bad{suffix}")
    save_file(weights, path) if suffix == ".safetensors" else torch.save({"state_dict": weights}, path)
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights in 1 tensor\(s\) "
                                              r"\(model\.diffusion_model\.weight\); refusing") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_many_bad_tensors_are_counted_and_the_first_named(tmp_path):
    weights = {f"w{i}": torch.full((2,), float("nan")) for i in range(5)}
    save_file(weights, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=r"in 5 tensor\(s\) \(w0, w1, w2 and 2 more\)"):
        load_checkpoint(tmp_path / "nan.safetensors")


def test_large_finite_values_are_not_mistaken_for_infinity(tmp_path):
    weights = {"w": torch.full((1000,), 60000.0, dtype=torch.float16)}  # their sum overflows float16
    save_file(weights, str(tmp_path / "big.safetensors"))
    assert torch.equal(load_checkpoint(tmp_path / "big.safetensors")[0]["w"], weights["w"])


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Linear(3, 3)
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.register_buffer("token_ids", torch.arange(4))


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.uint8, torch.int64])
def test_non_float_weights_where_the_model_has_floats_are_a_mismatch(tmp_path, dtype):
    model = _Model()
    state_dict = dict(model.state_dict())
    state_dict["model.diffusion_model.weight"] = torch.ones(3, 3).to(dtype)
    save_file(state_dict, str(tmp_path / "int.safetensors"))
    loaded, _ = load_checkpoint(tmp_path / "int.safetensors")
    report = compare_state_dict(model, loaded)
    assert report.wrong_type == {"UNet (model.diffusion_model)": [
        f"model.diffusion_model.weight {str(dtype).replace('torch.', '')}"]}
    with pytest.raises(CheckpointMismatchError, match="1 tensors of a non-float type where the model has float") as err:
        load_state_dict_checked(model, loaded, verbose=False)
    assert "\n" not in str(err.value)


def test_integer_buffers_may_stay_integer_and_float_weights_may_change_precision():
    model = _Model()
    state_dict = {k: (v.half() if v.is_floating_point() else v.int()) for k, v in model.state_dict().items()}
    assert load_state_dict_checked(model, state_dict, verbose=False).ok
    assert model.cond_stage_model.token_ids.dtype == torch.int64


def test_complex_weights_are_refused_in_one_line(tmp_path):
    save_file({"w": torch.ones(2, dtype=torch.complex64)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=r"w is a complex tensor \(complex64\); refusing"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_tensors_in_plain_containers_load_with_the_same_checks(tmp_path):
    from ldm.util import load_tensors

    torch.save((torch.zeros(4), torch.ones(4)), tmp_path / "stats.th")
    mean, std = load_tensors(tmp_path / "stats.th")
    assert torch.equal(mean, torch.zeros(4)) and torch.equal(std, torch.ones(4))
    torch.save((torch.zeros(4), "not a tensor"), tmp_path / "odd.th")
    with pytest.raises(CheckpointError, match=r"entry \[1\] is a str, not a tensor"):
        load_tensors(tmp_path / "odd.th")
    torch.save((torch.zeros(4), torch.full((4,), float("nan"))), tmp_path / "nan.th")
    with pytest.raises(CheckpointError, match=r"NaN or infinite weights in 1 tensor\(s\) \(\[1\]\)"):
        load_tensors(tmp_path / "nan.th")


def test_plain_values_may_stand_beside_tensors_when_allowed(tmp_path):
    from ldm.util import load_tensors

    torch.save({"name": "style", "step": 3000, "params": {"*": torch.ones(2, 4)}}, tmp_path / "embedding.pt")
    loaded = load_tensors(tmp_path / "embedding.pt", allow_plain_values=True)
    assert loaded["name"] == "style" and loaded["step"] == 3000 and torch.equal(loaded["params"]["*"], torch.ones(2, 4))
    with pytest.raises(CheckpointError, match=r"entry \['(name|step)'\] is a (str|int), not a tensor"):
        load_tensors(tmp_path / "embedding.pt")
    torch.save({"name": "style", "step": 3000}, tmp_path / "no-tensors.pt")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_tensors(tmp_path / "no-tensors.pt", allow_plain_values=True)


def _mappings_of(path) -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(str(path)))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the memory map of the process (Linux)")
def test_safetensors_weights_are_memory_mapped_one_mapping_per_tensor_until_dropped(tmp_path):
    weights = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.float16), "empty": torch.zeros(0)}
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    loaded, _ = load_checkpoint(path)
    assert _mappings_of(path) == 2, "each non-empty tensor should view its own mapping of the file"
    for key, value in weights.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    loaded["a"].add_(1)  # a private mapping: the file is never written
    assert torch.equal(load_checkpoint(path)[0]["a"], weights["a"])
    del loaded
    assert _mappings_of(path) == 0
