import pytest
import torch

from psyche_core.errors import InvalidInputError
from psyche_core.inputs import check_inputs, document_layout, positions_and_mask


def test_document_layout_restarts_positions_and_blocks_attention():
    positions, mask = document_layout([[2, 3], [5]], batch=2, length=5, device=torch.device("cpu"))
    assert positions.tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert torch.equal(mask[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    _, none = document_layout([[5], [5]], 2, 5, torch.device("cpu"))
    assert none is None  # one document per row: plain causal attention


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_ids": torch.tensor([[1, 99]])}, "token id 99 is outside the vocabulary"),
        ({"input_ids": torch.ones(1, 9, dtype=torch.long)}, "longer than the model's context"),
        ({"input_ids": torch.ones(3, dtype=torch.long)}, "must be (batch, seq_len)"),
        ({"labels": torch.tensor([[1, 50]])}, "label 50 is outside the vocabulary"),
        ({"labels": torch.tensor([[1]])}, "labels shape (1, 1) differs"),
        ({"position_ids": torch.zeros(1, 3, dtype=torch.long)}, "position_ids shape (1, 3)"),
    ],
)
def test_bad_inputs_are_one_clear_error(kwargs, message):
    args = {"input_ids": torch.tensor([[1, 2]]), **kwargs}
    with pytest.raises(InvalidInputError) as excinfo:
        check_inputs(**args, vocab_size=32, max_length=8)
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_good_inputs_and_ignored_labels_pass():
    ids = torch.tensor([[1, 2, 3]])
    check_inputs(ids, torch.tensor([[-100, 2, 31]]), torch.arange(3)[None], vocab_size=32)
    with pytest.raises(InvalidInputError, match=r"sequence_lengths\[0\] = \[2, 2\]"):
        document_layout([[2, 2]], 1, 3, torch.device("cpu"))


def test_positions_and_mask_prefers_explicit_positions():
    ids = torch.zeros(2, 4, dtype=torch.long)
    positions, mask = positions_and_mask(ids)
    assert positions.tolist() == [[0, 1, 2, 3]] and mask is None
    positions, mask = positions_and_mask(ids, sequence_lengths=[[1, 3], [4]])
    assert positions.tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]] and mask.shape == (2, 1, 4, 4)
    explicit = torch.tensor([5, 6, 7, 8])
    positions, mask = positions_and_mask(ids, explicit, [[1, 3], [4]])
    assert positions.tolist() == [[5, 6, 7, 8]] and mask.shape == (2, 1, 4, 4)
