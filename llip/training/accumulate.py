"""Gradient accumulation that is exact for contrastive losses (GradCache; open_clip's accum_freq).

A contrastive loss couples every sample of the global batch with every other one, so summing the
losses of micro-batches would optimise a smaller-batch objective. Instead, per step:
  1. without autograd, embed every micro-batch of this rank's batch;
  2. compute the loss of the whole batch on those embeddings (gathered from all ranks as usual),
     with gradient w.r.t. the embeddings and the parameters the loss itself uses (logit scale
     and bias, Llip's output projection); keep the embeddings' gradients;
  3. for each micro-batch, recompute the towers with autograd and back-propagate the kept
     embedding gradients through them.
The gradient is the big batch's (tested to 1e-5) while tower activations are held for one
micro-batch at a time; the price is one extra forward pass of the towers. Under FSDP2 the
gradients are reduced once per step: gradient sync is off for every backward pass but the last.
"""
import torch

from llip.losses import contrastive_loss


def _set_gradient_sync(model, enabled: bool) -> None:
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)


def accumulate_gradients(model, cfg, images, tokens, autocast, rank=0, gather=None):
    """Add to the parameters' .grad the gradient of the contrastive loss of (images, tokens),
    computed in cfg.accum_steps micro-batches; return the loss (detached)."""
    size = images.shape[0] // cfg.accum_steps  # divisibility is checked with the config
    micro = list(zip(images.split(size), tokens.split(size)))
    with torch.no_grad(), autocast:
        embedded = [model(x, t) for x, t in micro]
    image_emb = torch.cat([e[0] for e in embedded]).requires_grad_()
    text_emb = torch.cat([e[1] for e in embedded]).requires_grad_()
    _set_gradient_sync(model, False)
    with autocast:
        loss = contrastive_loss(cfg.loss, model, image_emb, text_emb, rank, gather)
    loss.backward()
    image_grads, text_grads = image_emb.grad.split(size), text_emb.grad.split(size)
    for i, (x, t) in enumerate(micro):
        _set_gradient_sync(model, i == len(micro) - 1)
        with autocast:
            outputs = model(x, t)
        torch.autograd.backward(outputs, (image_grads[i], text_grads[i]))
    return loss.detach()
