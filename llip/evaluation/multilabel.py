"""Evals whose prompts or answers differ per image: multiple choice and multi-label presence.

multiple_choice  every image carries its own questions, each a list of candidate captions and
                 the index of the right one (binding probes, ARO / SugarCrepe-style caption
                 pairs); a question is answered by the caption the model scores highest for
                 that image. Metric: acc1 over questions.
multilabel       every image carries the indices of the classnames present in it; each class
                 prompt ranks all images (retrieval), scored by average precision. Metrics: mAP
                 (mean over classes with a positive) and image_mAP (each image ranking the
                 classes). Needs the images x classes score matrix in memory.

For Llip each image is contextualised by every candidate caption, as in classification. Text
embeddings are computed once per distinct caption (questions repeat captions a lot).
"""
import torch

from llip.evaluation.datasets import annotated_batches
from llip.evaluation.zeroshot import class_embeddings, encode_texts

PER_IMAGE_TASKS = ("multiple_choice", "multilabel")


def evaluate_per_image(model, entry, transform, tokenizer, batch_size: int, workers: int,
                       device="cpu", tau=None) -> dict:
    """One catalog entry of a per-image task -> its metrics."""
    batches = annotated_batches(entry, transform, batch_size, workers)
    if entry["task"] == "multiple_choice":
        return multiple_choice(model, tokenizer, batches, device, tau)
    class_emb = class_embeddings(model, tokenizer, entry["classnames"], entry["templates"],
                                 device)
    return multilabel(model, batches, class_emb, device, tau)


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Average precision of ranking by `scores` (1-D) for boolean `positive`, with tied scores
    taken as one threshold: sum over thresholds of (recall step) x precision, as sklearn's
    average_precision_score."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, pos = scores[order].double(), positive[order].double()
    tp, seen = torch.cumsum(pos, 0), torch.arange(1, len(s) + 1, dtype=torch.float64)
    last = torch.ones(len(s), dtype=torch.bool)  # the last item of each run of equal scores
    last[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last], seen[last]
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / n_pos
    return float((recall_step * tp / seen).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over columns with at least one positive of the AP of ranking rows by that column."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])
           if targets[:, c].any()]
    if not aps:
        raise ValueError("no column has a positive")
    return sum(aps) / len(aps)


@torch.no_grad()
def multilabel(model, batches, class_emb, device="cpu", tau=None) -> dict:
    """batches: iterable of (images, [list of positive class indices per image])."""
    n_classes = class_emb.shape[0]
    scores, targets = [], []
    for images, positives in batches:
        scores.append(model.logits(model.encode_image(images.to(device)), class_emb, tau)
                      .float().cpu())
        target = torch.zeros(len(positives), n_classes, dtype=torch.bool)
        for row, labels in enumerate(positives):
            if any(not 0 <= int(c) < n_classes for c in labels):
                raise ValueError(f"label outside the {n_classes} classnames: {labels}")
            target[row, [int(c) for c in labels]] = True
        targets.append(target)
    if not scores:
        raise ValueError("no images were read")
    scores, targets = torch.cat(scores), torch.cat(targets)
    has_label = targets.any(1)
    return {"mAP": mean_average_precision(scores, targets),
            "image_mAP": mean_average_precision(scores[has_label].T, targets[has_label].T),
            "n": len(scores)}


def _questions(annotation) -> list[dict]:
    """A sample's member: one question {"choices": [...], "answer": i} or a list of them."""
    items = annotation if isinstance(annotation, list) else [annotation]
    for q in items:
        if not isinstance(q, dict) or not isinstance(q.get("choices"), list) or \
                not isinstance(q.get("answer"), int) or not 0 <= q["answer"] < len(q["choices"]):
            raise ValueError(f"a question must be {{'choices': [captions], 'answer': index}}, "
                             f"got {str(q)[:200]}")
    return items


@torch.no_grad()
def multiple_choice(model, tokenizer, batches, device="cpu", tau=None,
                    text_batch: int = 256) -> dict:
    """batches: iterable of (images, [questions of each image])."""
    cache: dict[str, torch.Tensor] = {}
    correct = n_questions = n_images = 0
    for images, annotations in batches:
        per_image = [_questions(a) for a in annotations]
        captions = list(dict.fromkeys(c for qs in per_image for q in qs for c in q["choices"]))
        new = [c for c in captions if c not in cache]
        if new:
            cache.update(zip(new, encode_texts(model, tokenizer, new, text_batch, device)))
        column = {c: i for i, c in enumerate(captions)}
        text_emb = torch.stack([cache[c] for c in captions])
        logits = model.logits(model.encode_image(images.to(device)), text_emb, tau).float().cpu()
        for row, qs in enumerate(per_image):
            for q in qs:
                chosen = logits[row, [column[c] for c in q["choices"]]].argmax().item()
                correct += int(chosen == q["answer"])
                n_questions += 1
        n_images += len(per_image)
    if n_questions == 0:
        raise ValueError("no questions were read")
    return {"acc1": correct / n_questions, "n": n_questions, "n_images": n_images}
