"""Zero-shot classification and retrieval through the model's all-pairs scoring.

For Llip the image embedding depends on the text: `model.logits(image_emb, text_emb)`
contextualises every image by every class prompt or caption, in blocks of texts. Memory is
bounded whatever the dataset size: images come in batches, and retrieval keeps only a running
top-k per caption instead of the full image x caption matrix.
"""
import torch


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch_size: int = 256, device="cpu") -> torch.Tensor:
    return torch.cat([model.encode_text(tokenizer(texts[i: i + batch_size]).to(device))
                      for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames, templates, device="cpu") -> torch.Tensor:
    """One text embedding per class: the model's average over the prompt templates."""
    return torch.stack([model.mean_text(model.encode_text(
        tokenizer([t.format(c=name) for t in templates]).to(device))) for name in classnames])


@torch.no_grad()
def classify(model, batches, class_emb, device="cpu", tau=None) -> dict:
    """batches: iterable of (images, labels). Top-1, top-5 and mean per-class recall.
    `tau`: Llip's eval-time temperature (ignored by CLIP/SigLIP)."""
    n_classes = class_emb.shape[0]
    correct1 = correct5 = n = 0
    hits, counts = torch.zeros(n_classes), torch.zeros(n_classes)
    for images, labels in batches:
        logits = model.logits(model.encode_image(images.to(device)), class_emb, tau).float().cpu()
        top = logits.topk(min(5, n_classes), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        n += len(labels)
        counts += torch.bincount(labels, minlength=n_classes).float()
        hits += torch.bincount(labels[top[:, 0] == labels], minlength=n_classes).float()
    if n == 0:
        raise ValueError("no images were read")
    seen = counts > 0
    return {"acc1": correct1 / n, "acc5": correct5 / n,
            "mean_per_class_recall": (hits[seen] / counts[seen]).mean().item(), "n": n}


@torch.no_grad()
def retrieve(model, image_batches, text_emb, caption_owner, ks=(1, 5, 10), device="cpu",
             tau=None) -> dict:
    """Recall@k both ways. caption_owner[t] is the index of caption t's image; image_batches
    yields (images, their indices). text_retrieval = image -> captions (a hit if any of the
    image's captions is in its top k); image_retrieval = caption -> images."""
    owner = torch.as_tensor(caption_owner)
    n_text, kmax = len(owner), max(ks)
    best_scores = torch.full((n_text, kmax), float("-inf"))
    best_images = torch.full((n_text, kmax), -1, dtype=torch.long)
    text_hits, n_images = torch.zeros(len(ks)), 0
    for images, index in image_batches:
        logits = model.logits(model.encode_image(images.to(device)), text_emb, tau).float().cpu()
        top_texts = logits.topk(min(kmax, n_text), dim=1).indices
        match = owner[top_texts] == index[:, None]
        text_hits += torch.tensor([match[:, :k].any(1).sum().item() for k in ks])
        scores = torch.cat([best_scores, logits.T], dim=1)
        ids = torch.cat([best_images, index.expand(n_text, -1)], dim=1)
        top = scores.topk(kmax, dim=1)
        best_scores, best_images = top.values, ids.gather(1, top.indices)
        n_images += len(index)
    if n_images == 0:
        raise ValueError("no images were read")
    out = {"n": n_images, "n_captions": n_text}
    for i, k in enumerate(ks):
        out[f"text_retrieval_recall@{k}"] = text_hits[i].item() / n_images
        out[f"image_retrieval_recall@{k}"] = \
            (best_images[:, :k] == owner[:, None]).any(1).float().mean().item()
    return out
