"""Independent references for the CLIP encoders' tests, written from the published rules and
formulas (not from our modules): open_clip's tokenization in plain Python, and the CLIP text and
image towers computed with torch.nn.MultiheadAttention in the original sequence-first layout."""
import gzip
import html

import regex
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.encoders.tokenizer import VOCAB_PATH, build_clip_tokenizer

LONG_PROMPT = " ".join(f"word{i}" for i in range(60))  # 170 content tokens (digits are single tokens)
PROMPTS = [
    "a red circle",
    "A photograph of an astronaut riding a horse, highly detailed!!! (masterpiece:1.2) [sic]",
    "it's a dog's life; they're here, we've won & I'd say you'll see",
    "café naïve façade, Ünïcödé ☃ 🎨 東京タワー",
    "",
    "  lots   of\twhitespace\n here ",
    "numbers 1234567 and 3.14159",
    LONG_PROMPT,
]
SOT, EOT = 49406, 49407


def _reference_tables():
    lines = gzip.open(VOCAB_PATH).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:48895]]
    first = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    byte_map, extra = {}, 0
    for b in range(256):
        if b in first:
            byte_map[b] = chr(b)
    for b in range(256):
        if b not in first:
            byte_map[b] = chr(256 + extra)
            extra += 1
    ordered = [byte_map[b] for b in first] + [byte_map[b] for b in range(256) if b not in first]
    vocab = ordered + [c + "</w>" for c in ordered] + [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, {m: r for r, m in enumerate(merges)}, byte_map


ENCODER, RANKS, BYTE_MAP = _reference_tables()
PATTERN = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                        r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def _bpe_word(word):
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
        best = min(pairs, key=lambda p: RANKS.get(p, float("inf")))
        if best not in RANKS:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def reference_content_ids(text, clean=True):
    if clean:
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
    ids = []
    for piece in PATTERN.findall(text):
        symbols = "".join(BYTE_MAP[b] for b in piece.encode("utf-8"))
        ids.extend(ENCODER[p] for p in _bpe_word(symbols))
    return ids


def reference_open_clip_tokenize(texts, length=77):
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = [SOT] + reference_content_ids(text) + [EOT]
        if len(tokens) > length:
            tokens = tokens[:length]
            tokens[-1] = EOT
        out[i, :len(tokens)] = torch.tensor(tokens)
    return out




def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _layer_norm(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)


def _attention(sd, prefix, width, heads):
    mha = nn.MultiheadAttention(width, heads)
    mha.load_state_dict({k: sd[prefix + k] for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                                                     "out_proj.bias")})
    return mha


def reference_blocks(x_lnd, sd, prefix, n_blocks, heads, act, mask):
    """Pre-LN residual blocks on a sequence-first [L, N, D] input, as OpenAI CLIP / open_clip 2.x run them."""
    width = x_lnd.shape[-1]
    for i in range(n_blocks):
        p = f"{prefix}resblocks.{i}."
        h = _layer_norm(x_lnd, sd, p + "ln_1")
        x_lnd = x_lnd + _attention(sd, p + "attn.", width, heads)(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = _layer_norm(x_lnd, sd, p + "ln_2")
        h = F.linear(act(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                     sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        x_lnd = x_lnd + h
    return x_lnd


def reference_text_states(sd, tokens, heads, n_blocks, act=F.gelu):
    """SD 2.x text conditioning: embeddings, the first ``n_blocks`` blocks under a causal mask, ln_final."""
    n = tokens.shape[1]
    x = F.embedding(tokens, sd["token_embedding.weight"]) + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = reference_blocks(x.permute(1, 0, 2), sd, "transformer.", n_blocks, heads, act, mask).permute(1, 0, 2)
    return _layer_norm(x, sd, "ln_final")


def reference_image_embedding(sd, image, heads, n_blocks, patch, act=F.gelu):
    """ViT pooled image embedding: patches + class token + positions, ln_pre, blocks, ln_post(class), proj."""
    x = F.conv2d(image, sd["visual.conv1.weight"], stride=patch)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _layer_norm(x, sd, "visual.ln_pre")
    x = reference_blocks(x.permute(1, 0, 2), sd, "visual.transformer.", n_blocks, heads, act, None).permute(1, 0, 2)
    return _layer_norm(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def save_tiny_clip_text_model(folder, hidden_size=32):
    """A tiny transformers CLIPTextModel (random, perturbed LayerNorms) and the CLIP tokenizer, saved
    to ``folder`` as a local model directory."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            hidden_act="quick_gelu", projection_dim=hidden_size, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1)
    torch.manual_seed(1)
    model = CLIPTextModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    return str(folder)
