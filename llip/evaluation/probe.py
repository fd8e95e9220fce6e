"""Linear probe and kNN on frozen image features: how much a linear or nearest-neighbour reader
can get out of the image encoder, without any text.

Image feature: for CLIP and SigLIP the model's image embedding (unit norm). For Llip, whose image
embedding depends on the text, the uniform mixture W_o mean_k(v_k): the embedding Llip would give
if the cross-attention weighted its K mixture tokens equally (as any query does at tau -> inf), so
it lives in the same D-dim space as the score and needs no text. Unit-normed, like CLIP's.

Linear probe (CLIP_benchmark's protocol with an exact solver): `val_proportion` of the training
set is held out; multinomial logistic regression, minimising mean cross-entropy + lam/2 |W|^2
(bias not penalised) to convergence with full-batch L-BFGS, is fitted for L2 penalties lam on
CLIP_benchmark's grid (97 values log-spaced over 1e-6..1e2) by its coarse-to-fine search (7
values, then halving steps around the best) scored by validation top-1; the chosen lam is refitted
on train + validation and scored once on the test set.

kNN: the k most cosine-similar training images vote for their label with weight exp(sim / 0.07),
as in DINO's kNN eval; top-1 is the label with the most weight.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from llip.evaluation.datasets import classification_batches

LAMBDAS = np.logspace(-6, 2, num=97).tolist()
COARSE = list(range(0, 97, 16))  # the 7 values of np.logspace(-6, 2, 7) within LAMBDAS
KNN_TEMPERATURE = 0.07
SMALL_PROBLEM = 1 << 22  # feature-matrix elements below which a CPU fit runs on one thread


# ------------------------------------------------------------ features
@torch.no_grad()
def image_features(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D) unit-norm features (see module docstring)."""
    emb = model.encode_image(images)
    if emb.dim() == 4:  # Llip: (B, 2, K, D) keys and values
        emb = emb[:, 1].mean(dim=1) @ model.head.out_proj.weight.T
    return F.normalize(emb.float(), dim=-1)


@torch.no_grad()
def encode_set(model, entry, path, split, transform, batch_size, workers, device):
    """Features and labels of one labelled split of a catalog entry."""
    names = entry.get("classnames", "folder" if entry["format"] == "imagefolder" else None)
    part = {**entry, "path": path, "split": split, "classnames": names}
    batches, _ = classification_batches(part, transform, batch_size, workers)
    feats, labels = [], []
    for images, y in batches:
        feats.append(image_features(model, images.to(device)))
        labels.append(torch.as_tensor(y))
    if not feats:
        raise ValueError(f"no images were read from {path}")
    return torch.cat(feats), torch.cat(labels).to(device)


