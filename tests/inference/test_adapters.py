"""``--lora FILE[:WEIGHT]`` and ``--embedding FILE[:TOKEN]`` on the scripts and ``ldm.load(lora=...,
embeddings=...)`` (ldm/inference/adapters.py): on the tiny SD-shaped model (CLIP text encoder) and
the shipped shapes model, with LoRA files written here in kohya-ss format."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ldm
from ldm.inference import api
from ldm.inference.errors import UsageError
from ldm.modules.encoders.textual_inversion import EmbeddingError
from ldm.modules.lora import LoraError, unet_diffusers_names
from tests.modules.lora.lora_fixtures import clip_text_layers, write_kohya_lora
from tests.scripts.helpers import files_under, main_exit_code, pixel_array, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CALL = dict(steps=4, seed=7, n=2, scale=3.0)


def _unet_layers(model):
    """The UNet's Linear and Conv2d layers under diffusers' names (as kohya names them), with their shapes."""
    unet = model.model.diffusion_model
    return {name: tuple(unet.get_submodule(path).weight.shape) for path, name in unet_diffusers_names(unet).items()
            if isinstance(unet.get_submodule(path), (torch.nn.Linear, torch.nn.Conv2d))}


@pytest.fixture(scope="module")
def lora_file(tiny_pipe, tmp_path_factory):
    """A kohya-ss file for every layer of the tiny model's UNet and CLIP text encoder."""
    folder = tmp_path_factory.mktemp("lora")
    return write_kohya_lora(folder / "style.safetensors", _unet_layers(tiny_pipe.model),
                            clip_text_layers(tiny_pipe.model.cond_stage_model.transformer))


@pytest.fixture(scope="module")
def embedding_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedding") / "look.pt"
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"string_to_param": {"*": vectors}, "name": "look", "step": 100}, path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------------
def test_a_lora_changes_the_images_with_its_weight_and_weight_0_is_the_base_model(tiny, tiny_pipe, lora_file, capsys):
    plain = pixel_array(tiny_pipe("a red circle", **CALL))
    pipe = tiny.load(lora=[f"{lora_file}:0.7"])
    handle, = pipe.loras
    # the tiny CLIP has one layer: q, k, v, out, fc1, fc2
    assert handle.counts == {"unet": len(_unet_layers(tiny_pipe.model)), "text_encoder": 6}
    assert f"LoRA {lora_file}: {len(handle.layers)} layers (UNet " in capsys.readouterr().out
    strong = pipe("a red circle", **CALL)
    assert 'LoRA: "style:0.7"' in strong[0].info["parameters"]
    handle.weight = 0.35
    weaker = pipe("a red circle", **CALL)
    assert 'LoRA: "style:0.35"' in weaker[0].info["parameters"]
    assert np.abs(pixel_array(strong) - plain).mean() > np.abs(pixel_array(weaker) - plain).mean() > 0.5
    handle.weight = 0.0
    assert np.array_equal(pixel_array(pipe("a red circle", **CALL)), plain)
    assert np.array_equal(pixel_array(tiny.load(lora=f"{lora_file}:0")("a red circle", **CALL)), plain)
    handle.remove()
    assert np.array_equal(pixel_array(pipe("a red circle", **CALL)), plain)
    assert "LoRA" not in pipe("a red circle", **CALL)[0].info["parameters"]


def test_an_embedding_token_changes_the_images_of_prompts_that_use_it(tiny, tiny_pipe, embedding_file):
    pipe = tiny.load(embeddings=[embedding_file])
    handle, = pipe.embeddings
    assert handle.token == "look" and handle.encoder is pipe.model.cond_stage_model
    without = pipe("a red circle", **CALL)
    assert np.array_equal(pixel_array(without), pixel_array(tiny_pipe("a red circle", **CALL)))
    assert "Embeddings" not in without[0].info["parameters"]
    used = pipe("a red circle, look", **CALL)
    assert 'Embeddings: look' in used[0].info["parameters"]
    assert np.abs(pixel_array(used) - pixel_array(tiny_pipe("a red circle, look", **CALL))).mean() > 0.5
    negative = pipe("a red circle", negative_prompt="look", **CALL)
    assert 'Embeddings: look' in negative[0].info["parameters"]


def test_loras_go_on_before_compile_and_the_runtime_options(tiny, lora_file, monkeypatch):
    seen = []
    monkeypatch.setattr(api, "apply_runtime_options",
                        lambda model, opt: seen.append(bool(model.model.diffusion_model.out[2]._forward_hooks)))
    tiny.load(lora=lora_file, compile=True)
    assert seen == [True]


def test_bad_specs_are_refused_before_the_model_is_loaded(tiny, lora_file, monkeypatch):
    monkeypatch.setattr(api, "load_model", lambda *args: pytest.fail("the model was loaded"))
    cases = {f"{lora_file}:strong": (LoraError, "the weight after ':' must be a number, got 'strong'"),
             "missing.safetensors:0.5": (UsageError, "--lora: LoRA file not found: missing.safetensors"),
             "": (LoraError, "give a LoRA file")}
    for spec, (error, words) in cases.items():
        with pytest.raises(error, match=words):
            tiny.load(lora=[spec])
    with pytest.raises(UsageError, match="--embedding: embedding file not found: gone.pt"):
        tiny.load(embeddings="gone.pt")
    with pytest.raises(UsageError, match=r"--lora: give file names \(a string or a list of strings\), got 0.5"):
        tiny.load(lora=0.5)


