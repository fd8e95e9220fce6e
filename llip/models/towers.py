"""Image and text towers assembled from open_clip's transformer blocks.

The vision tower is a ViT whose class token is generalised to `n_prefix` learnable tokens, each
with its own position embedding: 1 for CLIP/SigLIP (the class token), K for Llip (the mixture
tokens). It returns the prefix tokens after the final LayerNorm.
"""
import torch
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn


def init_transformer_(t: Transformer) -> None:
    """CLIP's initialisation: residual projections scaled down with depth."""
    attn_std = t.width ** -0.5
    proj_std = attn_std * (2 * t.layers) ** -0.5
    fc_std = (2 * t.width) ** -0.5
    for block in t.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def _transformer(width, layers, heads, mlp_ratio, quick_gelu, clip_init=True) -> Transformer:
    t = Transformer(width, layers, heads, mlp_ratio,
                    act_layer=QuickGELU if quick_gelu else nn.GELU, batch_first=True)
    if clip_init:  # else PyTorch's defaults (the Llip reference's vision blocks)
        init_transformer_(t)
    return t


class VisionTower(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, quick_gelu: bool, n_prefix: int, clip_init: bool = True):
        super().__init__()
        grid = image_size // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.prefix_tokens = nn.Parameter(scale * torch.randn(n_prefix, width))
        self.prefix_pos = nn.Parameter(scale * torch.randn(n_prefix, width))
        self.patch_pos = nn.Parameter(scale * torch.randn(grid * grid, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = _transformer(width, layers, heads, mlp_ratio, quick_gelu, clip_init)
        self.ln_post = LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2) + self.patch_pos  # B, grid^2, W
        prefix = (self.prefix_tokens + self.prefix_pos).expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.ln_pre(torch.cat([prefix, x], dim=1))
        x = self.transformer(x)
        return self.ln_post(x[:, : self.prefix_tokens.shape[0]])  # B, n_prefix, W


class TextTower(nn.Module):
    """Causal text transformer; the feature is the end-of-text token (the highest token id)."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.transformer = _transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_final = LayerNorm(width)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask.to(x.dtype))
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # B, W
