"""The other encoders of ldm/modules/encoders/modules.py: class labels, spatial rescaling, LDM's BERT
and transformer embedders, T5 from a local directory, unCLIP's noise augmentation, and what the
module imports."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules.util import make_beta_schedule, timestep_embedding
from ldm.modules.encoders import openclip
from ldm.modules.encoders.modules import (BERTEmbedder, BERTTokenizer, ClassEmbedder, FrozenCLIPT5Encoder,
                                          FrozenCLIPTextEmbedder, FrozenT5Embedder, IdentityEncoder, SpatialRescaler,
                                          TransformerEmbedder, disabled_train)
from ldm.util import instantiate_from_config
from tests.modules.encoders.clip_reference import save_tiny_clip_text_model

BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert_tokenizer")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(BERT_WORDS)}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = tmp_path_factory.mktemp("t5")
    pieces = ["<pad>", "</s>", "<unk>", "\u2581a", "\u2581red", "\u2581circle", "\u2581", "a", "e", "r", "d"]
    T5Tokenizer(vocab=[(p, -float(i)) for i, p in enumerate(pieces)], extra_ids=0).save_pretrained(folder)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                            num_heads=2)).save_pretrained(folder)
    return str(folder)


def test_importing_the_encoders_imports_no_optional_or_heavy_package():
    code = ("import sys, ldm.modules.encoders.modules; "
            "print([m for m in ('open_clip', 'torchvision', 'timm', 'clip', 'transformers', 'kornia') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_class_embedder_embeds_labels_as_one_token():
    embedder = ClassEmbedder(embed_dim=8, n_classes=11, key="class_label").eval()
    labels = torch.tensor([0, 3, 10])
    z = embedder({"class_label": labels})
    assert z.shape == (3, 1, 8)
    torch.testing.assert_close(z[:, 0], embedder.embedding.weight[labels])


def test_class_embedder_drops_to_the_unconditional_class_in_training_only():
    embedder = ClassEmbedder(embed_dim=4, n_classes=5, ucg_rate=1.0)
    labels = {"class": torch.tensor([0, 1, 2])}
    uncond = embedder.embedding.weight[4].expand(3, 1, 4)
    torch.testing.assert_close(embedder.train()(labels), uncond)
    assert not torch.allclose(embedder.train()(labels, disable_dropout=True), uncond)
    assert not torch.allclose(embedder.eval()(labels), uncond)


def test_class_embedder_dropout_rate_is_about_ucg_rate():
    embedder = ClassEmbedder(embed_dim=2, n_classes=3, ucg_rate=0.25).train()
    z = embedder({"class": torch.zeros(4000, dtype=torch.long)})
    dropped = (z[:, 0] == embedder.embedding.weight[2]).all(dim=1).float().mean().item()
    assert abs(dropped - 0.25) < 0.03


def test_unconditional_conditioning_is_the_last_class_on_the_weights_device():
    embedder = ClassEmbedder(embed_dim=4, n_classes=7, key="y")
    uc = embedder.get_unconditional_conditioning(3)
    assert uc["y"].tolist() == [6, 6, 6] and uc["y"].dtype == torch.long
    assert embedder.get_unconditional_conditioning(2, device="meta")["y"].device.type == "meta"


def test_spatial_rescaler_resizes_per_stage_and_maps_channels():
    x = torch.randn(2, 3, 32, 32)
    assert SpatialRescaler(n_stages=2)(x).shape == (2, 3, 8, 8)
    remap = SpatialRescaler(n_stages=1, method="nearest", in_channels=3, out_channels=5, bias=True)
    torch.testing.assert_close(remap.encode(x), remap.channel_mapper(F.interpolate(x, scale_factor=0.5)))
    with pytest.raises(ValueError, match="method must be one of"):
        SpatialRescaler(method="lanczos")


def test_identity_encoder_and_disabled_train():
    assert IdentityEncoder().encode("anything") == "anything"
    module = torch.nn.Linear(2, 2).eval()
    module.train = disabled_train.__get__(module)
    assert module.train() is module and not module.training


def test_bert_tokenizer_builds_offline_and_names_the_missing_files_when_used(tmp_path):
    for folder in (tmp_path / "nowhere", tmp_path):  # transformers 5 would build an empty vocabulary here
        tokenizer = BERTTokenizer(vq_interface=False, version=str(folder))
        with pytest.raises(OSError, match="BERT tokenizer .*vocab.txt.* nothing is downloaded"):
            tokenizer("a red circle")


def test_bert_tokenizer_from_local_directory_pads_to_max_length(bert_dir):
    tokenizer = BERTTokenizer(vq_interface=True, max_length=8, version=bert_dir)
    _, _, (_, _, tokens) = tokenizer.encode(["a red circle", "blue"])
    assert tokens.tolist() == [[2, 5, 6, 7, 3, 0, 0, 0], [2, 8, 3, 0, 0, 0, 0, 0]]


def test_bert_embedder_is_trainable_and_embeds_prompts(bert_dir):
    embedder = BERTEmbedder(n_embed=32, n_layer=2, vocab_size=len(BERT_WORDS), max_seq_len=8,
                            tokenizer_version=bert_dir)
    z = embedder.encode(["a red circle", "blue square"])
    assert z.shape == (2, 8, 32) and all(p.requires_grad for p in embedder.parameters())
    direct = BERTEmbedder(n_embed=32, n_layer=2, vocab_size=len(BERT_WORDS), max_seq_len=8, use_tokenizer=False)
    direct.load_state_dict(embedder.state_dict())
    torch.testing.assert_close(direct(embedder.tknz_fn(["a red circle", "blue square"])), z)


def test_transformer_embedder_maps_tokens_to_embeddings():
    embedder = TransformerEmbedder(n_embed=32, n_layer=1, vocab_size=50, max_seq_len=10)
    assert embedder.encode(torch.randint(0, 50, (3, 10))).shape == (3, 10, 32)


def test_t5_encoder_loads_from_a_local_directory_only(t5_dir):
    encoder = FrozenT5Embedder(version=t5_dir, max_length=6)
    z = encoder(["a red circle", "a"])
    assert z.shape == (2, 6, 16) and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(OSError, match="T5 tokenizer 'nobody/uncached-t5'.* nothing is downloaded"):
        FrozenT5Embedder(version="nobody/uncached-t5")


def test_clip_t5_encoder_returns_both_encodings(t5_dir, tmp_path):
    clip_dir = save_tiny_clip_text_model(tmp_path / "clip")
    encoder = FrozenCLIPT5Encoder(clip_version=clip_dir, t5_version=t5_dir, t5_max_length=6)
    clip_z, t5_z = encoder.encode(["a red circle"])
    assert clip_z.shape == (1, 77, 32) and t5_z.shape == (1, 6, 16)


def test_openai_clip_text_embedder_returns_unit_norm_features_repeated(monkeypatch):
    tiny = openclip.CLIPArch(16, 32, 4, 2, 32, 1, 4, 8, image_size=16, quick_gelu=True, openai_layout=True)
    monkeypatch.setitem(openclip.OPENAI_ARCHS, "tiny/test", tiny)
    embedder = FrozenCLIPTextEmbedder(version="tiny/test", n_repeat=3)
    z = embedder.encode(["a red circle", "blue"])
    assert z.shape == (2, 3, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 3))


def _noise_augmentor(**params):
    config = {"target": "ldm.modules.encoders.modules.CLIPEmbeddingNoiseAugmentation",
              "params": {"timestep_dim": 8, "noise_schedule_config": {"timesteps": 1000,
                                                                      "beta_schedule": "squaredcos_cap_v2"},
                         **params}}
    return instantiate_from_config(config)


def test_noise_augmentation_follows_q_sample_in_standardised_space(tmp_path):
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    torch.save((mean, std), tmp_path / "stats.th")
    augmentor = _noise_augmentor(clip_stats_path=str(tmp_path / "stats.th"))
    assert [k for k in augmentor.state_dict()] == [
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"]
    x, level = torch.randn(3, 8), torch.tensor([0, 500, 999])
    torch.manual_seed(5)
    z, emb = augmentor(x, noise_level=level)
    torch.manual_seed(5)
    noise = torch.randn(3, 8)
    abar = torch.cumprod(1 - torch.tensor(make_beta_schedule("squaredcos_cap_v2", 1000)), 0).float()[level, None]
    expected = (abar.sqrt() * (x - mean) / std + (1 - abar).sqrt() * noise) * std + mean
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb, timestep_embedding(level, 8))
    given, _ = augmentor(x, noise_level=level, noise=noise)  # the same draw handed in by the caller
    torch.testing.assert_close(given, expected, rtol=1e-5, atol=1e-5)


def test_noise_augmentation_reads_its_stats_file_with_the_checkpoint_checks(tmp_path):
    """The statistics file is named by a config and read like a checkpoint: a pickle that would
    allocate more than the file holds is refused, and so is anything but a (mean, std) pair."""
    import pickle

    from ldm.util import CheckpointError

    hostile = tmp_path / "hostile.th"
    hostile.write_bytes(pickle.dumps((bytearray(10 ** 6), 1), protocol=2))
    with pytest.raises(CheckpointError):
        _noise_augmentor(clip_stats_path=str(hostile))
    torch.save({"mean": torch.zeros(8)}, tmp_path / "not_a_pair.th")
    with pytest.raises(CheckpointError, match="does not hold the \\(mean, std\\) pair"):
        _noise_augmentor(clip_stats_path=str(tmp_path / "not_a_pair.th"))


def test_noise_augmentation_builds_without_its_stats_file_but_refuses_to_run(tmp_path):
    augmentor = _noise_augmentor(clip_stats_path=str(tmp_path / "ViT-L-14_stats.th"))
    with pytest.raises(FileNotFoundError, match="ViT-L-14_stats.th"):
        augmentor(torch.randn(2, 8))
    z, emb = _noise_augmentor()(torch.randn(2, 8))
    assert z.shape == (2, 8) and emb.shape == (2, 8)


def test_a_text_encoder_with_random_weights_says_so_once_when_it_encodes(tmp_path):
    """A hub name as version builds the architecture with random weights (nothing downloads); the
    checkpoint normally brings them. Encoding without them is said once; after a state dict, not."""
    import warnings

    from ldm.modules.encoders.modules import FrozenCLIPEmbedder

    encoder = FrozenCLIPEmbedder("openai/clip-vit-base-patch32", max_length=8)
    with pytest.warns(UserWarning, match=r"FrozenCLIPEmbedder encodes with random weights: no local weights for "
                                         r"'openai/clip-vit-base-patch32'.*it is frozen, so it will not learn"):
        encoder.encode(["a red circle"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a blue square"])
        loaded = FrozenCLIPEmbedder("openai/clip-vit-base-patch32", max_length=8)
        loaded.load_state_dict(encoder.state_dict())
        loaded.encode(["a red circle"])
