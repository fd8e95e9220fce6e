"""Zero-shot classification and retrieval through the model's all-pairs scoring.

For Llip the image embedding depends on the text: `model.logits(image_emb, text_emb, tau)`
contextualises every image by every class prompt or caption, in blocks of texts. Memory is
bounded whatever the dataset size: images come in batches, and retrieval keeps only a running
top-k per caption instead of the full image x caption matrix.

Scores are kept by accumulators (`Classification`, `Retrieval`) fed one batch of logits at a
time, so that one pass over the images scores every eval temperature from the same image
embeddings (`score_images`), and the accumulators of processes that each scored a share of the
images merge exactly (`merge`: their sums add up; retrieval also merges its running top-k).
"""
import contextlib
import string

import torch

from llip.errors import ConfigError
from llip.evaluation.sharding import LOCAL, Shard, lockstep


def inference_precision(device):
    """bf16 autocast on CUDA (as CLIP_benchmark's amp); fp32 everywhere else."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fill_template(template: str, classname: str) -> str:
    """The template with the class name at {c} (or {}, as the Llip release and CLIP write
    them), refusing any other placeholder by name."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exn:
        raise ConfigError(f"template {template!r} is not a valid format string ({exn})") \
            from None
    unknown = sorted(set(fields) - {"c", ""})
    if unknown:
        raise ConfigError(f"template {template!r} has the placeholder {{{unknown[0]}}}: only "
                          "{c} or {} (the class name) is filled in; fix the template")
    if not fields:  # e.g. "{{c}}": literal braces, every class would get the same prompt
        raise ConfigError(f"template {template!r} has no placeholder for the class name: write "
                          "{c} (or {}) where it goes")
    return template.format(*[classname] * fields.count(""), c=classname)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch_size: int = 256, device="cpu") -> torch.Tensor:
    with inference_precision(device):
        return torch.cat([model.encode_text(tokenizer(texts[i: i + batch_size]).to(device))
                          .float() for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames, templates, device="cpu",
                     batch_size: int = 256) -> torch.Tensor:
    """One text embedding per class: the model's average over the prompt templates. Prompts of
    all classes are encoded together in batches of `batch_size`."""
    prompts = [fill_template(t, name) for name in classnames for t in templates]
    emb = encode_texts(model, tokenizer, prompts, batch_size, device)
    per_class = emb.view(len(classnames), len(templates), *emb.shape[1:])
    return torch.stack([model.mean_text(prompt_emb) for prompt_emb in per_class])


class Classification:
    """Top-1, top-5 and mean per-class recall from batches of (logits, labels)."""

    def __init__(self, n_classes: int, device="cpu"):
        self.n_classes = n_classes
        # correct@1, correct@5, images, then per class: hits@1 and images
        self.sums = torch.zeros(3 + 2 * n_classes, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = self.n_classes
        labels = labels.to(logits.device)
        if labels.numel() and not (0 <= labels.min().item() and labels.max().item() < n):
            bad = labels[(labels < 0) | (labels >= n)][0].item()
            raise ConfigError(f"label {bad} is outside the {n} class names: fix the class "
                              "names or the labels")
        top = logits.topk(min(5, n), dim=1).indices
        hit1 = top[:, 0] == labels
        sums = self.sums.to(logits.device)
        sums[0] += hit1.sum()
        sums[1] += (top == labels[:, None]).any(1).sum()
        sums[2] += len(labels)
        sums[3: 3 + n] += torch.bincount(labels[hit1], minlength=n)
        sums[3 + n:] += torch.bincount(labels, minlength=n)
        self.sums = sums

    def merge(self, shard: Shard) -> None:
        """Add up the counts of every share (a no-op in one process)."""
        self.sums = shard.sum(self.sums)

    def result(self) -> dict:
        n = self.n_classes
        correct1, correct5, images = self.sums[:3].tolist()
        if images == 0:
            raise ValueError("no images were read")
        hits, counts = self.sums[3: 3 + n], self.sums[3 + n:]
        seen = counts > 0
        return {"acc1": correct1 / images, "acc5": correct5 / images,
                "mean_per_class_recall": (hits[seen] / counts[seen]).mean().item(),
                "n": int(images)}


class Retrieval:
    """Recall@k both ways from batches of (logits: images x captions, image indices).
    caption_owner[t] is the index of caption t's image. text_retrieval = image -> captions (a
    hit if any of the image's captions is in its top k); image_retrieval = caption -> images."""

    def __init__(self, caption_owner, ks=(1, 5, 10), device="cpu"):
        self.owner = torch.as_tensor(caption_owner, device=device)
        self.ks, self.kmax = tuple(ks), max(ks)
        n_text = len(self.owner)
        self.sums = torch.zeros(len(self.ks) + 1, dtype=torch.float64, device=device)
        self.best_scores = torch.full((n_text, self.kmax), float("-inf"), device=device)
        self.best_images = torch.full((n_text, self.kmax), -1, dtype=torch.long, device=device)

    def _to(self, device) -> None:
        if self.owner.device != device:
            self.owner, self.sums = self.owner.to(device), self.sums.to(device)
            self.best_scores = self.best_scores.to(device)
            self.best_images = self.best_images.to(device)

    def add(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        self._to(logits.device)
        index = index.to(logits.device)
        top_texts = logits.topk(min(self.kmax, len(self.owner)), dim=1).indices
        match = self.owner[top_texts] == index[:, None]
        for i, k in enumerate(self.ks):
            self.sums[i] += match[:, :k].any(1).sum()
        self.sums[-1] += len(index)
        self.keep_best(logits.T.float(), index.expand(len(self.owner), -1))

    def keep_best(self, scores: torch.Tensor, images: torch.Tensor) -> None:
        """Merge candidate (caption x image) scores into the running top-k per caption."""
        self._to(scores.device)
        scores = torch.cat([self.best_scores, scores], dim=1)
        ids = torch.cat([self.best_images, images.to(scores.device)], dim=1)
        top = scores.topk(self.kmax, dim=1)
        self.best_scores, self.best_images = top.values, ids.gather(1, top.indices)

    def merge(self, shard: Shard) -> None:
        """Add up every share's counts and merge their running top-k into the global top-k per
        caption (a no-op in one process)."""
        self.sums = shard.sum(self.sums)
        if shard.size == 1:
            return
        n_text = len(self.owner)
        scores = shard.gather(self.best_scores).permute(1, 0, 2).reshape(n_text, -1)
        images = shard.gather(self.best_images).permute(1, 0, 2).reshape(n_text, -1)
        self.best_scores.fill_(float("-inf"))
        self.best_images.fill_(-1)
        self.keep_best(scores, images)

    def result(self) -> dict:
        n_images = int(self.sums[-1].item())
        if n_images == 0:
            raise ValueError("no images were read")
        out = {"n": n_images, "n_captions": len(self.owner)}
        hits = self.best_images == self.owner[:, None]
        for i, k in enumerate(self.ks):
            out[f"text_retrieval_recall@{k}"] = self.sums[i].item() / n_images
            out[f"image_retrieval_recall@{k}"] = hits[:, :k].any(1).double().mean().item()
        return out


@torch.no_grad()
def score_images(model, batches, text_emb, scorers: dict, device="cpu", shard: Shard = LOCAL,
                 image_size: int = 224) -> int:
    """One pass over `batches` of (images, targets): each batch is encoded once and scored by
    every {tau: accumulator} in `scorers` (tau: Llip's eval-time temperature, ignored by
    CLIP/SigLIP), then the accumulators merge across `shard`'s processes. Returns the number of
    images this process encoded."""
    encoded = 0
    dummy = lambda: torch.zeros(1, 3, image_size, image_size)  # noqa: E731
    with inference_precision(device):
        for images, targets in lockstep(batches, shard, dummy, device):
            image_emb = model.encode_image(images.to(device, non_blocking=True))
            encoded += len(images) if targets is not None else 0
            for tau, scorer in scorers.items():
                logits = model.logits(image_emb, text_emb, tau).float()
                if targets is not None:  # (None: a share that ran out keeps the others company)
                    scorer.add(logits, targets)
    for scorer in scorers.values():
        scorer.merge(shard)
    return encoded


def classify(model, batches, class_emb, device="cpu", tau=None) -> dict:
    """batches: iterable of (images, labels). Top-1, top-5 and mean per-class recall."""
    scorer = Classification(class_emb.shape[0], device)
    score_images(model, batches, class_emb, {tau: scorer}, device)
    return scorer.result()


def retrieve(model, image_batches, text_emb, caption_owner, ks=(1, 5, 10), device="cpu",
             tau=None) -> dict:
    """image_batches yields (images, their indices); recall@k both ways (see `Retrieval`)."""
    scorer = Retrieval(caption_owner, ks, device)
    score_images(model, image_batches, text_emb, {tau: scorer}, device)
    return scorer.result()
