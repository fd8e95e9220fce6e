"""An open_clip model behind our model interface (encode_image, encode_text, mean_text, logits),
so that public models are scored by the same evals as ours. It carries its own preprocessing
and tokenizer (`preprocess`, `tokenizer`): evals use them instead of ours."""
import torch.nn.functional as F
from torch import nn


class OpenClipSubject(nn.Module):
    def __init__(self, model, preprocess, tokenizer):
        super().__init__()
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer

    @property
    def logit_scale(self):
        return self.model.logit_scale

    def encode_image(self, images):
        return self.model.encode_image(images, normalize=True)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens, normalize=True)

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens)

    def mean_text(self, text_emb):
        return F.normalize(text_emb.mean(0), dim=-1)

    def logits(self, image_emb, text_emb, tau=None):
        out = self.model.logit_scale.exp() * image_emb @ text_emb.T
        return out if self.model.logit_bias is None else out + self.model.logit_bias
