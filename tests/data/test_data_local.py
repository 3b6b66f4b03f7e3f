"""The local provider: file order, sequences, shuffling, token sizes and bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from data_helpers import expected_sequences, make_options, write_tokens

from psyche_core.data import TokenizedData
from psyche_core.errors import PsycheError
from psyche_data.local import LocalDataProvider, build_local

NAMES = ["a.ds", "b.ds", "c.bin", "d.npy"]  # sorted by name, whatever the write order


def test_reads_every_whole_sequence_in_name_order(token_folder):
    provider = LocalDataProvider(token_folder, 100)
    expected = expected_sequences(token_folder, NAMES, 100)
    # 1000 -> 10, 2500 -> 25, 64 -> 0, 3000 -> 30 sequences
    assert provider.num_sequences == len(expected) == 65
    assert np.array_equal(provider.read(range(65)), expected)
    samples = provider.get_samples(range(3, 6))
    assert all(isinstance(s, TokenizedData) for s in samples)
    assert samples[0].input_ids.dtype == np.int32
    assert np.array_equal(samples[0].input_ids, expected[3])
    assert "4 files" in provider.describe()


def test_seeded_shuffle_is_a_deterministic_permutation(token_folder):
    plain = LocalDataProvider(token_folder, 100).read(range(65))
    a = LocalDataProvider(token_folder, 100, seed=5).read(range(65))
    b = LocalDataProvider(token_folder, 100, seed=5).read(range(65))
    c = LocalDataProvider(token_folder, 100, seed=6).read(range(65))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plain)
    assert not np.array_equal(a, c)
    key = lambda rows: sorted(map(bytes, rows.astype(np.uint16)))  # noqa: E731
    assert key(a) == key(plain)


def test_any_id_order_and_a_list_of_ids(token_folder):
    provider = LocalDataProvider(token_folder, 100, seed=1)
    whole = provider.read(range(65))
    assert np.array_equal(provider.read([64, 0, 7]), whole[[64, 0, 7]])


def test_past_the_end_is_a_clear_error(token_folder):
    provider = LocalDataProvider(token_folder, 100)
    with pytest.raises(PsycheError, match=r"sample id 65 is past the end: the data has 65"):
        provider.get_samples(range(60, 66))


def test_token_size_4(tmp_path):
    tokens = np.arange(100_000, 100_000 + 50, dtype=np.uint32)
    write_tokens(tmp_path / "x.bin", tokens, token_size=4)
    provider = LocalDataProvider(tmp_path, 8, token_size=4)
    assert provider.num_sequences == 6
    assert provider.read([1])[0].tolist() == list(range(100_008, 100_016))
    assert provider.read([1]).dtype == np.int64  # 4-byte tokens may not fit an int32
    write_tokens(tmp_path / "x.bin", [2**32 - 1] * 8, token_size=4)
    assert LocalDataProvider(tmp_path, 8, token_size=4).read([0])[0, 0] == 2**32 - 1


def test_sequence_ending_exactly_at_the_end_of_a_file_is_kept(tmp_path):
    write_tokens(tmp_path / "x.ds", np.arange(30))
    provider = LocalDataProvider(tmp_path, 10)
    assert provider.num_sequences == 3
    assert provider.read([2])[0].tolist() == list(range(20, 30))


def test_subfolders_are_read_in_path_order_and_hidden_ones_skipped(tmp_path):
    write_tokens(tmp_path / "z.ds", np.full(4, 3))
    write_tokens(tmp_path / "data" / "a.ds", np.full(4, 1))
    write_tokens(tmp_path / "data" / "b.ds", np.full(4, 2))
    write_tokens(tmp_path / ".cache" / "a.ds", np.full(4, 9))
    write_tokens(tmp_path / ".hidden.ds", np.full(4, 9))
    provider = LocalDataProvider(tmp_path, 4)
    assert provider.read(range(3))[:, 0].tolist() == [1, 2, 3]


def test_a_numpy_format_npy_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(100, dtype=np.uint16))
    with pytest.raises(PsycheError, match=r"x\.npy is a NumPy-format array"):
        LocalDataProvider(tmp_path, 10)


def test_a_single_file_path(token_folder):
    provider = LocalDataProvider(token_folder / "b.ds", 100)
    assert provider.num_sequences == 25


def test_reads_from_another_thread(token_folder):
    provider = LocalDataProvider(token_folder, 100, seed=3)
    got = {}
    thread = threading.Thread(target=lambda: got.update(x=provider.read(range(10, 20))))
    thread.start()
    thread.join()
    assert np.array_equal(
        got["x"], LocalDataProvider(token_folder, 100, seed=3).read(range(10, 20))
    )
    provider.close()


def test_factory_reads_options(token_folder):
    options = make_options(data_path=str(token_folder), sequence_length=100, seed=5)
    with build_local(options) as provider:
        assert np.array_equal(
            provider.read(range(5)), LocalDataProvider(token_folder, 100, seed=5).read(range(5))
        )
    with pytest.raises(PsycheError, match="needs --data-path"):
        build_local(make_options())


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        ("missing", {}, "does not exist"),
        ("empty", {}, "is empty"),
        ("no_data", {}, r"has no \.ds, \.bin or \.npy files"),
        ("odd_size", {}, r"odd\.ds: size 7 bytes is not a multiple of the token size"),
        ("short", {"sequence_length": 1000}, "longer than every data file"),
        ("ok", {"token_size": 3}, "token size must be 2 or 4"),
    ],
)
def test_bad_input(tmp_path, setup, kwargs, message):
    folder = tmp_path / "data"
    if setup != "missing":
        folder.mkdir()
    if setup == "no_data":
        (folder / "notes.txt").write_text("hi")
    if setup == "odd_size":
        (folder / "odd.ds").write_bytes(b"\x01" * 7)
    if setup in ("short", "ok"):
        write_tokens(folder / "x.ds", np.arange(100))
    arguments = {"sequence_length": 10, "token_size": 2, **kwargs}
    with pytest.raises(PsycheError, match=message):
        LocalDataProvider(folder, **arguments)
