"""Data: streaming WebDataset shards for training, demo data, transforms and tokenizer."""
import open_clip


def tokenizer_for(cfg):
    """open_clip's BPE tokenizer (ships with the package: no download)."""
    return open_clip.get_tokenizer("ViT-B-16", context_length=cfg.context_length)


def transform_for(cfg, train: bool):
    return open_clip.image_transform(cfg.image_size, is_train=train)
