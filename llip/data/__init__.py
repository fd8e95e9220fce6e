"""Data: streaming WebDataset shards for training, demo data, transforms and tokenizer."""
import io
import json

import open_clip
from PIL import Image

# Image members a sample may carry, in webdataset's key syntax (first present wins).
IMAGE_KEYS = "jpg;jpeg;png;webp"


def sample_image(sample: dict) -> Image.Image:
    """The RGB image of a raw webdataset sample (first of IMAGE_KEYS present). Shards are data:
    this and caption_list are the only decoders applied to their members (never webdataset's
    default ones, which unpickle .pyd and torch.load .pth members)."""
    key = next((k for k in IMAGE_KEYS.split(";") if k in sample), None)
    if key is None:
        raise ValueError(f"sample {sample.get('__key__')!r} has no image member ({IMAGE_KEYS})")
    with Image.open(io.BytesIO(sample[key])) as image:
        image.load()
        return image.convert("RGB")


def caption_list(value) -> list[str]:
    """The captions of a sample's text member, however it is stored: txt bytes or str with one
    caption per line, a JSON list, or a JSON object {"captions": [...]} / {"caption": str}."""
    if value is None:
        return []
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exn:
            raise ValueError(f"caption is not UTF-8 text (byte {exn.start})") from None
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
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, list):  # null, a number, true: no caption (never the text "None")
        return []
    # Only strings and numbers are captions: a null or nested entry is dropped, not "None".
    texts = [str(c).strip() for c in value
             if isinstance(c, str) or (isinstance(c, (int, float)) and not isinstance(c, bool))]
    return [c for c in texts if c]


def tokenizer_for(cfg):
    """open_clip's BPE tokenizer (ships with the package: no download)."""
    return open_clip.get_tokenizer("ViT-B-16", context_length=cfg.context_length)


def transform_for(cfg, train: bool):
    return open_clip.image_transform(cfg.image_size, is_train=train)
