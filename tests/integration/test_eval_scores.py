"""Zero-shot scores on real data: agreement with open_clip's own classifier utilities, the
Llip/CLIP equivalence, readers with workers and ranks, bf16 on a GPU, a reader error in a worker."""
import dataclasses

import pytest
import torch

from helpers import digits_batches
from llip.data import tokenizer_for
from llip.data.synthetic.digits import CLASSNAMES, EVAL_TEMPLATES
from llip.evaluation.datasets import classification_batches
from llip.evaluation.probe import image_features
from llip.evaluation.zeroshot import class_embeddings, classify
from llip.loading import load_model
from llip.models import DualEncoder, LlipModel, build_model
from llip.run_configs import resolve


def test_clip_top1_equals_open_clip_zero_shot_classifier(trained_clip, digits):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    model, cfg, _ = load_model(trained_clip)
    tokenizer = tokenizer_for(cfg)
    ours = classify(model, digits_batches(digits, cfg),
                    class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES))

    class OpenClipView(torch.nn.Module):  # the interface open_clip's utility expects
        def encode_text(self, tokens, normalize=False):
            return model.encode_text(tokens)

    weights = build_zero_shot_classifier(OpenClipView(), tokenizer, CLASSNAMES,
                                         [lambda c, t=t: t.format(c=c) for t in EVAL_TEMPLATES],
                                         num_classes_per_batch=4, device="cpu", use_tqdm=False)
    correct = n = 0
    with torch.no_grad():
        for images, labels in digits_batches(digits, cfg):
            pred = (model.encode_image(images) @ weights).argmax(dim=1)
            correct += (pred == labels).sum().item()
            n += len(labels)
    assert n == 360 and ours["n"] == 360
    assert ours["acc1"] == correct / n
    assert ours["acc1"] > 0.5  # trained on real data: far above the 0.10 chance level


class RepeatTokens(torch.nn.Module):
    """A 1-prefix ViT whose output token is repeated K times: identical mixture tokens."""

    def __init__(self, visual, k):
        super().__init__()
        self.visual, self.k = visual, k

    def forward(self, images):
        return self.visual(images).expand(-1, self.k, -1)


def test_llip_with_identical_mixture_tokens_scores_like_clip(digits):
    llip_cfg = resolve("llip_demo")
    torch.manual_seed(0)
    llip = LlipModel(llip_cfg).eval()
    clip = DualEncoder(dataclasses.replace(llip_cfg, loss="siglip")).eval()
    llip.visual = RepeatTokens(clip.visual, llip_cfg.mixture_tokens)
    llip.text = clip.text
    head = llip.head
    with torch.no_grad():  # identical per-token projections: uniform attention, x = W_o W_v z
        head.key_proj.copy_(head.key_proj[:1].expand_as(head.key_proj))
        head.value_proj.copy_(head.value_proj[:1].expand_as(head.value_proj))
        clip.image_proj.copy_(head.value_proj[0] @ head.out_proj.weight.T)
        clip.text_proj.copy_(head.target_proj.weight.T)
        clip.logit_scale.copy_(head.logit_scale)
        clip.logit_bias.copy_(head.logit_bias)
    tokenizer = tokenizer_for(llip_cfg)
    images, _ = next(iter(digits_batches(digits, llip_cfg)))
    tokens = tokenizer([t.format(c=c) for c in CLASSNAMES for t in EVAL_TEMPLATES])
    with torch.no_grad():
        torch.testing.assert_close(llip.logits(*llip(images, tokens)),
                                   clip.logits(*clip(images, tokens)), atol=1e-5, rtol=1e-5)
    # the probes' Llip feature (uniform mixture W_o mean_k v_k) is then CLIP's image embedding
    torch.testing.assert_close(image_features(llip, images), image_features(clip, images),
                               atol=1e-5, rtol=1e-5)
    results = [classify(m, digits_batches(digits, llip_cfg),
                        class_embeddings(m, tokenizer, CLASSNAMES, EVAL_TEMPLATES))
               for m in (llip, clip)]
    assert results[0] == results[1]


