"""Data: streaming WebDataset shards for training, demo data, transforms and tokenizer."""
import json

import open_clip

# Image members a sample may carry, in webdataset's key syntax (first present wins).
IMAGE_KEYS = "jpg;jpeg;png;webp"


def caption_list(value) -> list[str]:
    """The captions of a sample's text member, however it is stored: txt bytes or str with one
    caption per line, a JSON list, or a JSON object {"captions": [...]} / {"caption": str}."""
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text[:1] in "[{" and text else None
        except json.JSONDecodeError:
            value = None
        if value is None:
            return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        value = value.get("captions", value.get("caption", []))
    if isinstance(value, str):
        value = [value]
    return [str(c).strip() for c in value if str(c).strip()]


def tokenizer_for(cfg):
    """open_clip's BPE tokenizer (ships with the package: no download)."""
    return open_clip.get_tokenizer("ViT-B-16", context_length=cfg.context_length)


def transform_for(cfg, train: bool):
    return open_clip.image_transform(cfg.image_size, is_train=train)
