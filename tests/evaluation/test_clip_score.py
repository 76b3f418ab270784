"""CLIP score: 100 x cosine of transformers' own embeddings, the mean clipped at 0, offline."""
import numpy as np
import pytest
import torch

from ldm.evaluation.clip_score import ClipScorer, clip_score
from tests.evaluation.clip_folder import save_tiny_clip

PROMPTS = ["a red circle", "a blue square above a green star", "a photo of a cat " * 30]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_image_scores_are_100_times_the_cosine_clip_itself_computes(clip_folder):
    from transformers import CLIPModel, CLIPTokenizer

    images = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    scorer = ClipScorer(str(clip_folder))
    scores = scorer.image_scores([images[:2], images[2:]], PROMPTS, total=3)
    model = CLIPModel.from_pretrained(clip_folder, local_files_only=True).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_folder)(PROMPTS, padding=True, truncation=True, max_length=77,
                                                        return_tensors="pt")
    pixels = scorer.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        expected = 100 * out.logits_per_image.diagonal() / model.logit_scale.exp()
    np.testing.assert_allclose(scores, expected.double().numpy(), rtol=1e-4, atol=1e-4)


def test_the_set_score_is_the_mean_clipped_at_zero():
    assert clip_score(np.array([30.0, 10.0])) == 20.0
    assert clip_score(np.array([5.0, -15.0])) == 0.0


def test_a_folder_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(OSError, match="not a transformers CLIP model directory .*nothing is downloaded") as err:
        ClipScorer(str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(OSError, match="no such directory"):
        ClipScorer(str(tmp_path / "missing"))


def test_a_clip_folder_without_its_image_processor_is_one_clear_error(clip_folder, tmp_path):
    import shutil

    from ldm.modules.encoders.clip_model import ClipDirectoryError

    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_folder / name, tmp_path / name)
    with pytest.raises(ClipDirectoryError, match="CLIP image processor") as err:
        ClipScorer(str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
