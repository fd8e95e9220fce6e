"""CLIP and SigLIP: one embedding per image and per text, score = scale * cosine (+ bias)."""
import torch
import torch.nn.functional as F
from torch import nn

from llip.models.towers import TextTower, VisionTower


class DualEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.visual = VisionTower(cfg.image_size, cfg.patch_size, cfg.vision_width,
                                  cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio,
                                  cfg.quick_gelu, n_prefix=1, clip_init=cfg.init == "ours")
        self.text = TextTower(cfg.vocab_size, cfg.context_length, cfg.text_width,
                              cfg.text_layers, cfg.text_heads, cfg.text_mlp_ratio or cfg.mlp_ratio,
                              cfg.quick_gelu)
        self.image_proj = nn.Parameter(cfg.vision_width ** -0.5 *
                                       torch.randn(cfg.vision_width, cfg.embed_dim))
        self.text_proj = nn.Parameter(cfg.text_width ** -0.5 *
                                      torch.randn(cfg.text_width, cfg.embed_dim))
        # 1-D (not 0-D) so that FSDP2 can shard them like any other parameter.
        self.logit_scale = nn.Parameter(torch.full((1,), cfg.init_logit_scale))
        self.logit_bias = (nn.Parameter(torch.full((1,), cfg.logit_bias_init))
                           if cfg.loss == "siglip" else None)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images)[:, 0] @ self.image_proj, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens) @ self.text_proj, dim=-1)

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens)

    def mean_text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Average embeddings of several prompts (dim 0) into one, e.g. over templates."""
        return F.normalize(text_emb.mean(0), dim=-1)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor, tau=None) -> torch.Tensor:
        """All pairs: (B_img, D) x (B_txt, D) -> (B_img, B_txt); `tau` is Llip's and ignored."""
        out = self.logit_scale.exp() * image_emb @ text_emb.T
        return out if self.logit_bias is None else out + self.logit_bias
