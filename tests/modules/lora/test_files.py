"""ldm/modules/lora/files.py: LoRA files are read as safetensors only (a pickle is refused before
anything of it is read), with diffusers' adapter metadata decoded; ``FILE[:WEIGHT]`` parsing."""
import json

import pytest
import torch
from safetensors.torch import save_file

from ldm.modules.lora import LoraError, LoraSpec, load_lora_state_dict, parse_lora_spec, read_lora_file


@pytest.mark.parametrize("spec, expected", [
    ("style.safetensors", LoraSpec("style.safetensors", 1.0)),
    ("style.safetensors:0.7", LoraSpec("style.safetensors", 0.7)),
    ("style.safetensors:-1", LoraSpec("style.safetensors", -1.0)),
    ("dir/a:b.safetensors", LoraSpec("dir/a:b.safetensors", 1.0)),
    ("C:\\loras\\x.safetensors", LoraSpec("C:\\loras\\x.safetensors", 1.0)),
    ("C:\\loras\\x.safetensors:.5", LoraSpec("C:\\loras\\x.safetensors", 0.5)),
])
def test_lora_spec_is_a_file_and_an_optional_weight_after_the_last_colon(spec, expected):
    assert parse_lora_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("x.safetensors:strong", "--lora x.safetensors:strong: the weight after ':' must be a number, got 'strong'"),
    ("style.safetensors:", "--lora style.safetensors:: the weight after ':' must be a number, got ''"),
    ("style.safetensors:nan", "--lora style.safetensors:nan: the weight after ':' must be a finite number, got nan"),
    (":0.5", "--lora :0.5: give a LoRA file, as FILE or FILE:WEIGHT"),
])
def test_bad_lora_specs_are_refused_in_one_line(spec, message):
    with pytest.raises(LoraError) as info:
        parse_lora_spec(spec)
    assert str(info.value) == message


def test_a_file_whose_name_ends_in_a_word_after_a_colon_is_taken_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x:final").write_bytes(b"")
    assert parse_lora_spec("x:final") == LoraSpec("x:final", 1.0)


def test_reads_tensors_and_decodes_diffusers_adapter_metadata(tmp_path):
    path = str(tmp_path / "peft.safetensors")
    tensors = {"unet.conv_in.lora_A.weight": torch.randn(4, 4, 3, 3)}
    save_file(tensors, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8})})
    lora = read_lora_file(path)
    assert lora.metadata["lora_adapter_metadata"] == {"unet.lora_alpha": 8}
    assert torch.equal(lora.state_dict["unet.conv_in.lora_A.weight"], tensors["unet.conv_in.lora_A.weight"])
    assert load_lora_state_dict(path).keys() == tensors.keys()


def test_a_pickled_lora_is_refused_without_being_unpickled(tmp_path):
    path = tmp_path / "lora.pt"
    torch.save({"lora_unet_conv_in.lora_down.weight": torch.zeros(1)}, path)
    with pytest.raises(LoraError, match=r"lora\.pt is not a \.safetensors file; LoRA files are read only as "
                                        r"safetensors \(never as pickles\)"):
        read_lora_file(str(path))


@pytest.mark.parametrize("content, message", [
    (None, "LoRA file not found: "),
    (b"", "the file is empty"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "cannot read checkpoint"),
])
def test_missing_empty_and_corrupt_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "lora.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LoraError) as info:
        read_lora_file(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_metadata_that_is_not_json_is_refused(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    save_file({"unet.conv_in.lora_A.weight": torch.zeros(1, 1)}, path, metadata={"lora_adapter_metadata": "{oops"})
    with pytest.raises(LoraError, match="bad.safetensors: its lora_adapter_metadata metadata is not valid JSON"):
        read_lora_file(path)
