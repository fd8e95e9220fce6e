"""Llip attention diagnostics: how each prompt spreads its attention over the K mixture tokens.

entropy  normalised entropy of the weights over the K tokens, H(a_ij.) / ln K, averaged over
         images, prompts and heads: 1 = uniform (no selection; the zero-query control), 0 = one
         token per prompt.
spread   how much the weights depend on the prompt: for each image and head, the total-variation
         distance between a prompt's weights and the image's mean weights over all prompts,
         averaged; 0 = every prompt attends the same way (no contextualisation: collapsed),
         up to 1 - 1/K when each prompt picks its own token.

Text-side collapse (`text_collapse`): prompts that should differ ("an object in the top left",
"... top right", ...) given nearly the same target (and, for Llip, the same query) make the
score ignore the image: whatever the image, every prompt gets nearly the same score. Measured as
the mean cosine over the distinct pairs of prompts; `COLLAPSED_COSINE` names a collapsed model.
"""
import math

import torch

from llip.evaluation.zeroshot import encode_texts

UNIFORM_ENTROPY = 0.95  # above: attention is (close to) uniform
COLLAPSED_SPREAD = 0.05  # below: attention does not depend on the prompt
# Above this mean pairwise target cosine (and, for Llip, query cosine) the prompts are collapsed.
# Why 0.99: two unit targets at cosine c are sqrt(2 (1 - c)) apart, so an image embedding scores
# them at most exp(t) sqrt(2 (1 - c)) logits apart; at c = 0.99 and the initial scale
# exp(t) = 1/0.07 that is 2.0 logits, against 28.6 between opposite targets (7% of the range).
# For Llip both routes must be shut: distinct queries alone can still pick different mixture
# tokens for the same target. Fixed before any run it was applied to.
COLLAPSED_COSINE = 0.99


def attention_weights(model, images, text_emb, tau=None) -> torch.Tensor:
    """(Bi, Bt, H, K) softmax weights; `text_emb` from model.encode_text."""
    return model.head.attention(model.encode_image(images), text_emb, tau)


def summarise(weights: torch.Tensor) -> dict:
    """weights (Bi, Bt, H, K) -> {"entropy", "spread", "verdict"}."""
    k = weights.shape[-1]
    w = weights.double()
    entropy = -(w * w.clamp_min(1e-30).log()).sum(-1) / math.log(k)
    spread = 0.5 * (w - w.mean(1, keepdim=True)).abs().sum(-1)
    out = {"entropy": entropy.mean().item(), "spread": spread.mean().item(), "tokens": k}
    out["verdict"] = ("uniform" if out["entropy"] > UNIFORM_ENTROPY else
                      "collapsed" if out["spread"] < COLLAPSED_SPREAD else "selective")
    return out


@torch.no_grad()
def attention_stats(model, tokenizer, image_batches, prompts, device="cpu", tau=None) -> dict:
    """Diagnostics of a Llip model over images x prompts (e.g. a set's class prompts)."""
    text_emb = encode_texts(model, tokenizer, prompts, device=device)
    weights = [attention_weights(model, images.to(device), text_emb, tau).float().cpu()
               for images in image_batches]
    if not weights:
        raise ValueError("no images were given")
    return {**summarise(torch.cat(weights)), "images": sum(len(w) for w in weights),
            "prompts": len(prompts)}


def _mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine over the pairs i < j of the rows of x (N, D). A pair of zero vectors counts
    as identical (cosine 1: the zero-query control's queries), a zero and a non-zero as 0."""
    x = x.double()
    norms = x.norm(dim=-1)
    zero = norms < 1e-12
    cos = (x / norms.clamp_min(1e-12)[:, None]) @ (x / norms.clamp_min(1e-12)[:, None]).T
    cos = torch.where(zero[:, None] & zero[None, :], torch.ones_like(cos), cos)
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return cos[i, j].mean().item()


def text_collapse(text_emb: torch.Tensor) -> dict:
    """How alike the embeddings of prompts that should differ are (no I/O; any device).

    text_emb: model.encode_text of N >= 2 prompts: (N, D) unit embeddings (CLIP, SigLIP) or
    (N, 2, D) [query, unit target] per prompt (Llip). Returns {"target_cosine": mean over pairs
    i < j of cos(y_i, y_j), "query_cosine": the same for the queries (None without queries),
    "collapsed": bool (COLLAPSED_COSINE: the target cosine above it, and for Llip the query
    cosine too)}.
    """
    if text_emb.ndim not in (2, 3) or (text_emb.ndim == 3 and text_emb.shape[1] != 2):
        raise ValueError(f"text_emb of shape {tuple(text_emb.shape)}: expected (N, D) or "
                         "(N, 2, D) [query, target]")
    if len(text_emb) < 2:
        raise ValueError("text_collapse needs at least 2 prompts")
    emb = text_emb.detach().float()
    if emb.ndim == 2:
        target, query = _mean_pairwise_cosine(emb), None
    else:
        target, query = _mean_pairwise_cosine(emb[:, 1]), _mean_pairwise_cosine(emb[:, 0])
    collapsed = target > COLLAPSED_COSINE and (query is None or query > COLLAPSED_COSINE)
    return {"target_cosine": target, "query_cosine": query, "collapsed": bool(collapsed)}
