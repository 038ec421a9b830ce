"""How ConvLLaVA grows a language model's embedding and lm_head for `<image>`: padded rows that are the mean row."""

import torch

#: The embedding matrix grown by `<image>` is padded to a multiple of this (32000 + 1 -> 32064 for Vicuna).
EMBEDDING_MULTIPLE = 64


def padded_vocab_size(num_tokens: int) -> int:
    """Rows of an embedding matrix for `num_tokens` tokens: `num_tokens` rounded up to `EMBEDDING_MULTIPLE`."""
    return -(-num_tokens // EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE


def pad_rows_with_mean(weight: torch.Tensor, rows: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """
    `weight` in `dtype` (default: its own), grown to `rows` rows, each new row the mean of the original rows
    (computed in float32): a new token's embedding is the mean embedding and its logit the mean logit.
    """
    dtype = dtype or weight.dtype
    mean = weight.mean(dim=0, dtype=torch.float32, keepdim=True)
    return torch.cat([weight.to(dtype), mean.to(dtype).expand(rows - weight.shape[0], -1)])
