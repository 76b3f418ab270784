"""Nearest-neighbour vector quantizer of VQ-VAE (van den Oord et al. 2017), with the layout and
behaviour of taming-transformers' ``VectorQuantizer2`` that the VQ latent-diffusion first stages
were trained with (parameter ``embedding.weight`` [n_e, e_dim], optional index remapping)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange


class VectorQuantizer(nn.Module):
    """Replace each latent vector by its nearest codebook entry.

    Returns ``(z_q, loss, (perplexity, min_encodings, min_encoding_indices))`` where ``z_q`` passes
    gradients straight through to ``z`` and ``loss`` is the codebook + commitment loss of
    van den Oord et al. 2017, eq. 3. With ``legacy=True`` (the default, as trained) ``beta``
    weights the codebook term instead of the commitment term, reproducing taming's historical
    variant. ``perplexity`` and ``min_encodings`` are None, as in taming's VectorQuantizer2.

    ``remap`` names a ``.npy`` file of used code indices; indices are then reported in that
    reduced set, and codes outside it map to ``unknown_index`` ("random", "extra" or an int).
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap: Optional[str] = None,
                 unknown_index: Union[str, int] = "random", sane_index_shape: bool = False,
                 legacy: bool = True):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

        self.remap = remap
        self.re_embed = n_e
        if remap is not None:
            self.register_buffer("used", torch.tensor(np.load(remap)))
            self.re_embed = self.used.shape[0]
            self.unknown_index = unknown_index
            if unknown_index == "extra":
                self.unknown_index = self.re_embed
                self.re_embed = self.re_embed + 1
        self.sane_index_shape = sane_index_shape

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Codebook indices -> positions in the ``used`` list (batch-first, at least 2-D)."""
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, ...]).long()
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape, device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(shape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in the ``used`` list -> codebook indices (the "extra" index maps to 0)."""
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:
            inds = inds.clone()
            inds[inds >= self.used.shape[0]] = 0
        back = torch.gather(used[None, :].expand(inds.shape[0], -1), 1, inds)
        return back.reshape(shape)

    def nearest_code_indices(self, z_flat: torch.Tensor) -> torch.Tensor:
        """argmin_j ||z - e_j||^2, expanded as ||z||^2 + ||e_j||^2 - 2 z.e_j to avoid the
        [N, n_e, e_dim] difference tensor. Always in float32, outside autocast: in half precision
        the near-ties of a large codebook flip (a fifth of the codes of an 8192 x 3 codebook
        under bfloat16), and the decoded image with them."""
        with torch.autocast(device_type=z_flat.device.type, enabled=False):
            z_flat, codebook = z_flat.float(), self.embedding.weight.float()
            distances = (z_flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)
                         - 2 * z_flat @ codebook.t())
        return torch.argmin(distances, dim=1)

    def forward(self, z: torch.Tensor, temp: Optional[float] = None, rescale_logits: bool = False,
                return_logits: bool = False) -> Tuple[torch.Tensor, torch.Tensor, tuple]:
        if not (temp is None or temp == 1.0) or rescale_logits or return_logits:
            raise ValueError("temp, rescale_logits and return_logits exist only for interface "
                             "compatibility with the Gumbel quantizer; leave them at their defaults")
        z = rearrange(z, "b c h w -> b h w c").contiguous()
        min_encoding_indices = self.nearest_code_indices(z.view(-1, self.e_dim))
        z_q = self.embedding(min_encoding_indices).view(z.shape)

        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        commitment_term = torch.mean((z_q.detach() - z) ** 2)
        if self.legacy:
            loss = commitment_term + self.beta * codebook_term
        else:
            loss = self.beta * commitment_term + codebook_term

        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()

        if self.remap is not None:
            min_encoding_indices = self.remap_to_used(min_encoding_indices.reshape(z.shape[0], -1))
            min_encoding_indices = min_encoding_indices.reshape(-1, 1)
        if self.sane_index_shape:
            min_encoding_indices = min_encoding_indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, min_encoding_indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """Codebook vectors of ``indices``; with ``shape`` = (batch, height, width, channel) they
        are returned as a (batch, channel, height, width) latent."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


VectorQuantizer2 = VectorQuantizer
