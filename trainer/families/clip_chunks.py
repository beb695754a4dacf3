"""Captions longer than CLIP's 75 tokens (kohya's ``max_token_length`` 150 / 225) and per-token
weights (``weighted_captions``), encoded the way kohya-ss/sd-scripts does it for training
(strategy_base._get_input_ids, strategy_sd / strategy_sdxl encode_tokens[_with_weights]):

* the caption is tokenized to 75 x n + 2 ids (BOS, up to 75 x n tokens, EOS, padding), then cut
  into n rows of 77: BOS + the next 75 ids + the sequence's last id. With a padding token other
  than EOS (SDXL's second tokenizer pads with "!") a row whose 76th id is text ends in EOS and a
  row with no text starts BOS EOS. Every row is encoded on its own.
* the rows' hidden states are joined back: the first row's BOS state, the 75 inner states of each
  row, the last row's last state: [B, 75 x n + 2, dim] (152 for 150, 227 for 225); n = 1 is the
  plain [B, 77, dim].
* SDXL's pooled output is the first row's (CLIP-G's projected EOS state).
* weights multiply the hidden state of each text token (BOS, EOS and padding keep 1.0); nothing
  renormalises the mean here (kohya's SD1.5 sample pipeline does, see encode_for_sampling).

Sample images during training are encoded as kohya encodes them: SDXL through the training
encoding above (max_token_length rows, weights always read); SD1.5 through kohya's long-prompt
pipeline (lpw_stable_diffusion.get_weighted_text_embeddings, max_embeddings_multiples 3): up to
225 tokens whatever max_token_length says, as many rows as the longer of prompt and negative
prompt needs, every row kept whole ([B, 77 x n, dim]), weights always read and the mean restored
(encode_for_sampling; where kohya would divide 0 by 0, the states are left unscaled instead of NaN).
"""

from __future__ import annotations

import math
import warnings

import torch

from ..data.prompt_weights import weighted_token_ids
from ..errors import TrainerError

CHUNK = 75  # text tokens per 77-position CLIP row (BOS and EOS take the other two)
ALLOWED = (None, 75, 150, 225)
SAMPLE_CHUNKS = 3  # kohya's sample pipeline: max_embeddings_multiples = 3


def chunk_count(max_token_length) -> int:
    """Rows of 75 tokens for kohya's ``max_token_length`` (None or 75: 1, 150: 2, 225: 3)."""
    if max_token_length in (None, 0, 75):
        return 1
    if max_token_length in (150, 225):
        return int(max_token_length) // CHUNK
    raise TrainerError(f"max_token_length = {max_token_length!r}: use 75 (the default), 150 or 225, the lengths "
                       "kohya allows (CLIP reads 75 tokens at a time).")


def _rows(ids: list[int], chunks: int, bos: int, eos: int, pad: int) -> list[list[int]]:
    """kohya's cut of a 75 x n + 2 id sequence into n rows of 77."""
    if chunks == 1:
        return [ids]
    rows = []
    for c in range(chunks):
        row = [bos] + ids[1 + CHUNK * c: 1 + CHUNK * (c + 1)] + [ids[-1]]
        if pad != eos:
            if row[-2] not in (eos, pad):  # text runs to the row's end: close it with EOS
                row[-1] = eos
            if row[1] == pad:  # a row with no text: BOS EOS PAD ...
                row[1] = eos
        rows.append(row)
    return rows


def _weight_rows(weights: list[float], chunks: int) -> list[list[float]]:
    if chunks == 1:
        return [weights]
    return [[1.0] + weights[1 + CHUNK * c: 1 + CHUNK * (c + 1)] + [1.0] for c in range(chunks)]


def chunk_ids(tokenizer, text: str, chunks: int, weighted: bool = False):
    """([n, 77] ids, [n, 77] weights or None) for one caption, as kohya's tokenize strategy."""
    length = CHUNK * chunks + 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    weights = None
    if weighted:
        body, body_weights, truncated = weighted_token_ids(tokenizer, text, length - 2)
        if truncated:
            warnings.warn(f"text longer than {length - 2} tokens was cut (max_token_length goes up to 225): "
                          f"{text[:60]!r}...", stacklevel=3)
        ids = [bos] + body + [eos] + [pad] * (length - 2 - len(body))
        weights = [1.0] + body_weights + [1.0] * (length - 1 - len(body_weights))
        weights = torch.tensor(_weight_rows(weights, chunks))
    else:
        ids = tokenizer(text, padding="max_length", truncation=True, max_length=length).input_ids
    return torch.tensor(_rows(list(ids), chunks, bos, eos, pad)), weights