# ------------------------------------------------------------ metrics
def scores_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1, top-5 and mean per-class recall of (N, C) class scores, as zero-shot reports."""
    scores, labels = scores.float().cpu(), labels.cpu()
    n_classes = scores.shape[1]
    top = scores.topk(min(5, n_classes), dim=1).indices
    hit1 = top[:, 0] == labels
    counts = torch.bincount(labels, minlength=n_classes).float()
    hits = torch.bincount(labels[hit1], minlength=n_classes).float()
    seen = counts > 0
    return {"acc1": hit1.float().mean().item(),
            "acc5": (top == labels[:, None]).any(1).float().mean().item(),
            "mean_per_class_recall": (hits[seen] / counts[seen]).mean().item(),
            "n": len(labels)}


# ------------------------------------------------------------ logistic regression
def fit_logistic(x, y, n_classes: int, lam: float, max_iter: int = 300):
    """argmin_W,b mean CE(x W + b, y) + lam/2 |W|^2 by full-batch L-BFGS -> (W, b)."""
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _threads_for(x):
        opt.step(closure)
    return w.detach(), b.detach()


@contextlib.contextmanager
def _threads_for(x):
    """One CPU thread for small problems: L-BFGS makes thousands of tiny GEMMs, and on a shared
    CPU their thread synchronisation costs 10x the arithmetic (measured: 1 s vs 15 s on the
    digits' 1,437 x 96 features with 2 threads)."""
    before = torch.get_num_threads()
    small = x.device.type == "cpu" and x.numel() < SMALL_PROBLEM
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def _val_acc(x_tr, y_tr, x_val, y_val, n_classes, lam) -> float:
    w, b = fit_logistic(x_tr, y_tr, n_classes, lam)
    return ((x_val @ w + b).argmax(1) == y_val).float().mean().item()


def select_lambda(x_tr, y_tr, x_val, y_val, n_classes: int, lambdas=LAMBDAS, coarse=COARSE):
    """CLIP_benchmark's search: the best of the coarse grid, then steps of 8, 4, 2, 1 grid points
    to either side of the best so far. Ties keep the earlier (smaller) penalty.
    -> (lam, {lam: validation top-1} for every value tried)."""
    tried = {}

    def best_of(idxs):
        for i in idxs:
            if i not in tried:
                tried[i] = _val_acc(x_tr, y_tr, x_val, y_val, n_classes, lambdas[i])
        return max(sorted(set(idxs)), key=lambda i: tried[i])

    peak, span = best_of(coarse), 8
    while span > 0:
        peak = best_of([max(peak - span, 0), peak, min(peak + span, len(lambdas) - 1)])
        span //= 2
    return lambdas[peak], {lambdas[i]: acc for i, acc in sorted(tried.items())}


def split_validation(n: int, proportion: float, seed: int = 0):
    """Seeded random split of range(n) -> (train indices, validation indices)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * proportion)))
    return perm[n_val:], perm[:n_val]


def linear_probe(x_train, y_train, x_test, y_test, val_proportion: float = 0.2,
                 n_classes: int = None, seed: int = 0) -> dict:
    n_classes = n_classes or int(max(y_train.max(), y_test.max())) + 1
    tr, val = (i.to(x_train.device) for i in split_validation(len(y_train), val_proportion, seed))
    lam, tried = select_lambda(x_train[tr], y_train[tr], x_train[val], y_train[val], n_classes)
    w, b = fit_logistic(x_train, y_train, n_classes, lam)  # refit on train + validation
    return {**scores_metrics(x_test @ w + b, y_test), "n_train": len(y_train), "lambda": lam,
            "val_acc1": tried[lam]}


# ------------------------------------------------------------ kNN
def knn(x_train, y_train, x_test, y_test, k: int = 20, n_classes: int = None,
        temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> dict:
    n_classes = n_classes or int(max(y_train.max(), y_test.max())) + 1
    k = min(k, len(y_train))
    votes = []
    for start in range(0, len(x_test), chunk):  # bounded memory: chunk x n_train similarities
        sim, idx = (x_test[start: start + chunk] @ x_train.T).topk(k, dim=1)
        v = torch.zeros(len(sim), n_classes, dtype=sim.dtype, device=sim.device)
        votes.append(v.scatter_add_(1, y_train[idx], (sim / temperature).exp()))
    return {**scores_metrics(torch.cat(votes), y_test), "n_train": len(y_train), "k": k}


# ------------------------------------------------------------ catalog task
def run_probe(model, entry, transform, batch_size: int, workers: int, device="cpu") -> dict:
    """A linear_probe or knn catalog entry -> metrics (acc1, acc5, mean_per_class_recall, n,
    n_train and the probe's setting)."""
    x_train, y_train = encode_set(model, entry, entry["train_path"], entry["train_split"],
                                  transform, batch_size, workers, device)
    x_test, y_test = encode_set(model, entry, entry["path"], entry.get("split"), transform,
                                batch_size, workers, device)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    if entry["task"] == "linear_probe":
        return linear_probe(x_train, y_train, x_test, y_test, entry["val_proportion"], n_classes)
    return knn(x_train, y_train, x_test, y_test, entry["k"], n_classes)
