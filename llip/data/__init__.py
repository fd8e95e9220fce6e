"""Data: streaming WebDataset shards for training, demo data, transforms and tokenizer."""
import io
import json
import os
import stat

import numpy
import open_clip
from PIL import Image, ImageOps

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
        return to_rgb(image)


# Wider or taller than this is no photograph (a 1 x 4,000,000 PNG is 8 KB, and dies in a resize
# to 224 on the short side with a bare MemoryError): refused by name instead.
MAX_ASPECT = 50


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB image as a viewer shows it: EXIF orientation applied (phones store JPEGs sideways
    with a rotate tag), 16-bit grey scaled to 8 bits (PIL's convert clips it: a 16-bit PNG came
    out 99.6% white); anything else as PIL converts it."""
    width, height = image.size
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise ValueError(f"image of {width}x{height} pixels: an aspect ratio beyond "
                         f"{MAX_ASPECT}:1 is not a picture to train or evaluate on")
    if image.getexif().get(ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey: 0..65535
        wide = numpy.asarray(image, dtype=numpy.float64)
        image = Image.fromarray(numpy.clip(wide / 257.0 + 0.5, 0, 255).astype(numpy.uint8))
    return image.convert("RGB")


ORIENTATION = 0x0112  # the EXIF tag


def open_image(path: str) -> Image.Image:
    """The RGB image in the file at `path`, which must be a regular file: a FIFO or a device
    named like an image would block the reader for ever (opened without waiting, then refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file (a FIFO, device or socket named "
                             "like an image): remove it from the folder")
        with os.fdopen(fd, "rb") as f:
            fd = None
            with Image.open(io.BytesIO(f.read())) as image:
                return to_rgb(image)
    finally:
        if fd is not None:
            os.close(fd)


def sample_captions(sample: dict) -> list[str]:
    """The captions of a training sample. Its .json, if it names any ("captions": several, one
    drawn per use; or "caption"); else its .txt as open_clip reads it: the whole text is one
    caption (newlines and a leading "[" included, never parsed). A .json without captions, or not
    JSON, does not shadow a good .txt."""
    found = _json_captions(sample["json"]) if "json" in sample else []
    if found or "txt" not in sample:
        return found
    text = sample["txt"]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exn:
            raise ValueError(f"caption is not UTF-8 text (byte {exn.start})") from None
    return [text.strip()] if text.strip() else []


def _json_captions(raw) -> list[str]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8): the .txt, if any, decides
        return []
    if not isinstance(value, (dict, list)):
        return []
    return caption_list(value)


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
        except (json.JSONDecodeError, RecursionError):  # not JSON (or nested 100k deep): text
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