def test_a_failing_file_leaves_nothing_applied(tiny, tiny_pipe, lora_file, tmp_path):
    save_file({"emb_params": torch.zeros(1, 768)}, str(tmp_path / "sd1.safetensors"))
    applied = []
    original = api.apply_adapters

    def spy(model, opt):
        applied.append(model)
        return original(model, opt)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "apply_adapters", spy)
        with pytest.raises(EmbeddingError, match="does not fit the text encoder"):
            tiny.load(lora=lora_file, embeddings=str(tmp_path / "sd1.safetensors"))
    model = applied[0]
    assert not any(module._forward_hooks for module in model.modules())


# ---------------------------------------------------------------------------------------------
# Scripts
# ---------------------------------------------------------------------------------------------
def test_the_script_makes_the_apis_pixels_and_records_the_lora_and_embedding(tiny, lora_file, embedding_file,
                                                                             tmp_path, capsys):
    flags = [*tiny.flags(), "--prompt", "look, a red circle", "--steps", "4", "--seed", "7", "--n_samples", "2",
             "--n_iter", "1", "--scale", "3.0", "--skip_grid", "--outdir", str(tmp_path),
             "--lora", f"{lora_file}:0.6", "--lora", f"{lora_file}:-0.2", "--embedding", f"{embedding_file}:look"]
    assert main_exit_code("txt2img.py", flags) == 0, capsys.readouterr().err
    written = files_under(tmp_path)
    pipe = tiny.load(lora=[f"{lora_file}:0.6", f"{lora_file}:-0.2"], embeddings=[f"{embedding_file}:look"])
    images = pipe("look, a red circle", **CALL)
    assert np.array_equal(pixel_array(images), pixel_array([Image.open(path) for path in written]))
    parameters = png_parameters(written[0])
    assert parameters["LoRA"] == "style:0.6, style:-0.2" and parameters["Embeddings"] == "look"


@pytest.mark.parametrize("spec, words", [
    ("{folder}/nothing.safetensors", "--lora: LoRA file not found: {folder}/nothing.safetensors"),
    ("{folder}/text.safetensors", "cannot read checkpoint {folder}/text.safetensors: the file is corrupted"),
    ("{folder}/pickle.pt", "{folder}/pickle.pt is not a .safetensors file"),
    ("{folder}/other.safetensors", "{folder}/other.safetensors matches no layer of the model"),
])
def test_a_bad_lora_file_is_one_line_and_exit_2_with_nothing_written(spec, words, tiny, tmp_path, capsys):
    (tmp_path / "text.safetensors").write_text("not a LoRA")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickle.pt")
    save_file({"lora_unet_nowhere.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_nowhere.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "other.safetensors"))
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [*tiny.flags(), "--steps", "2", "--outdir", str(outdir),
                                         "--lora", spec.format(folder=tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("txt2img.py: error: " + words.format(folder=tmp_path))
    assert not outdir.exists()


def test_the_help_shows_the_lora_and_embedding_flags():
    from ldm.inference.parsers import build_parser

    text = build_parser("img2img").format_help()
    assert "--lora FILE[:WEIGHT]" in text and "--embedding FILE[:TOKEN]" in text


# ---------------------------------------------------------------------------------------------
# The shipped shapes model
# ---------------------------------------------------------------------------------------------
def test_a_kohya_lora_on_the_shipped_shapes_model_changes_the_unet_and_names_the_unused_text_encoder(tmp_path,
                                                                                                      capsys):
    shapes = ldm.load("txt2img", device="cpu")
    path = tmp_path / "shapes-style.safetensors"
    write_kohya_lora(path, _unet_layers(shapes.model), {"text_model.encoder.layers.0.self_attn.q_proj": (128, 128)})
    call = dict(steps=4, seed=1, n=1, H=32, W=32)
    plain = pixel_array(shapes("a red circle", **call))
    styled = ldm.load("txt2img", device="cpu", lora=f"{path}:0.5")
    handle, = styled.loras
    lines = capsys.readouterr().out.strip().splitlines()
    assert handle.counts == {"unet": 168} and len(handle.unused_keys) == 3
    assert lines[-1] == (f"LoRA {path}: its 1 text-encoder layer is not used: the model's text encoder is "
                         "ShapesTextEncoder, not a CLIP text encoder of SD 1.x/2.x, which is what LoRA files name; "
                         "only the UNet is changed")
    assert np.abs(pixel_array(styled("a red circle", **call)) - plain).mean() > 1.0
    handle.weight = 0
    assert np.array_equal(pixel_array(styled("a red circle", **call)), plain)


def _floatpixel_array(pipe):
    run = api.prepare_run("txt2img", pipe.options("a red circle", **CALL), pipe.spec)
    return torch.cat([pixels for _, pixels, _ in pipe.generate(run)])


def test_a_lora_on_bf16_stored_weights_gives_the_images_of_bf16_autocast_over_float32_weights(tiny, lora_file,
                                                                                              monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    ours = tiny.load(lora=f"{lora_file}:0.7")
    assert ours.weights_dtype is torch.bfloat16
    autocast_over_float32 = dataclasses.replace(tiny.load(lora=f"{lora_file}:0.7", precision="full"),
                                                dtype=torch.bfloat16)
    assert torch.equal(_floatpixel_array(ours), _floatpixel_array(autocast_over_float32))
