"""Llip: the image embedding is contextualised by the caption it is compared with.

Image side: K mixture tokens Z_i (B, K, W) from the vision tower; token k has its own key and
value projection. Text side: the end-of-text feature g_j gives a query q_j = W_q g_j and a target
y_j = W_t g_j. Per head h: a_ijk = softmax_k(q_j^h . k_ik^h / tau) (no 1/sqrt(d)), and
x_ij = W_o concat_h(sum_k a_ijk v_ik^h). Score s_ij = exp(t) <x_ij/|x_ij|, y_j/|y_j|> + b.

Every pair (i, j) has its own x_ij, so the naive score materialises B_img x B_txt x D. The fast
path never builds x_ij: with U_i[(h,k)] = W_o[:, h] v_ik^h,
    <x_ij, y_j> = sum_hk a_ijk (v_ik^h . (W_o^T y_j)^h)       (linear in a)
    |x_ij|^2    = a_ij^T (U_i U_i^T) a_ij                      (quadratic form, HK x HK Gram)
which costs (HK)^2 per pair for the norm instead of D^2 for W_o x. It runs over blocks of texts
whose activations are recomputed in backward, so memory is bounded by B_img x chunk x HK
whatever the batch.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llip.models.towers import TextTower, VisionTower

EPS = 1e-12  # as F.normalize


def _attention(keys, queries, heads, tau):
    """(Bi, K, D), (Bt, D) -> softmax weights (Bi, Bt, H, K)."""
    bi, k, d = keys.shape
    q = queries.view(-1, heads, d // heads)
    kh = keys.view(bi, k, heads, d // heads)
    return torch.einsum("thd,ikhd->ithk", q, kh).div(tau).softmax(dim=-1)


def pair_scores_naive(keys, values, queries, targets, w_out, heads, tau):
    """Cosine <x_ij/|x_ij|, y_j> by building every x_ij: the reference for the fast path."""
    bi, k, d = keys.shape
    a = _attention(keys, queries, heads, tau)
    c = torch.einsum("ithk,ikhd->ithd", a, values.view(bi, k, heads, d // heads))
    x = c.reshape(bi, -1, d) @ w_out.T  # Bi, Bt, D
    return (F.normalize(x, dim=-1, eps=EPS) * targets).sum(-1)


def _by_head(x, heads):
    """(B, K, D) -> (H, B*K, D/H): one GEMM operand per head."""
    b, k, d = x.shape
    return x.reshape(b * k, heads, d // heads).transpose(0, 1)


def pair_scores_factored(keys, values, queries, targets, w_out, heads, tau):
    """Same value as pair_scores_naive without materialising x_ij (see module docstring).
    Every pairwise term is a large GEMM: (Bi*K x d_h) @ (d_h x Bt) per head, and the norm a
    batched (HK x HK) @ (HK x Bt) product per image."""
    bi, k, d = keys.shape
    bt, dh = queries.shape[0], d // heads
    q = queries.view(bt, heads, dh).permute(1, 2, 0)  # H, dh, Bt
    logits = torch.bmm(_by_head(keys, heads), q).view(heads, bi, k, bt)
    a = (logits / tau).softmax(dim=2)  # H, Bi, K, Bt
    y_back = (targets @ w_out).view(bt, heads, dh).permute(1, 2, 0)  # (W_o^T y_j) per head
    vh = _by_head(values, heads)  # H, Bi*K, dh
    numer = (torch.bmm(vh, y_back).view(heads, bi, k, bt) * a).sum(dim=(0, 2))
    u = torch.bmm(vh, w_out.view(d, heads, dh).permute(1, 2, 0))  # H, Bi*K, D: W_o[:, h] v
    u = u.view(heads, bi, k, d).permute(1, 0, 2, 3).reshape(bi, heads * k, d)
    gram = u @ u.transpose(1, 2)  # Bi, HK, HK
    af = a.permute(1, 0, 2, 3).reshape(bi, heads * k, bt)  # Bi, HK, Bt
    sq_norm = (torch.bmm(gram, af) * af).sum(dim=1)
    return numer / sq_norm.clamp_min(0).sqrt().clamp_min(EPS)


class LlipHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        k, w, d = cfg.mixture_tokens, cfg.vision_width, cfg.embed_dim
        self.heads, self.tau, self.chunk = cfg.cross_attn_heads, cfg.cross_attn_tau, cfg.llip_chunk
        self.key_proj = nn.Parameter(w ** -0.5 * torch.randn(k, w, d))  # one matrix per token
        self.value_proj = nn.Parameter(w ** -0.5 * torch.randn(k, w, d))
        self.query_proj = nn.Linear(cfg.text_width, d, bias=False)
        self.target_proj = nn.Linear(cfg.text_width, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        norm = (lambda: nn.LayerNorm(d)) if cfg.cross_attn_qkv_norm else nn.Identity
        self.q_norm, self.k_norm, self.v_norm = norm(), norm(), norm()
        self.logit_scale = nn.Parameter(torch.full((1,), cfg.init_logit_scale))
        self.logit_bias = nn.Parameter(torch.full((1,), cfg.logit_bias_init))
        self.zero_query = cfg.llip_query == "zero"
        if cfg.init == "reference":  # the authors' release: normal(0, fan_in^-1/2) matrices
            for proj in (self.query_proj, self.target_proj, self.out_proj):
                nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        # Factored path wins while the HK x HK Gram is cheaper than D x D per pair.
        self.factored = self.heads * k <= d
        self.recompute_blocks = True  # off only where memory does not matter (FLOP counting)

    def encode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, W) mixture tokens -> (B, 2, K, D): per-token keys and values."""
        keys = self.k_norm(torch.einsum("bkw,kwd->bkd", tokens, self.key_proj))
        values = self.v_norm(torch.einsum("bkw,kwd->bkd", tokens, self.value_proj))
        return torch.stack([keys, values], dim=1)

    def encode_text(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, W_text) end-of-text feature -> (B, 2, D): query and unit-norm target."""
        query = self.q_norm(self.query_proj(feature))
        if self.zero_query:  # control: uniform attention, same parameters and compute
            query = query * 0.0
        target = F.normalize(self.target_proj(feature), dim=-1)
        return torch.stack([query, target], dim=1)

    def attention(self, image_kv, text_qy, tau=None):
        """(Bi, 2, K, D) x (Bt, 2, D) -> the softmax weights (Bi, Bt, H, K) over the K mixture
        tokens (diagnostics; training never builds them all at once)."""
        return _attention(image_kv[:, 0], text_qy[:, 0], self.heads,
                          self.tau if tau is None else float(tau))

    def cosines(self, image_kv, text_qy, tau=None):
        """(Bi, 2, K, D) x (Bt, 2, D) -> (Bi, Bt) cosines, in blocks of `chunk` texts.
        `tau` overrides the training temperature (the reference reports evals at several)."""
        fn = pair_scores_factored if self.factored else pair_scores_naive
        keys, values = image_kv.unbind(1)
        w_out = self.out_proj.weight
        tau = self.tau if tau is None else float(tau)
        blocks = []
        for start in range(0, text_qy.shape[0], self.chunk):
            q, y = text_qy[start: start + self.chunk].unbind(1)
            args = (keys, values, q, y, w_out, self.heads, tau)
            if torch.is_grad_enabled() and self.recompute_blocks:  # recomputed in backward
                blocks.append(checkpoint(fn, *args, use_reentrant=False))
            else:
                blocks.append(fn(*args))
        return torch.cat(blocks, dim=1)


class LlipModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.visual = VisionTower(cfg.image_size, cfg.patch_size, cfg.vision_width,
                                  cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio,
                                  cfg.quick_gelu, n_prefix=cfg.mixture_tokens,
                                  clip_init=cfg.init == "ours")
        self.text = TextTower(cfg.vocab_size, cfg.context_length, cfg.text_width,
                              cfg.text_layers, cfg.text_heads, cfg.text_mlp_ratio or cfg.mlp_ratio,
                              cfg.quick_gelu)
        self.head = LlipHead(cfg)

    @property
    def logit_scale(self):
        return self.head.logit_scale

    @property
    def logit_bias(self):
        return self.head.logit_bias

    def encode_image(self, images):
        return self.head.encode_image(self.visual(images))

    def encode_text(self, tokens):
        return self.head.encode_text(self.text(tokens))

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens)

    def mean_text(self, text_emb):
        """Average several prompts (dim 0): queries are averaged, targets averaged and renormed."""
        query, target = text_emb.mean(0).unbind(0)
        return torch.stack([query, F.normalize(target, dim=-1)], dim=0)

    def logits(self, image_emb, text_emb, tau=None):
        """All pairs: (Bi, 2, K, D) x (Bt, 2, D) -> (Bi, Bt) = exp(t) * cosine + b; `tau`: an
        eval-time softmax temperature over the mixture tokens (None: the trained one)."""
        return self.head.logit_scale.exp() * self.head.cosines(image_emb, text_emb, tau) \
            + self.head.logit_bias
