"""ldm/util/: config instantiation, the one safe checkpoint loader, state-dict matching, device
choice; and that every name the original ``ldm.util`` module offered is still importable from it."""
import os
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import (
    REPOSITORY_ROOT,
    CheckpointError,
    CheckpointMismatchError,
    checkpoint_tensor_shapes,
    compare_state_dict,
    count_params,
    first_line,
    get_obj_from_str,
    in_cwd_or_repository,
    instantiate_from_config,
    load_checkpoint,
    load_state_dict_checked,
    save_checkpoint,
    select_ema_weights,
)


class _TwoLayer(torch.nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Linear(width, width)
        self.first_stage_model = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.first_stage_model(self.model.diffusion_model(x))


# ---------------------------------------------------------------------------------------------
# instantiate_from_config
# ---------------------------------------------------------------------------------------------
def test_instantiate_builds_target_with_params():
    layer = instantiate_from_config(OmegaConf.create(
        {"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 5}}))
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (5, 3)


def test_instantiate_without_params_uses_defaults():
    assert isinstance(instantiate_from_config({"target": "torch.nn.Identity"}), torch.nn.Identity)


@pytest.mark.parametrize("marker", ["__is_first_stage__", "__is_unconditional__"])
def test_instantiate_special_markers_give_none(marker):
    assert instantiate_from_config(marker) is None


def test_instantiate_without_target_raises_key_error():
    with pytest.raises(KeyError, match="Expected key `target`"):
        instantiate_from_config({"params": {}})


def test_get_obj_from_str_resolves_dotted_path():
    assert get_obj_from_str("torch.nn.Linear") is torch.nn.Linear


def test_count_params_counts_every_parameter(capsys):
    assert count_params(torch.nn.Linear(3, 5), verbose=True) == 20
    assert "Linear has 0.00 M params." in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = _TwoLayer()
    path = tmp_path / f"model{suffix}"
    save_checkpoint(model.state_dict(), path, metadata={"global_step": 7})
    state_dict, metadata = load_checkpoint(path)
    assert metadata["global_step"] == 7
    restored = _TwoLayer()
    load_state_dict_checked(restored, state_dict, verbose=False)
    x = torch.randn(4, 3)
    assert torch.equal(model(x), restored(x))


def test_bare_state_dict_without_wrapper_loads(tmp_path):
    model = _TwoLayer()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    state_dict, metadata = load_checkpoint(tmp_path / "bare.pt")
    assert set(state_dict) == set(model.state_dict()) and metadata == {}


def test_lightning_checkpoint_with_callback_classes_loads_without_unpickling_them(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    model = _TwoLayer()
    torch.save({"state_dict": model.state_dict(), "global_step": 470000, "epoch": 3,
                "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.5),
                                                "history": np.arange(3.0)}}},
               tmp_path / "lightning.ckpt")
    state_dict, metadata = load_checkpoint(tmp_path / "lightning.ckpt")
    assert metadata == {"global_step": 470000, "epoch": 3}
    assert set(state_dict) == set(model.state_dict())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > exploit-ran.txt",))


def test_pickle_that_would_execute_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"\(posix.system|nt.system\); refusing to load"):
        load_checkpoint(path)
    assert not (tmp_path / "exploit-ran.txt").exists()


def test_plain_pickle_file_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "exploit-ran.txt").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_gives_clear_error(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    save_checkpoint(_TwoLayer().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted, truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("save", ["safetensors", "ckpt", "legacy ckpt"])
def test_tensor_shapes_match_the_state_dict_in_every_format(tmp_path, save):
    state_dict = _TwoLayer().state_dict()
    path = tmp_path / ("model.safetensors" if save == "safetensors" else "model.ckpt")
    if save == "legacy ckpt":   # pre-1.6 torch.save format, which cannot be memory-mapped
        torch.save({"state_dict": state_dict}, path, _use_new_zipfile_serialization=False)
    else:
        save_checkpoint(state_dict, path)
    assert checkpoint_tensor_shapes(path) == {key: tuple(value.shape) for key, value in state_dict.items()}


def test_tensor_shapes_of_a_ckpt_come_from_a_memory_map_not_a_full_read(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    save_checkpoint(_TwoLayer().state_dict(), path)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    checkpoint_tensor_shapes(path)
    load_checkpoint(path)
    assert calls == [True, True]  # load_checkpoint maps the file too: tensors are read as they are used


READERS = [load_checkpoint, checkpoint_tensor_shapes]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_garbage_file_gives_clear_error(tmp_path, suffix, read):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupted, truncated or not a checkpoint"):
        read(path)


@pytest.mark.parametrize("read", READERS)
def test_missing_and_empty_files_give_clear_errors(tmp_path, read):
    with pytest.raises(CheckpointError, match="not found"):
        read(tmp_path / "nope.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read(tmp_path / "empty.ckpt")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_saved_checkpoints_get_the_usual_file_permissions(tmp_path, suffix):
    umask = os.umask(0o022)
    try:
        save_checkpoint({"w": torch.zeros(2)}, str(tmp_path / f"m{suffix}"))
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / f"m{suffix}").st_mode & 0o777 == 0o644  # not the temp file's 0600


def test_save_does_not_leave_temporary_files(tmp_path):
    save_checkpoint(_TwoLayer().state_dict(), tmp_path / "a.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# ---------------------------------------------------------------------------------------------
# Fitting a state dict to a model
# ---------------------------------------------------------------------------------------------
def test_wrong_layout_is_reported_per_component_and_refused_when_strict():
    model = _TwoLayer(width=3)
    other = _TwoLayer(width=4).state_dict()
    report = compare_state_dict(model, other)
    assert "UNet (model.diffusion_model)" in report.mismatched
    with pytest.raises(CheckpointMismatchError, match="^the checkpoint does not fit the config: .*UNet"):
        load_state_dict_checked(model, other, verbose=False)


def test_a_mismatch_is_a_checkpoint_error_and_an_unreadable_file_is_not_a_mismatch(tmp_path):
    assert issubclass(CheckpointMismatchError, CheckpointError)
    (tmp_path / "bad.ckpt").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "bad.ckpt")
    assert not isinstance(info.value, CheckpointMismatchError)


def test_missing_and_unexpected_keys_are_named():
    model = _TwoLayer()
    state_dict = dict(model.state_dict())
    del state_dict["first_stage_model.bias"]
    state_dict["cond_stage_model.extra"] = torch.zeros(1)
    report = compare_state_dict(model, state_dict)
    assert report.missing == {"autoencoder (first_stage_model)": ["first_stage_model.bias"]}
    assert report.unexpected == {"conditioning encoder (cond_stage_model)": ["cond_stage_model.extra"]}


def test_old_transformers_position_ids_are_ignored():
    model = _TwoLayer()
    state_dict = dict(model.state_dict())
    state_dict["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    assert compare_state_dict(model, state_dict).ok


def test_components_loaded_at_construction_may_be_absent_from_the_checkpoint():
    model = _TwoLayer()
    unet_only = {k: v for k, v in model.state_dict().items() if k.startswith("model.")}
    with pytest.raises(CheckpointError, match="autoencoder"):
        load_state_dict_checked(model, unet_only, verbose=False)
    model.preloaded_prefixes = lambda: ("first_stage_model.",)
    assert load_state_dict_checked(model, unet_only, verbose=False).ok


def test_relative_checkpoint_paths_are_found_from_the_repository_root_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert in_cwd_or_repository("configs/stable-diffusion/v1-inference.yaml") == os.path.join(
        REPOSITORY_ROOT, "configs", "stable-diffusion", "v1-inference.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.ckpt").write_bytes(b"x")
    assert in_cwd_or_repository("configs/mine.ckpt") == "configs/mine.ckpt"
    assert in_cwd_or_repository("nowhere/x.ckpt") == "nowhere/x.ckpt"


def test_home_relative_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert in_cwd_or_repository("~/model.ckpt") == str(tmp_path / "model.ckpt")


def test_repository_root_is_the_folder_holding_the_package():
    assert os.path.isfile(os.path.join(REPOSITORY_ROOT, "ldm", "util", "__init__.py"))
    assert os.path.isdir(os.path.join(REPOSITORY_ROOT, "configs"))


def test_skip_prefixes_are_reported_in_one_line_not_as_errors():
    model = _TwoLayer()
    model.checkpoint_skip_prefixes = lambda: {"depth_model.": "MiDaS is not built in"}
    state_dict = dict(model.state_dict())
    state_dict.update({f"depth_model.w{i}": torch.zeros(1) for i in range(5)})
    report = load_state_dict_checked(model, state_dict, verbose=False)
    assert report.ok
    assert report.lines() == ["skipped 5 checkpoint tensors: MiDaS is not built in"]


def test_ema_selection_replaces_unet_weights_with_their_shadows():
    model = _TwoLayer()
    state_dict = dict(model.state_dict())
    shadow = torch.full_like(state_dict["model.diffusion_model.weight"], 3.0)
    state_dict["model_ema.diffusion_modelweight"] = shadow
    selected = select_ema_weights(state_dict, model)
    assert torch.equal(selected["model.diffusion_model.weight"], shadow)
    assert not any(k.startswith("model_ema.") for k in selected)


def test_ema_selection_without_ema_weights_says_so():
    with pytest.raises(CheckpointError, match="no EMA weights"):
        select_ema_weights(_TwoLayer().state_dict(), _TwoLayer())


def test_checkpoint_without_position_ids_is_not_reported_missing():
    model = _TwoLayer()
    model.cond = torch.nn.Module()
    model.cond.embeddings = torch.nn.Module()
    model.cond.embeddings.register_buffer("position_ids", torch.arange(4)[None])
    state_dict = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert compare_state_dict(model, state_dict).ok


def test_transformers5_clip_keys_are_renamed_to_the_original_layout():
    model = torch.nn.Module()
    model.cond_stage_model = torch.nn.Module()
    model.cond_stage_model.transformer = torch.nn.Module()
    model.cond_stage_model.transformer.text_model = torch.nn.Linear(2, 2)
    new_style = {"cond_stage_model.transformer.weight": torch.ones(2, 2),
                 "cond_stage_model.transformer.bias": torch.zeros(2)}
    report = load_state_dict_checked(model, new_style, verbose=False)
    assert report.ok
    assert torch.equal(model.cond_stage_model.transformer.text_model.weight, torch.ones(2, 2))


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from ldm.util import devices as util

    monkeypatch.setattr(util, "_device_available", lambda kind: kind in ("mps", "cpu"))
    assert util.pick_device() == torch.device("mps")
    assert util.pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(util, "_device_available", lambda kind: kind == "cpu")
    assert util.pick_device(None) == torch.device("cpu")


def test_pick_device_refuses_a_device_that_is_not_there(monkeypatch):
    from ldm.util import devices as util

    monkeypatch.setattr(util, "_device_available", lambda kind: kind == "cpu")
    with pytest.raises(RuntimeError, match="--device cuda:1 was asked for, but CUDA is not available"):
        util.pick_device("cuda:1")
    assert util.pick_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# The module's public names
# ---------------------------------------------------------------------------------------------
# Every name the original single-module ldm.util offered (and code here imports from it).
ORIGINAL_NAMES = ["exists", "default", "ismap", "isimage", "mean_flat", "count_params", "log_txt_as_img",
                  "get_obj_from_str", "instantiate_from_config", "REPOSITORY_ROOT", "in_cwd_or_repository",
                  "write_atomically", "CheckpointError", "load_checkpoint", "save_checkpoint",
                  "checkpoint_tensor_shapes", "StateDictReport", "compare_state_dict", "upgrade_legacy_keys",
                  "select_ema_weights", "load_state_dict_checked", "pick_device", "load_model_from_config"]


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_every_name_of_the_original_module_is_importable_from_ldm_util(name):
    import ldm.util

    assert name in ldm.util.__all__ and getattr(ldm.util, name) is not None


def test_first_line_of_an_error_message():
    assert first_line(ValueError("  bad value\nmore detail")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("Weights only load failed.\nWeightsUnpickler error: Unsupported x\n"),
                      after="WeightsUnpickler error:") == "Unsupported x"