def _hidden(encoder, ids: torch.Tensor, layer: int, final_norm: bool, device):
    """Hidden states [rows, 77, dim] of ``layer`` (negative: from the end) and the projected
    pooled output when the encoder has a projection (CLIP-G), else None."""
    out = encoder(ids.to(device), output_hidden_states=True)
    states = out.hidden_states[layer]
    if final_norm:
        states = getattr(encoder, "text_model", encoder).final_layer_norm(states)
    return states, getattr(out, "text_embeds", None)


def encode_chunks(encoder, tokenizer, captions: list[str], device, chunks: int, weighted: bool, layer: int,
                  final_norm: bool):
    """kohya's training encoding: ([B, 75 x n + 2, dim] weighted states, pooled of the first row or
    None)."""
    pairs = [chunk_ids(tokenizer, text, chunks, weighted) for text in captions]
    ids = torch.stack([p[0] for p in pairs])  # [B, n, 77]
    batch, rows, width = ids.shape
    states, pooled = _hidden(encoder, ids.reshape(batch * rows, width), layer, final_norm, device)
    states = states.reshape(batch, rows, width, states.shape[-1])
    if rows == 1:
        merged = states[:, 0]
    else:
        inner = states[:, :, 1:-1].reshape(batch, rows * CHUNK, states.shape[-1])
        merged = torch.cat([states[:, 0, :1], inner, states[:, -1, -1:]], dim=1)
    if weighted:
        w = torch.stack([p[1] for p in pairs])  # [B, n, 77]
        per_token = torch.cat([w[:, 0, :1], w[:, :, 1:-1].reshape(batch, rows * CHUNK), w[:, -1, -1:]], dim=1)
        merged = merged * per_token.to(merged.device, merged.dtype).unsqueeze(-1)
    if pooled is not None:
        pooled = pooled.reshape(batch, rows, -1)[:, 0]
    return merged, pooled


# -- SD1.5 sample images (kohya's long-prompt pipeline) ----------------------------------------------------
def encode_for_sampling(encoder, tokenizer, texts: list[str], device, layer: int, final_norm: bool):
    """([B, 77 x n, dim] states, pooled of the first row or None) for the prompt and negative
    prompt together (so both get the same n <= 3), weights applied and each text's mean restored."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    limit = CHUNK * SAMPLE_CHUNKS
    parsed = [weighted_token_ids(tokenizer, text, limit) for text in texts]
    if any(p[2] for p in parsed):
        warnings.warn(f"sample prompt longer than {limit} tokens was cut", stacklevel=3)
    chunks = max(1, min(SAMPLE_CHUNKS, math.ceil(max(len(p[0]) for p in parsed) / CHUNK)))
    length = CHUNK * chunks + 2
    rows, weights = [], []
    for body, body_weights, _ in parsed:
        ids = [bos] + body + [eos] * (length - 1 - len(body))  # the long-prompt pipeline pads with EOS
        rows.append(_rows(ids, chunks, bos, eos, eos))
        w = [1.0] + body_weights + [1.0] * (length - 1 - len(body_weights))
        weights.append(_weight_rows(w, chunks))
    ids = torch.tensor(rows)  # [B, n, 77]
    batch, n, width = ids.shape
    states, pooled = _hidden(encoder, ids.reshape(batch * n, width), layer, final_norm, device)
    states = states.reshape(batch, n * width, states.shape[-1])
    w = torch.tensor(weights).reshape(batch, n * width, 1).to(states.device, states.dtype)
    before = states.float().mean(dim=(-2, -1)).to(states.dtype)
    states = states * w
    after = states.float().mean(dim=(-2, -1)).to(states.dtype)
    # kohya divides as is: a mean of exactly 0 (a tiny CLIP whose last LayerNorm has no bias) gives
    # 0/0 = NaN there; here that text's states stay unscaled
    ratio = torch.where(after != 0, before / torch.where(after != 0, after, 1), torch.ones_like(after))
    states = states * ratio[:, None, None]
    if pooled is not None:
        pooled = pooled.reshape(batch, n, -1)[:, 0]
    return states, pooled
