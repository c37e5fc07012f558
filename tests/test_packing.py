"""Packed rows carry only real tokens and give the same losses as padded batches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mixtune.train.chat_tokens import IGNORE_INDEX, tokenize_chat
from mixtune.train.packing import PACKED_ATTENTION, pack, pad, register_packed_attention
from mixtune.train.losses import TokenLoss

CONVERSATIONS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is gout?"},
     {"role": "assistant", "content": "A form of arthritis caused by uric acid crystals in the joints."}],
    [{"role": "user", "content": "Is diabetes inherited?"},
     {"role": "assistant", "content": "Type 2 diabetes runs in families, but lifestyle matters a lot."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "What lowers blood pressure?"},
     {"role": "assistant", "content": "Less salt, regular exercise, and medicines such as diuretics."}],
]


@pytest.fixture(scope="module")
def chats(tiny_tokenizer):
    return [tokenize_chat(tiny_tokenizer, c) for c in CONVERSATIONS]


def _model(path, attention: str):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    model.set_attn_implementation(attention)
    return model.eval()


def test_pack_restarts_positions_and_ignores_each_first_label(chats):
    batch = pack(chats)
    lengths = [c.num_tokens for c in chats]
    starts = [0, lengths[0], lengths[0] + lengths[1]]

    assert batch.input_ids.shape == (1, sum(lengths)) and batch.attention_mask is None
    assert batch.cu_seq_lens.tolist() == [0, *[sum(lengths[:i + 1]) for i in range(3)]]
    assert batch.position_ids[0].tolist() == [p for n in lengths for p in range(n)]
    assert all(batch.labels[0, s].item() == IGNORE_INDEX for s in starts)
    assert batch.real_tokens == batch.processed_tokens == sum(lengths)
    # no target ever crosses into the next example
    keep, _ = batch.shifted_targets()
    assert not any(keep[0, s - 1].item() for s in starts[1:])


def test_pad_counts_padding_as_processed_but_not_real(chats, tiny_tokenizer):
    batch = pad(chats, tiny_tokenizer.pad_token_id)
    longest = max(c.num_tokens for c in chats)

    assert batch.input_ids.shape == (3, longest)
    assert batch.real_tokens == sum(c.num_tokens for c in chats) < batch.processed_tokens == 3 * longest
    assert int(batch.attention_mask.sum()) == batch.real_tokens


@pytest.mark.parametrize("attention", ["sdpa", "eager", "packed_sdpa"])
def test_packed_token_losses_equal_padded_ones(tiny_model_dir, chats, tiny_tokenizer, attention):
    # Equal per-token losses prove no token attends across examples in the packed row.
    name = register_packed_attention() if attention == "packed_sdpa" else attention
    token_loss = TokenLoss(None, liger=False)
    with torch.no_grad():
        packed, packed_owner = token_loss(_model(tiny_model_dir, name), pack(chats))
        padded, padded_owner = token_loss(_model(tiny_model_dir, "sdpa"), pad(chats, tiny_tokenizer.pad_token_id))

    assert packed.shape == padded.shape and packed_owner.tolist() == padded_owner.tolist()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_packed_rows_leak_across_examples_if_a_cache_is_created(tiny_model_dir, chats):
    # Why model_inputs passes use_cache=False: with a cache, transformers skips packed-sequence
    # detection and every example attends to the ones before it.
    model = _model(tiny_model_dir, "sdpa")
    batch = pack(chats)
    keep, _ = batch.shifted_targets()
    with torch.no_grad():
        safe = model(**batch.model_inputs(), logits_to_keep=keep).logits
        leaky = model(**(batch.model_inputs() | {"use_cache": True}), logits_to_keep=keep).logits
    first_example = int(keep[0, :chats[0].num_tokens].sum())

    torch.testing.assert_close(safe[:first_example], leaky[:first_example])  # nothing before it to see
    assert not torch.allclose(safe[first_example:], leaky[first_example:], atol=1e-4)


def test_packed_attention_refuses_padded_batches(tiny_model_dir, chats, tiny_tokenizer):
    model = _model(tiny_model_dir, register_packed_attention())
    batch = pad(chats, tiny_tokenizer.pad_token_id)

    with pytest.raises(ValueError, match=PACKED_ATTENTION):
        model(**batch.model_inputs())
