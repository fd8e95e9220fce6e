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
        elif name.startswith("head.") and "_norm." in name:  # head.k_norm.weight -> K_norm.weight
            out[name[len("head."):].capitalize()] = t
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
    """SLURM still lists the job (queued or running); a controller that does not answer counts
    as still listing it (a wait on it then times out rather than ending early)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    if out.returncode != 0:
        return "invalid job id" not in out.stderr.lower()
    return bool(out.stdout.strip())


# ---------------------------------------------------------------- the Llip release's eval files
def digit_test_images(digits) -> list:
    """(grey uint8 image array, label) of the held-out digits, in the test shard's order: the
    pixels every reader of those shards decodes (the PNGs are grey images stored as RGB)."""
    import io
    import tarfile

    import braceexpand
    import numpy as np
    from PIL import Image
    members = {}
    for shard in braceexpand.braceexpand(digits["test"]):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [(np.asarray(Image.open(io.BytesIO(m["png"])).convert("L")), int(m["cls"]))
            for m in members.values()]


def write_mnist(root, samples) -> str:
    """`samples` in torchvision's MNIST layout under `root`: MNIST/raw/ holding the four
    uncompressed idx files its class reads (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; torchvision/datasets/mnist.py: MNIST.resources,
    raw_folder, read_sn3_pascalvincent_tensor). An idx file is a big-endian header, 0x0000,
    the type byte 0x08 (unsigned byte), the number of dimensions, then each dimension as a
    4-byte big-endian integer, then the data. The same samples serve as train and test."""
    import struct

    import numpy as np
    raw = os.path.join(str(root), "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    images = np.stack([image for image, _ in samples]).astype(np.uint8)
    labels = np.array([label for _, label in samples], dtype=np.uint8)
    for split in ("train", "t10k"):
        with open(os.path.join(raw, f"{split}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 0x08, 3, *images.shape) + images.tobytes())
        with open(os.path.join(raw, f"{split}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">HBBI", 0, 0x08, 1, len(labels)) + labels.tobytes())
    return str(root)


def write_image_folder(root, samples, classnames) -> str:
    """`samples` as torchvision's ImageFolder reads them: <root>/<class name>/<n>.png."""
    from PIL import Image
    for i, (image, label) in enumerate(samples):
        folder = os.path.join(str(root), classnames[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image, mode="L").convert("RGB").save(os.path.join(folder, f"{i}.png"))
    return str(root)


def write_release_catalog(folder, entries, labels, templates,
                          name="dataset_catalog_full.json") -> str:
    """A catalog in the Llip release's layout (facebookresearch/Llip, llip/clipeval/): the
    catalog (dataset -> {"path", "type": "imagefolder", "train", "test"} or {"path", "type":
    "special"}) with labels.json and templates.json (dataset -> list, templates with "{}")
    beside it."""
    import json
    os.makedirs(str(folder), exist_ok=True)
    for file, content in ((name, entries), ("labels.json", labels),
                          ("templates.json", templates)):
        with open(os.path.join(str(folder), file), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=4)
    return os.path.join(str(folder), name)


# The demo's prompts as the release writes templates (templates.json: "{}" placeholders).
RELEASE_TEMPLATES = ["a handwritten digit {}", "the number {}, written by hand"]


def release_digits_catalog(tmp_path, digits) -> str:
    """The held-out digits as the release's catalog would list them: MNIST ("special": torchvision
    reads <path>/MNIST/raw), an imagefolder with train/test sub-folders named by class, and
    entries that must fail on their own: CIFAR10 with no files, Food101 without its 'test'
    field, MITStates (special, a class of the release's own), CLEVRCounts (its .npy filelist)."""
    from llip.data.synthetic.digits import CLASSNAMES
    samples = digit_test_images(digits)
    mnist = write_mnist(tmp_path / "mnist", samples)
    for split in ("train", "test"):
        write_image_folder(tmp_path / "digits_folder" / split, samples, CLASSNAMES)
    (tmp_path / "cifar10").mkdir()
    entries = {
        "MNIST": {"path": mnist, "type": "special"},
        "Digits": {"path": str(tmp_path / "digits_folder"), "type": "imagefolder",
                   "train": "train", "test": "test"},
        "CIFAR10": {"path": str(tmp_path / "cifar10"), "type": "special"},
        "Food101": {"path": str(tmp_path / "food101"), "type": "imagefolder", "train": "train"},
        "MITStates": {"path": str(tmp_path / "mit"), "type": "special"},
        "CLEVRCounts": {"path": str(tmp_path / "clevr"), "type": "filelist", "train": "train",
                        "test": "val"},
    }
    # labels.json lists each dataset's names in its label order: ImageFolder's is by folder name
    labels = {"MNIST": CLASSNAMES, "Digits": sorted(CLASSNAMES), "CIFAR10": CLASSNAMES,
              "Food101": ["apple pie"], "MITStates": ["a"], "CLEVRCounts": ["10", "3"]}
    templates = {name: RELEASE_TEMPLATES for name in labels}
    return write_release_catalog(tmp_path / "clipeval", entries, labels, templates)


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
