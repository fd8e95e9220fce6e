"""Linear probe and kNN on made-up features: the solver against scikit-learn, the choice of the
L2 penalty on a validation split, the kNN vote, and the catalog's probe entries."""
import math

import numpy as np
import pytest
import torch

from llip.errors import ConfigError
from llip.evaluation.catalog import validate_entry
from llip.evaluation.probe import LAMBDAS, fit_logistic, knn, linear_probe, select_lambda


def _blobs(n, d, seed, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    centres = torch.randn(n_classes, d, generator=g, dtype=torch.float64)
    return centres[y] + 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64), y


def test_logistic_regression_matches_scikit_learn():
    """mean CE + lam/2 |W|^2 is scikit-learn's 1/2 |W|^2 + C sum CE with C = 1/(n lam)."""
    from sklearn.linear_model import LogisticRegression
    x, y = _blobs(300, 8, seed=0)
    lam = 1e-2
    w, b = fit_logistic(x, y, 3, lam)
    ref = LogisticRegression(C=1 / (len(y) * lam), tol=1e-10, max_iter=10_000).fit(x, y)
    w_ref, b_ref = torch.tensor(ref.coef_.T), torch.tensor(ref.intercept_)

    def objective(w, b):
        return (torch.nn.functional.cross_entropy(x @ w + b, y) + lam / 2 * (w * w).sum()).item()
    assert objective(w, b) == pytest.approx(objective(w_ref, b_ref), rel=1e-9)
    ours = torch.softmax(x @ w + b, dim=1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x.numpy()), atol=1e-4)


def test_penalty_is_chosen_by_validation_accuracy_then_refit_on_all_training_data():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, generator=g) < 0.3).long()  # 70% class 0
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    x[:, 0] += 3.0 * (2 * y - 1)  # the first feature separates the training classes

    # Validation where that feature is noise and every label is the majority class: only a
    # penalty strong enough to leave the (unpenalised) bias alone scores 100%.
    x_val = 3 * torch.randn(100, 4, generator=g, dtype=torch.float64)
    lam, tried = select_lambda(x, y, x_val, torch.zeros(100, dtype=torch.long), 2)
    np.testing.assert_allclose(LAMBDAS[::16], np.logspace(-6, 2, 7))  # CLIP_benchmark's coarse grid
    assert all(v in tried for v in LAMBDAS[::16])
    assert tried[LAMBDAS[0]] < 0.5 and tried[lam] == 1.0 and lam > 20
    assert lam == min(v for v, acc in tried.items() if acc == max(tried.values()))  # ties: smaller
    assert len(tried) > 7  # the search refined around the coarse peak

    # Validation like the training set: a weak penalty wins, the strongest one is worse.
    y_val = (torch.rand(100, generator=g) < 0.3).long()
    x_val = torch.randn(100, 4, generator=g, dtype=torch.float64)
    x_val[:, 0] += 3.0 * (2 * y_val - 1)
    lam, tried = select_lambda(x, y, x_val, y_val, 2)
    assert lam < 1 and tried[LAMBDAS[-1]] < tried[lam]

    x_test, y_test = x_val, y_val
    result = linear_probe(x, y, x_test, y_test, val_proportion=0.25)
    assert result["n_train"] == 200 and result["n"] == 100  # refit on train + validation
    w, b = fit_logistic(x, y, 2, result["lambda"])
    assert result["acc1"] == ((x_test @ w + b).argmax(1) == y_test).double().mean().item()
    assert result["acc1"] > 0.9


def test_knn_votes_weighted_by_similarity():
    """Unit vectors at known angles. k=3: one very close neighbour of class 0 outvotes two
    farther ones of class 1 (exp(sim / 0.07) weights), which a majority vote would not."""
    def unit(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]
    train = torch.tensor([unit(a) for a in (0, 60, 62, 180)])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([unit(5), unit(61), unit(178)])
    r = knn(train, labels, test, torch.tensor([0, 1, 2]), k=3)
    assert r["acc1"] == 1.0 and r["n"] == 3 and r["k"] == 3
    w = {a: math.exp(math.cos(math.radians(5 - a)) / 0.07) for a in (0, 60, 62)}
    assert w[0] > w[60] + w[62]  # the case above is the weighted one, not the majority
    r = knn(train, labels, test, torch.tensor([1, 1, 2]), k=3)
    assert r["acc1"] == pytest.approx(2 / 3)
    assert knn(train, labels, test, torch.tensor([0, 1, 2]), k=99)["k"] == 4  # capped at n


def test_probe_catalog_entries_are_validated():
    base = {"task": "linear_probe", "format": "wds", "path": "test-{0..1}.tar",
            "train_path": "train-{0..3}.tar", "metric": "acc1"}
    entry = validate_entry("p", base, "c.json", ".")
    assert entry["val_proportion"] == 0.2 and entry["train_split"] == "train"
    assert validate_entry("k", {**base, "task": "knn"}, "c.json", ".")["k"] == 20
    folder = validate_entry("f", {**base, "format": "imagefolder", "path": "/d", "split": "test",
                                  "train_path": "/d"}, "c.json", ".")
    assert folder["train_split"] == "train"
    cases = [({k: v for k, v in base.items() if k != "train_path"}, "needs a training set"),
             ({**base, "val_proportion": 1.5}, "val_proportion must be a number in (0, 1)"),
             ({**base, "task": "knn", "k": 0}, "k must be a positive integer"),
             ({**base, "k": 5}, "unknown field(s) k"),
             ({**base, "metric": "image_retrieval_recall@5"}, "must be one of acc1")]
    for bad, needle in cases:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            validate_entry("p", bad, "c.json", ".")
