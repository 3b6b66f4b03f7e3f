"""Golden files from real data: Psyche's fineweb (.ds) and dolma nanoset (.npy) token files,
decoded with the Llama 2 tokenizer, and the hermes3 preprocessed parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psyche_data.http import HttpDataProvider
from psyche_data.local import LocalDataProvider
from psyche_data.server import start_server
from psyche_data.sources import resolve_sources

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")


def normalise(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def llama2_tokenizer():
    from data_helpers import fixtures_dir

    path = fixtures_dir() / "llama2_tokenizer.json"
    return tokenizers.Tokenizer.from_file(str(path)) if path.is_file() else None


def decode_all(tokenizer, provider) -> list[str]:
    rows = provider.read(range(provider.num_sequences))
    return [normalise(tokenizer.decode(row.tolist(), skip_special_tokens=True)) for row in rows]


@pytest.mark.parametrize("dataset", ["fineweb", "dolma"])
def test_decoded_sequences_are_found(fixtures, llama2_tokenizer, dataset):
    with LocalDataProvider(fixtures / dataset / "data", 2048) as provider:
        # 12288 bytes = exactly 3 sequences of 2048 two-byte tokens (Psyche's loop reads 2)
        assert provider.num_sequences == 3
        texts = decode_all(llama2_tokenizer, provider)
    for i in (0, 1):
        expected = normalise((fixtures / dataset / "decoded" / f"{i}.txt").read_text())
        assert any(expected in text for text in texts), f"{dataset} decoded/{i}.txt not found"
        assert texts[i] == expected  # and in file order, sequence i is decoded/i.txt


def test_dolma_npy_is_raw_tokens_without_a_numpy_header(fixtures):
    raw = (fixtures / "dolma" / "data" / "dolma-v1_7-30B-tokenized-llama2-nanoset.npy").read_bytes()
    assert not raw.startswith(b"\x93NUMPY")
    assert np.frombuffer(raw[:2], "<u2")[0] == 1  # Llama 2 BOS


@pytest.mark.parametrize("dataset", ["fineweb", "dolma"])
def test_http_reads_the_same_real_data(fixtures, dataset):
    folder = fixtures / dataset / "data"
    server, port = start_server(folder)
    try:
        files = resolve_sources(f"http://127.0.0.1:{port}/").files
        with HttpDataProvider(files, 2048, seed=1) as http:
            local = LocalDataProvider(folder, 2048, seed=1)
            assert np.array_equal(http.read(range(3)), local.read(range(3)))
    finally:
        server.close()


def test_hermes3_preprocessed_parquet(fixtures):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    from psyche_data.preprocessed import PreprocessedDataProvider

    provider = PreprocessedDataProvider(fixtures / "hermes3" / "data", 4096)
    assert provider.num_sequences == 2
    for i, sample in enumerate(provider.get_samples(range(2))):
        expected = json.loads((fixtures / "hermes3" / "decoded" / f"{i}.json").read_text())
        assert sample.input_ids.tolist() == expected["inputs"]
        assert sample.labels.tolist() == expected["labels"]
        assert sample.position_ids.tolist() == expected["position_ids"]
        assert list(sample.sequence_lengths) == expected["sequence_lengths"]
        assert sum(sample.sequence_lengths) == 4096
