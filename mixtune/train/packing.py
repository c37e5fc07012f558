"""Padding-free packing: a micro-batch of conversations as one row, attention kept per example.

Padding a micro-batch to its longest example wastes compute on tokens that
carry nothing: on chat data with a long tail of lengths, half of a padded
batch is often padding. Packing concatenates the examples into one row
(shape (1, total_tokens)) instead, so every processed token is real.

Attention must still stay inside each example. Three things make that so:

- ``position_ids`` restart at 0 for every example. transformers' masking
  utilities (``find_packed_sequence_indices`` in ``masking_utils``) read a
  drop in position ids as a new sequence and build a block-diagonal causal
  mask for sdpa and eager attention; flash-attention turns the same position
  ids (or ``cu_seq_lens``) into varlen calls.
- That detection only runs when ``attention_mask`` is None and no KV cache
  exists. Models default to ``use_cache=True``, which creates an empty cache
  and silently turns the detection off; so ``model_inputs`` always passes
  ``use_cache=False`` and never an attention mask.
- The first label of every example is ignored, so the last token of one
  example is never trained to predict the first token of the next.

``cu_seq_lens`` (cumulative example lengths, shape (examples + 1,)) go with the
batch for attention kernels that take them directly (``packed_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mixtune.train.chat_tokens import IGNORE_INDEX, TokenizedChat


@dataclass
class MicroBatch:
    """Model inputs for one forward pass plus what the loss accounting needs."""

    input_ids: torch.Tensor  # (rows, tokens)
    labels: torch.Tensor  # (rows, tokens), IGNORE_INDEX where not supervised
    position_ids: torch.Tensor  # (rows, tokens)
    example_index: torch.Tensor  # (rows, tokens): which example of the micro-batch, -1 on padding
    attention_mask: torch.Tensor | None  # (rows, tokens) for padded batches; None when packed
    cu_seq_lens: torch.Tensor | None  # (examples + 1,) int32, packed batches only
    max_example_tokens: int
    real_tokens: int  # tokens that belong to an example
    processed_tokens: int  # real tokens plus padding

    @property
    def packed(self) -> bool:
        return self.attention_mask is None

    def to(self, device: torch.device | str) -> "MicroBatch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return MicroBatch(
            move(self.input_ids), move(self.labels), move(self.position_ids), move(self.example_index),
            move(self.attention_mask), move(self.cu_seq_lens), self.max_example_tokens,
            self.real_tokens, self.processed_tokens,
        )

    def model_inputs(self) -> dict:
        """Keyword arguments for a causal LM's forward (see the module docstring for why each)."""
        inputs = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        if self.packed:
            inputs.update(
                cu_seq_lens_q=self.cu_seq_lens, cu_seq_lens_k=self.cu_seq_lens,
                max_length_q=self.max_example_tokens, max_length_k=self.max_example_tokens,
            )
        else:
            inputs["attention_mask"] = self.attention_mask
        return inputs

    def shifted_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep, targets): positions whose next token is supervised, and those next tokens.

        ``keep`` is a bool mask of shape (rows, tokens); targets has shape (kept,),
        in the same row-major order as ``hidden_states[keep]``.
        """
        next_labels = torch.full_like(self.labels, IGNORE_INDEX)
        next_labels[:, :-1] = self.labels[:, 1:]
        keep = next_labels != IGNORE_INDEX
        return keep, next_labels[keep]


def _checked(examples: Sequence[TokenizedChat]) -> None:
    if not examples:
        raise ValueError("a micro-batch needs at least one example")
    for chat in examples:
        if not chat.input_ids:
            raise ValueError("an example has no tokens")


def pack(examples: Sequence[TokenizedChat]) -> MicroBatch:
    """Concatenate examples into one row; positions restart per example."""
    _checked(examples)
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    example_index: list[int] = []
    cu_seq_lens = [0]
    for index, chat in enumerate(examples):
        length = len(chat.input_ids)
        input_ids.extend(chat.input_ids)
        # The first token is never a target: it would be predicted from the previous example.
        labels.append(IGNORE_INDEX)
        labels.extend(chat.labels[1:])
        positions.extend(range(length))
        example_index.extend([index] * length)
        cu_seq_lens.append(cu_seq_lens[-1] + length)
    total = len(input_ids)
    return MicroBatch(
        input_ids=torch.tensor([input_ids], dtype=torch.long),
        labels=torch.tensor([labels], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        example_index=torch.tensor([example_index], dtype=torch.long),
        attention_mask=None,
        cu_seq_lens=torch.tensor(cu_seq_lens, dtype=torch.int32),
        max_example_tokens=max(len(c.input_ids) for c in examples),
        real_tokens=total,
        processed_tokens=total,
    )


def pad(examples: Sequence[TokenizedChat], pad_token_id: int) -> MicroBatch:
    """Right-pad examples to the longest one; the classic batch, kept for ``packing: false``."""
    _checked(examples)
    longest = max(len(c.input_ids) for c in examples)
    rows = len(examples)
    input_ids = torch.full((rows, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((rows, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((rows, longest), dtype=torch.long)
    example_index = torch.full((rows, longest), -1, dtype=torch.long)
    for row, chat in enumerate(examples):
        length = len(chat.input_ids)
        input_ids[row, :length] = torch.tensor(chat.input_ids)
        labels[row, 1:length] = torch.tensor(chat.labels[1:], dtype=torch.long)
        attention_mask[row, :length] = 1
        example_index[row, :length] = row
    position_ids = torch.arange(longest).unsqueeze(0).expand(rows, -1).contiguous()
    real = sum(len(c.input_ids) for c in examples)
    return MicroBatch(
        input_ids=input_ids, labels=labels, position_ids=position_ids, example_index=example_index,
        attention_mask=attention_mask, cu_seq_lens=None, max_example_tokens=longest,
        real_tokens=real, processed_tokens=rows * longest,
    )


def collate(examples: Sequence[TokenizedChat], packing: bool, pad_token_id: int) -> MicroBatch:
    return pack(examples) if packing else pad(examples, pad_token_id)


# --- attention that never looks across examples, without a (tokens x tokens) mask ---

PACKED_ATTENTION = "mixtune_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, cu_seq_lens_q=None, **kwargs):
    """Causal sdpa run separately on each packed example.

    The block-diagonal mask transformers builds for packed rows is correct but
    costs (tokens x tokens) per forward, and attention over it computes every
    masked block too: for eight 400-token examples that is 8x the work of
    attending within each example. Slicing by ``cu_seq_lens`` does only the
    diagonal blocks, each with ``is_causal`` so sdpa can pick its fast kernels.
    Shapes: query (1, heads, tokens, head_dim); key/value (1, kv_heads, tokens, head_dim).
    """
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention needs a packed row with cu_seq_lens; "
                         "use 'sdpa' for padded batches and inference")
    groups = query.shape[1] // key.shape[1]
    bounds = _example_bounds(cu_seq_lens_q)
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=groups > 1,
        )
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    attn_output = torch.cat(outputs, dim=2)  # (1, heads, tokens, head_dim)
    return attn_output.transpose(1, 2).contiguous(), None


_bounds_cache: list = [None, None]  # (tensor, its values as a list): every layer gets the same tensor


def _example_bounds(cu_seq_lens: torch.Tensor) -> list[int]:
    # On a GPU, .tolist() waits for the device; once per forward pass instead of once per layer.
    if _bounds_cache[0] is not cu_seq_lens:
        _bounds_cache[:] = [cu_seq_lens, cu_seq_lens.tolist()]
    return _bounds_cache[1]


def register_packed_attention() -> str:
    """Make ``PACKED_ATTENTION`` a valid ``attn_implementation``; returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    return PACKED_ATTENTION
