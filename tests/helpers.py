"""Helpers the tests share (fixtures live in conftest.py): running a command the way a user
would, a real gloo group of spawned processes, the demo catalog pointed at test shards, the
one-line error check, a pickle payload that proves whether a loader ran code, files written
in other projects' layouts, and a count of file-system calls."""
import builtins
import collections
import functools
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from llip.io import read_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, env=None, timeout=600, cwd=REPO):
    """Run a module of this repo in a fresh interpreter, the way a user would."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def write_catalog(path, digits, changes=None):
    """The demo catalog pointed at test shards; `changes` (name -> entry) edit or break it."""
    from llip.io import read_json, write_json
    catalog = read_json(os.path.join(REPO, "config_evals", "demo_catalog.json"))
    for name, entry in catalog.items():
        if not name.startswith("_"):
            entry["path"] = digits["test"]
            if "train_path" in entry:
                entry["train_path"] = digits["train"]
    for name, entry in (changes or {}).items():
        catalog[name] = entry
    write_json(str(path), catalog)
    return str(path)


def run_ranks(worker, *args, world: int = 2, results: int = 1, timeout: float = 300) -> list:
    """Run `worker(rank, port, *args, queue)` in `world` spawned processes that form a real gloo
    group on a free local port; return the first `results` items they put on the queue, once
    every process has exited cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(rank, port, *args, queue)) for rank in range(world)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=timeout) for _ in range(results)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def assert_one_error(result, *needles):
    """A command that failed the way bad input must: exit 2, no traceback, and a last line
    `error: ...` that holds every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines and lines[-1].startswith("error:"), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]


class Touch:
    """A pickle payload that runs `touch path` when unpickled: the marker file that proves
    whether a loader ran code from data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def digits_batches(digits, cfg, batch_size: int = 128):
    """(images, labels) batches of the held-out test digits, read as a catalog entry would be."""
    from llip.data import transform_for
    from llip.data.synthetic.digits import CLASSNAMES
    from llip.evaluation.datasets import classification_batches
    entry = {"name": "digits", "format": "wds", "label_key": "cls", "classnames": CLASSNAMES,
             "path": digits["test"]}
    return classification_batches(entry, transform_for(cfg, False), batch_size, 0)[0]


# ---------------------------------------------------------------- files in other projects' layouts
# A small open_clip architecture equal to our *_tiny towers (registered with open_clip below).
TINY_OPEN_CLIP = {"embed_dim": 64, "quick_gelu": False,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                 "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64,
                               "heads": 4, "layers": 2}}


def released_state_dict(model) -> dict:
    """Our LlipModel in the released-Llip layout (written independently of the converter)."""
    sd, out = model.state_dict(), {}
    renamed = {"head.key_proj": "k_proj", "head.value_proj": "v_proj"}
    as_x_at_w = {"head.query_proj.weight": "q_proj", "head.target_proj.weight": "text_projection",
                 "head.out_proj.weight": "pred.out_proj"}
    for name, t in sd.items():
        if name == "visual.prefix_tokens":
            out["visual.class_embedding"] = t
        elif name == "visual.prefix_pos":
            out["visual.positional_embedding"] = torch.cat([t, sd["visual.patch_pos"]])
        elif name == "visual.patch_pos":
            continue
        elif name.startswith("text."):
            out[name[len("text."):]] = t
        elif name in renamed:
            out[renamed[name]] = t
        elif name in as_x_at_w:
            out[as_x_at_w[name]] = t.T.contiguous()
        elif name.startswith("head.") and "_norm." in name:
            out[name[len("head."):]] = t
        elif name in ("head.logit_scale", "head.logit_bias"):
            out[name[len("head."):]] = t.reshape(())
        else:
            out[name] = t
    return out


def write_released(model, path, prefix="_orig_mod.module.", state=None):
    state = released_state_dict(model) if state is None else state
    torch.save({"epoch": 32, "name": "llip_b16_k32", "state_dict":
                {prefix + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]}},
               path)
    return str(path)


@functools.lru_cache
def tokens_of(context_length):
    import open_clip  # building the BPE tokenizer takes a while: once per length
    return open_clip.get_tokenizer("ViT-B-16", context_length=context_length)(
        ["a photo of a cat", "two dogs on a beach", "a red car"])


def model_inputs(cfg):
    """3 seeded random images and 3 captions, for comparing two models' scores."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=g), \
        tokens_of(cfg.context_length)


@torch.no_grad()
def model_scores(model, cfg):
    """(image embeddings, text embeddings, logits) of a model on model_inputs."""
    images, tokens = model_inputs(cfg)
    image_emb, text_emb = model.encode_image(images), model.encode_text(tokens)
    return image_emb, text_emb, model.logits(image_emb, text_emb)


def open_clip_file(name, path, seed=0, wrap=False):
    """An open_clip model of `name` saved as open_clip saves it (optionally wrapped as a training
    checkpoint with DDP's `module.` prefix), with a trained-looking scale and bias."""
    import open_clip
    torch.manual_seed(seed)
    model = open_clip.create_model(name).eval()
    with torch.no_grad():  # a trained-looking scale and bias, not the init values
        model.logit_scale.fill_(3.1)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-7.5)
    sd = model.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}
               if wrap else sd, path)
    return model, str(path)


# ---------------------------------------------------------------- SLURM
def wait_for(condition, timeout: float, what: str, logs_dir=None):
    """Poll `condition` once a second; fail naming `what` (and the tail of every SLURM log in
    `logs_dir`) after `timeout` seconds: no wait on a job is unbounded."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            detail = ""
            if logs_dir and os.path.isdir(logs_dir):
                for name in sorted(os.listdir(logs_dir)):
                    if name.endswith((".out", ".err")):
                        text = read_text(os.path.join(logs_dir, name))
                        detail += f"\n--- {name}\n{text[-1500:]}"
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(1)


def queued(job_id: str) -> bool:
    """SLURM still lists the job (queued or running)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


def count_fs_calls(monkeypatch) -> collections.Counter:
    """(call, path) -> how often os.stat, os.scandir and open were called from now on (until
    monkeypatch.undo()): what costs ~2 ms per call on a parallel file system."""
    calls = collections.Counter()
    for module, name in ((os, "stat"), (os, "scandir"), (builtins, "open")):
        def counted(path, *args, _real=getattr(module, name), _name=name, **kwargs):
            calls[_name, str(path)] += 1
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return calls
