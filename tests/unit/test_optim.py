"""Learning-rate schedule and parameter groups."""
import dataclasses
import math

from llip.models import build_model
from llip.run_configs import resolve
from llip.training.optim import lr_at, param_groups


def test_warmup_then_cosine_to_zero_is_a_function_of_the_step():
    cfg = dataclasses.replace(resolve("llip_tiny"), lr=1.0, warmup_steps=4,
                              train_num_samples=160, batch_size=16, epochs=1)  # 10 steps
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lr_at(4, cfg), 1.0)
    assert math.isclose(lr_at(7, cfg), 0.5)  # half way through the cosine
    assert lr_at(10, cfg) == 0.0 and lr_at(1000, cfg) == 0.0
    const = dataclasses.replace(cfg, schedule="const")
    assert lr_at(9, const) == 1.0


def test_no_weight_decay_on_vectors_tokens_and_position_embeddings():
    model = build_model(resolve("llip_tiny"))
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert "visual.prefix_tokens" in kept and "text.positional_embedding" in kept
    assert "head.logit_scale" in kept and "head.key_proj" in decayed
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert decayed | kept == set(names.values())