def _gray_level(image):
    return torch.tensor(image.getpixel((0, 0))[0])


def _numbered_shards(tmp_path, sizes):
    """Sample i: an image of gray level 5 i, captions 'caption i' and 'alt i', class i % 3."""
    import io

    import webdataset as wds
    from PIL import Image
    i = 0
    for shard, n in enumerate(sizes):
        with wds.TarWriter(str(tmp_path / f"n-{shard:06d}.tar")) as sink:
            for _ in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (4, 4), (5 * i,) * 3).save(buf, format="PNG")
                sink.write({"__key__": f"s{i:04d}", "png": buf.getvalue(),
                            "txt": f"caption {i}\nalt {i}", "cls": str(i % 3)})
                i += 1
    return str(tmp_path / f"n-{{000000..{len(sizes) - 1:06d}}}.tar"), i


def test_wds_readers_with_workers_and_ranks_keep_each_sample_identity(tmp_path):
    """Whole shards per (rank, worker) when there are enough, every n-th sample otherwise:
    either way each sample is read once and keeps its label and its retrieval index."""
    from llip.evaluation.datasets import retrieval_data
    path, n = _numbered_shards(tmp_path, [5, 4, 3])
    entry = {"name": "numbers", "format": "wds", "path": path, "classnames": ["a", "b", "c"],
             "caption_key": "txt"}
    for workers, world in ((0, 1), (2, 1), (1, 2), (2, 2)):  # whole shards, then samples
        seen_labels, seen_index = [], []
        for rank in range(world):
            batches, names = classification_batches(entry, _gray_level, 2, workers, rank, world)
            for images, labels in batches:
                assert (images // 5 % 3).tolist() == labels.tolist()
                seen_labels += (images // 5).tolist()
            captions, owner, batches = retrieval_data(entry, _gray_level, 2, workers, rank,
                                                      world)
            assert len(captions) == 2 * n and owner == [i // 2 for i in range(2 * n)]
            assert captions[:4] == ["caption 0", "alt 0", "caption 1", "alt 1"]
            for images, index in batches:
                assert (images // 5).tolist() == index.tolist(), (workers, world)
                seen_index += index.tolist()
        assert sorted(seen_labels) == sorted(seen_index) == list(range(n)), (workers, world)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scoring_runs_in_bf16_and_scores_like_fp32_on_cpu(digits):
    from llip.evaluation.zeroshot import inference_precision
    cfg = resolve("llip_demo")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokenizer = tokenizer_for(cfg)
    images, _ = next(iter(digits_batches(digits, cfg)))
    with torch.no_grad():
        cpu = model.logits(model.encode_image(images),
                           class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES))
        model.cuda()
        class_emb = class_embeddings(model, tokenizer, CLASSNAMES, EVAL_TEMPLATES, "cuda")
        with inference_precision("cuda"):
            image_emb = model.encode_image(images.cuda())
            gpu = model.logits(image_emb, class_emb).float().cpu()
    assert image_emb.dtype == torch.bfloat16
    cosine_error = (gpu - cpu).abs().max().item() / model.head.logit_scale.exp().item()
    assert cosine_error < 0.05, cosine_error


def test_a_reader_error_in_a_worker_is_one_line(tmp_path):
    import webdataset as wds

    from evals.main_mc import one_line
    with wds.TarWriter(str(tmp_path / "t-000000.tar")) as sink:
        sink.write({"__key__": "no_image", "txt": "a caption", "cls": "0"})
    entry = {"name": "bad", "format": "wds", "path": str(tmp_path / "t-000000.tar"),
             "classnames": ["a"]}
    batches, _ = classification_batches(entry, _gray_level, 2, 1)
    with pytest.raises(Exception) as info:
        list(batches)
    assert one_line(info.value) == f"dataset 'bad': sample no_image of {entry['path']} has no " \
                                   "image member (jpg;jpeg;png;webp)"
