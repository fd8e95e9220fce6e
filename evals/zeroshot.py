"""Zero-shot classification through the model's all-pairs scoring.

For Llip each image is contextualised by each class prompt: logits(image_emb, class_emb) does
that pairwise, in bounded blocks, exactly as in training.
"""
import torch


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames, templates, device="cpu") -> torch.Tensor:
    """One text embedding per class: the model's average over the prompt templates."""
    per_class = []
    for name in classnames:
        tokens = tokenizer([t.format(c=name) for t in templates]).to(device)
        per_class.append(model.mean_text(model.encode_text(tokens)))
    return torch.stack(per_class)


@torch.no_grad()
def classify(model, batches, class_emb, device="cpu") -> dict:
    """batches: iterable of (images, labels). Returns top-1, top-5 and mean per-class recall."""
    n_classes = class_emb.shape[0]
    correct1 = correct5 = n = 0
    hits, counts = torch.zeros(n_classes), torch.zeros(n_classes)
    for images, labels in batches:
        logits = model.logits(model.encode_image(images.to(device)), class_emb).cpu()
        top = logits.topk(min(5, n_classes), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        n += len(labels)
        counts += torch.bincount(labels, minlength=n_classes).float()
        hits += torch.bincount(labels[top[:, 0] == labels], minlength=n_classes).float()
    seen = counts > 0
    return {"acc1": correct1 / n, "acc5": correct5 / n,
            "mean_per_class_recall": (hits[seen] / counts[seen]).mean().item(), "n": n}
