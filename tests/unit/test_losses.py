"""The losses' math in one process: our CLIP and SigLIP losses equal open_clip's to 1e-6; the
Llip factored score equals the naive one; chunking changes neither scores nor gradients."""
import dataclasses

import pytest
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from llip.losses import clip_loss, siglip_loss
from llip.models.llip import LlipHead, pair_scores_factored, pair_scores_naive
from llip.run_configs import resolve


def _features(n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, d, generator=g,  # noqa: E731
                                                             dtype=torch.float64), dim=-1)
    return unit(), unit()


def test_clip_loss_equals_open_clip():
    images, texts = _features()
    scale = torch.tensor([2.3], dtype=torch.float64)
    ours = clip_loss(images, texts, scale)
    theirs = ClipLoss()(images, texts, scale.exp())
    assert abs(ours.item() - theirs.item()) < 1e-6


def test_siglip_loss_equals_open_clip():
    images, texts = _features(seed=1)
    scale = torch.tensor([2.3], dtype=torch.float64)
    bias = torch.tensor([-1.5], dtype=torch.float64)
    ours = siglip_loss(images, texts, scale, bias)
    theirs = SigLipLoss()(images, texts, scale.exp(), bias)
    assert abs(ours.item() - theirs.item()) < 1e-6


@pytest.mark.parametrize("heads,k,d", [(2, 3, 8), (4, 8, 64), (8, 32, 64)])
def test_llip_factored_score_equals_naive(heads, k, d):
    """The fast path (HK x HK Gram, no B x B x D tensor) equals building every x_ij, in float64."""
    g = torch.Generator().manual_seed(heads + k + d)
    opts = dict(dtype=torch.float64, generator=g)
    keys, values = torch.randn(5, k, d, **opts), torch.randn(5, k, d, **opts)
    queries = torch.randn(7, d, **opts)
    targets = torch.nn.functional.normalize(torch.randn(7, d, **opts), dim=-1)
    w_out = torch.randn(d, d, **opts) / d ** 0.5
    args = (keys, values, queries, targets, w_out, heads, 5.0)
    torch.testing.assert_close(pair_scores_factored(*args), pair_scores_naive(*args),
                               atol=1e-5, rtol=0)


def test_llip_chunked_scores_and_grads_equal_unchunked():
    cfg = dataclasses.replace(resolve("llip_tiny"), vision_width=12, embed_dim=8,
                              mixture_tokens=3, cross_attn_heads=2, text_width=10)
    torch.manual_seed(0)
    head = LlipHead(cfg).double()
    image = head.encode_image(torch.randn(4, 3, 12, dtype=torch.float64))
    text = head.encode_text(torch.randn(9, 10, dtype=torch.float64))
    results = []
    for chunk, factored in [(100, False), (2, True), (4, False)]:
        head.chunk, head.factored = chunk, factored
        head.zero_grad()
        scores = head.cosines(image, text)
        scores.pow(2).sum().backward(retain_graph=True)
        results.append((scores.detach(), head.out_proj.weight.grad.clone()))
    for scores, grad in results[1:]:
        torch.testing.assert_close(scores, results[0][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(grad, results[0][1], atol=1e-10, rtol=0)
