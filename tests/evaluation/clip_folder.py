"""A toy transformers CLIPModel saved with its tokenizer and image processor, as ``--clip`` wants."""
from pathlib import Path

import torch


def save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from ldm.evaluation.clip_score import _image_processor_class
    from ldm.modules.encoders.tokenizer import build_clip_tokenizer

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  hidden_act="quick_gelu", projection_dim=16)
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, **common),
                        vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    build_clip_tokenizer(77).save_pretrained(folder)
    _image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
