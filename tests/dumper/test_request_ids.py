"""dumper/request_ids.py: engines' request ids as the int64 token metadata the aligners read."""

from __future__ import annotations

import types

import pytest
import torch

from dumper import dumper
from dumper.request_ids import PADDING, request_number, sequence_request_ids, token_request_ids

VLLM_SUFFIX = "-[0-9a-f]{8}$"


def test_integer_ids_keep_their_number_and_strings_hash_stably():
    assert request_number(7) == 7 and request_number("12") == 12
    # A string that is not a number: a 63-bit hash, the same in every process, never negative.
    rid = "3f2a9c0d41e84b7f9a0e2b1c5d6e7f80"
    assert 0 <= request_number(rid) < 2**63
    assert request_number("a") != request_number("b")
    assert request_number(-5) == request_number("-5") >= 0  # no negative ids: -1 marks padding


def test_the_hash_is_fixed_across_processes():
    # blake2b (8 bytes, little endian, top bit cleared): a value any process recomputes.
    import hashlib

    digest = hashlib.blake2b(b"cmpl-abc-0", digest_size=8).digest()
    assert request_number("cmpl-abc-0") == int.from_bytes(digest, "little") & (2**63 - 1)


def test_vllms_random_suffix_is_stripped_so_runs_share_ids():
    # vLLM's internal id: the caller's id, "-", 8 random hex characters.
    assert request_number("0-1a2b3c4d", VLLM_SUFFIX) == 0
    assert request_number("3-deadbeef", VLLM_SUFFIX) == request_number("3-0badcafe", VLLM_SUFFIX) == 3
    assert request_number("cmpl-x-0-0123abcd", VLLM_SUFFIX) == request_number("cmpl-x-0", None)
    assert request_number("0-1a2b3c4d") != 0  # without strip the whole string is hashed


def test_token_rows_from_starts_counts_or_one_per_request():
    # vLLM's query_start_loc for requests of 3, 1 and 2 scheduled tokens, in 8 padded rows.
    rows = token_request_ids(["5-00000000", "2-11111111", "9-22222222"], starts=[0, 3, 4, 6], rows=8,
                             strip=VLLM_SUFFIX)
    assert rows.dtype == torch.int64
    assert rows.tolist() == [5, 5, 5, 2, 9, 9, PADDING, PADDING]
    assert token_request_ids([4, 1], counts=[2, 3]).tolist() == [4, 4, 1, 1, 1]
    assert token_request_ids([4, 1, 8]).tolist() == [4, 1, 8]  # a decode batch
    assert token_request_ids([], starts=[0], rows=2).tolist() == [PADDING, PADDING]  # a dummy pass


@pytest.mark.parametrize("layout", [
    {"counts": [2, 3], "rows": 4},  # more tokens than rows
    {"starts": [0, 2], "rows": 4},  # one start too few
    {"starts": [1, 2, 3]},  # does not begin at 0
    {"counts": [2], "rows": 4},  # a count per request
    {"counts": [2, 1], "starts": [0, 2, 3]},
])
def test_layouts_that_do_not_fit_raise(layout):
    with pytest.raises(ValueError):
        token_request_ids([4, 1], **layout)


def test_whole_sequence_batches_number_each_prompt_on():
    model = types.SimpleNamespace()
    prefill = sequence_request_ids(model, torch.arange(5).reshape(1, 5))
    decode = sequence_request_ids(model, torch.tensor([[5]]))
    second = sequence_request_ids(model, torch.arange(3).reshape(1, 3))
    batch = sequence_request_ids(model, torch.arange(4).repeat(2, 1))
    batch_decode = sequence_request_ids(model, torch.tensor([[4], [4]]))
    assert prefill.tolist() == [[0] * 5] and decode.tolist() == [[0]] and second.tolist() == [[1, 1, 1]]
    assert batch.tolist() == [[2] * 4, [3] * 4] and batch_decode.tolist() == [[2], [3]]


def test_the_dumper_object_offers_both_to_presets():
    assert dumper.token_request_ids([1, 2], counts=[1, 2]).tolist() == [1, 2, 2]
    assert dumper.sequence_request_ids(types.SimpleNamespace(), torch.arange(2)).tolist() == [[0, 0]]
