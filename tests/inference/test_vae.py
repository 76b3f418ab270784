"""``--vae FILE`` on the scripts and ``ldm.load(vae=...)`` (ldm/inference/vae.py): another file's
autoencoder weights replace the model's after it is loaded, from a VAE file, a Lightning
autoencoder checkpoint or a whole latent-diffusion checkpoint; anything that does not fit is one
line naming the keys; the images record the file as AUTOMATIC1111 does."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ldm
from ldm.inference.errors import UsageError
from ldm.inference.loading import model_hash
from tests.scripts.helpers import files_under, main_exit_code, pixel_array, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CALL = dict(steps=4, seed=5, n=1, scale=3.0)
PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def autoencoder(tiny_pipe):
    """The tiny model's own autoencoder weights."""
    return {key: value.clone() for key, value in tiny_pipe.model.first_stage_model.state_dict().items()}


@pytest.fixture(scope="module")
def other_vae(autoencoder, tmp_path_factory):
    """A VAE file whose decoder differs from the model's (its encoder the same, as a fine-tuned decoder's)."""
    state = dict(autoencoder)
    generator = torch.Generator().manual_seed(1)
    for key in [k for k in state if k.startswith("decoder.")]:
        state[key] = state[key] + 0.05 * torch.randn(state[key].shape, generator=generator)
    path = tmp_path_factory.mktemp("vae") / "other-vae.safetensors"
    save_file(state, str(path))
    return path


def test_a_vae_file_replaces_the_autoencoder_weights_and_changes_only_the_decoded_images(tiny, tiny_pipe, other_vae):
    pipe = tiny.load(vae=str(other_vae))
    expected = load_file(str(other_vae))
    for key, value in pipe.model.first_stage_model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    for key, value in pipe.model.model.state_dict().items():
        assert torch.equal(value, tiny_pipe.model.model.state_dict()[key]), key
    swapped, plain = pixel_array(pipe("a red circle", **CALL)), pixel_array(tiny_pipe("a red circle", **CALL))
    assert np.abs(swapped - plain).mean() > 1.0


def test_the_models_own_autoencoder_as_vae_gives_its_images_bit_for_bit(tiny, tiny_pipe, autoencoder, tmp_path):
    path = tmp_path / "same.safetensors"
    save_file(autoencoder, str(path))
    images = tiny.load(vae=str(path))("a red circle", **CALL)
    assert np.array_equal(pixel_array(images), pixel_array(tiny_pipe("a red circle", **CALL)))


def test_a_whole_checkpoint_or_a_lightning_autoencoder_checkpoint_also_works(tiny, other_vae, tmp_path):
    state = load_file(str(other_vae))
    whole = tmp_path / "whole.safetensors"
    save_file({**{PREFIX + key: value for key, value in state.items()}, "model.diffusion_model.x": torch.zeros(2)},
              str(whole))
    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**state, "loss.logvar": torch.zeros(()), "model_ema.decay": torch.tensor(0.999),
                               "model_ema.num_updates": torch.tensor(5)}, "global_step": 10}, lightning)
    reference = pixel_array(tiny.load(vae=str(other_vae))("a red circle", **CALL))
    for path in (whole, lightning):
        assert np.array_equal(pixel_array(tiny.load(vae=str(path))("a red circle", **CALL)), reference)


def test_the_images_record_the_vae_as_automatic1111_does(tiny, other_vae, tmp_path, capsys):
    flags = [*tiny.flags(), "--prompt", "a red circle", "--steps", "4", "--seed", "5", "--n_samples", "1",
             "--n_iter", "1", "--scale", "3.0", "--skip_grid", "--outdir", str(tmp_path), "--vae", str(other_vae)]
    assert main_exit_code("txt2img.py", flags) == 0, capsys.readouterr().err
    written, = files_under(tmp_path)
    parameters = png_parameters(written)
    assert parameters["VAE"] == "other-vae.safetensors" and parameters["VAE hash"] == model_hash(str(other_vae))
    image = tiny.load(vae=str(other_vae))("a red circle", **CALL)[0]
    assert "VAE: other-vae.safetensors" in image.info["parameters"]


@pytest.mark.parametrize("change, words", [
    (lambda state: {k: v for k, v in state.items() if k != "decoder.conv_out.bias"},
     "does not fit the model: autoencoder (first_stage_model): 1 tensors missing from the checkpoint "
     "(e.g. first_stage_model.decoder.conv_out.bias)"),
    (lambda state: {**state, "decoder.extra.weight": torch.zeros(1)},
     "does not fit the model: autoencoder (first_stage_model): 1 tensors not used by the model "
     "(e.g. first_stage_model.decoder.extra.weight)"),
    (lambda state: {**state, "decoder.conv_out.bias": torch.zeros(5)},
     "does not fit the model: autoencoder (first_stage_model): 1 tensors of the wrong shape "
     "(e.g. first_stage_model.decoder.conv_out.bias (5,) vs model (3,))"),
])
def test_a_file_that_does_not_fit_is_one_line_and_exit_2_with_nothing_written(change, words, tiny, autoencoder,
                                                                              tmp_path, capsys):
    path = tmp_path / "bad.safetensors"
    save_file(change(dict(autoencoder)), str(path))
    with pytest.raises(UsageError, match=r"^--vae: .*" + words.replace("(", r"\(").replace(")", r"\)")):
        tiny.load(vae=str(path))
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [*tiny.flags(), "--steps", "2", "--outdir", str(outdir), "--vae", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"txt2img.py: error: --vae: {path} {words}"
    assert not outdir.exists()


def test_a_file_without_autoencoder_weights_says_so(tiny, tmp_path):
    path = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3), "alphas_cumprod": torch.ones(4)},
              str(path))
    with pytest.raises(UsageError, match=r"^--vae: .* holds no autoencoder weights \(no encoder\.\*, decoder\.\* or "
                                         r"first_stage_model\.\* tensors\)$"):
        tiny.load(vae=str(path))


def test_a_vae_in_diffusers_layout_is_named_as_such(tiny, tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3),
               "decoder.up_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(UsageError, match=r"^--vae: .* is a VAE in diffusers' layout \(encoder.down_blocks...\); "):
        tiny.load(vae=str(path))


def test_a_missing_file_is_refused_before_the_model_is_loaded(tiny, tmp_path, monkeypatch):
    from ldm.inference import api

    monkeypatch.setattr(api, "load_model", lambda *args: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError, match="^--vae: autoencoder file not found: .*nothing.safetensors$"):
        tiny.load(vae=str(tmp_path / "nothing.safetensors"))


def test_a_pixel_space_model_has_no_autoencoder_to_replace(tiny_sampling_models, other_vae):
    ddpm = tiny_sampling_models["ddpm"]
    with pytest.raises(UsageError, match="^--vae: this model has no autoencoder to replace"):
        ldm.load("unconditional", ckpt=str(ddpm.ckpt), config=str(ddpm.config), device="cpu", vae=str(other_vae))


def test_the_help_shows_the_vae_flag():
    from ldm.inference.parsers import build_parser

    assert "--vae FILE" in build_parser("img2img").format_help()
