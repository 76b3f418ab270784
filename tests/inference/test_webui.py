"""The web UI's backend without a browser: tabs' controls with the scripts' defaults, the model
picker, the model cache, a generation saved as the script saves it with per-step progress, and a
PNG's parameters read back into controls."""
import pytest

from ldm.inference import webui
from ldm.inference.errors import UsageError
from ldm.inference.images import read_parameters
from ldm.inference.parameters import GenerationParameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_controls_have_the_scripts_defaults_and_the_shipped_models_prompt():
    txt2img = webui.task_controls("txt2img")
    assert (txt2img["steps"], txt2img["scale"], txt2img["seed"], txt2img["n_iter"], txt2img["n_samples"]) == (
        50, 9.0, 42, 3, 3)
    assert txt2img["prompt"] == "a red circle above a blue square"
    assert txt2img["H"] is None and txt2img["sampler"] == "ddim"
    assert "sampler" not in webui.task_controls("img2img")  # DDIM only, as img2img.py
    assert webui.task_controls("img2img")["strength"] == 0.8
    assert "prompt" not in webui.task_controls("class")
    assert webui.task_inputs("inpaint") == ("init_img", "mask")


def test_the_model_picker_offers_the_shipped_models_that_fit_the_task():
    assert webui.checkpoint_choices("inpaint") == ["checkpoints/shapes-inpainting.safetensors",
                                                   "checkpoints/shapes-txt2img.safetensors"]
    assert webui.checkpoint_choices("depth2img") == ["checkpoints/shapes-depth.safetensors"]


def test_batch_count_and_size_become_n_images_batch_size_at_a_time():
    prompt, keywords = webui.call_keywords("txt2img", {"prompt": "a red circle", "n_iter": 3, "n_samples": 2,
                                                       "H": "", "W": "32", "scale": 9, "guide_color": ""})
    assert prompt == "a red circle"
    assert keywords == {"n": 6, "batch_size": 2, "H": None, "W": 32, "scale": 9.0, "guide_color": None}
    assert isinstance(keywords["scale"], float)  # written 9.0 in the parameters, as the script writes it


@pytest.mark.parametrize("values, message", [
    ({"n_iter": 0, "n_samples": 1}, "--n_iter must be at least 1, got 0"),
    ({"n_iter": 1, "n_samples": 1, "W": "wide"}, "--W must be a whole number, got 'wide'"),
])
def test_bad_fields_are_the_scripts_errors(values, message):
    with pytest.raises(UsageError, match=message):
        webui.call_keywords("txt2img", values)


def test_token_merging_is_a_field_whose_blank_is_off_and_is_read_back_from_the_parameters():
    assert webui.task_controls("txt2img")["token_merging"] is None
    _, keywords = webui.call_keywords("txt2img", {"n_iter": 1, "n_samples": 1, "token_merging": "0.5"})
    assert keywords["token_merging"] == 0.5
    _, keywords = webui.call_keywords("txt2img", {"n_iter": 1, "n_samples": 1, "token_merging": " "})
    assert keywords["token_merging"] is None
    text = GenerationParameters(prompt="a", negative_prompt="", steps=20, sampler="DDIM", cfg_scale=7.5, seed=1,
                                width=64, height=64, extra={"Token merging ratio": 0.3}).to_text()
    assert webui.controls_from_parameters(text)["token_merging"] == 0.3


def test_the_edit_tab_has_a_color_transfer_box_that_is_passed_on_and_read_back():
    assert webui.task_controls("edit")["color_transfer"] is False
    assert "color_transfer" not in webui.task_controls("img2img")
    _, keywords = webui.call_keywords("edit", {"n_iter": 1, "n_samples": 1, "color_transfer": True})
    assert keywords["color_transfer"] is True
    made = GenerationParameters(prompt="a", negative_prompt="", steps=50, sampler="DDIM", cfg_scale=5.0, seed=1,
                                width=64, height=64, extra={"Color transfer": True, "Keep": 0.6}).to_text()
    assert webui.controls_from_parameters(made)["color_transfer"] is True
    plain = GenerationParameters(prompt="a", negative_prompt="", steps=50, sampler="DDIM", cfg_scale=5.0, seed=1,
                                 width=64, height=64, extra={"Keep": 0.6}).to_text()
    assert "color_transfer" not in webui.controls_from_parameters(plain)


def test_class_names_are_split_at_commas():
    _, keywords = webui.call_keywords("class", {"classes": "0, blue square", "n_samples": 2})
    assert keywords == {"classes": ["0", "blue square"], "n": 2}


def test_parameters_read_back_into_controls():
    text = GenerationParameters(prompt="a red circle", negative_prompt="blue", steps=20, sampler="DPM++ 2M Karras",
                                cfg_scale=7.5, seed=123, width=64, height=32,
                                extra={"Denoising strength": 0.6}).to_text()
    assert webui.controls_from_parameters(text) == {
        "prompt": "a red circle", "negative_prompt": "blue", "steps": 20, "scale": 7.5, "seed": 123, "W": 64,
        "H": 32, "strength": 0.6, "sampler": "dpmpp_2m_karras"}


def test_a_generation_is_saved_as_the_script_saves_it_and_reports_each_step(tmp_path):
    models = webui.ModelCache(device="cpu", keep=2)
    reports = []
    values = dict(webui.task_controls("txt2img"), steps=2, n_iter=2, n_samples=1, seed=5)
    made = webui.generate(models, "txt2img", "checkpoints/shapes-txt2img.safetensors", "", values, str(tmp_path),
                          progress=lambda fraction, text: reports.append((round(fraction, 2), text)))
    folder = tmp_path / "txt2img-samples"
    assert [item.path for item in made] == [folder / "samples" / "00000.png", folder / "samples" / "00001.png"]
    assert (folder / "grid-0000.png").is_file()
    assert [read_parameters(str(item.path)) for item in made] == [item.parameters for item in made]
    assert "Seed: 6," in made[1].parameters
    assert reports == [(0.0, "batch 1/2"), (0.25, "batch 1/2, step 1/2"), (0.5, "batch 1/2, step 2/2"),
                       (0.5, "batch 2/2"), (0.75, "batch 2/2, step 1/2"), (1.0, "batch 2/2, step 2/2")]
    again = webui.generate(models, "txt2img", "", "", dict(values, n_iter=1), str(tmp_path))
    assert again[0].path == folder / "samples" / "00002.png"  # numbering goes on; nothing overwritten


def test_the_cache_keeps_one_model_per_file_and_shares_it_between_tasks():
    models = webui.ModelCache(device="cpu", keep=2)
    with models.pipeline("txt2img", None, None) as text_pipe:
        pass
    with models.pipeline("img2img", "checkpoints/shapes-txt2img.safetensors", None) as image_pipe:
        assert image_pipe.task == "img2img" and image_pipe.model is text_pipe.model
    with models.pipeline("inpaint", None, None) as inpaint_pipe:
        assert inpaint_pipe.spec.kind == "inpaint"
    with pytest.raises(UsageError, match="depth2img needs a depth-to-image model"):
        with models.pipeline("depth2img", "checkpoints/shapes-txt2img.safetensors", None):
            pass
