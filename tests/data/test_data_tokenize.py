"""`psyche data tokenize`: text in, token shards out, read back by the local provider."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import CORPUS, tiny_tokenizer

from psyche_core.errors import PsycheError
from psyche_data.cli import data
from psyche_data.local import LocalDataProvider
from psyche_data.tokenize import TokenizeRequest, read_document_starts, tokenize

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")


@pytest.fixture
def tok(tmp_path):
    return str(tiny_tokenizer(tmp_path / "tok" / "tokenizer.json"))


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text(CORPUS[0], encoding="utf-8")
    (folder / "b.jsonl").write_text(
        "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(CORPUS[1:])),
        encoding="utf-8",
    )
    return folder


def shard_documents(out, token_size=2):
    """Each document's tokens, read back through the .idx sidecars."""
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for shard in manifest["shards"]:
        tokens = np.fromfile(out / shard["file"], dtype="<u2" if token_size == 2 else "<u4")
        offsets = np.fromfile(out / (shard["file"] + ".idx"), dtype="<u8")
        assert offsets[-1] == len(tokens) == shard["tokens"]
        docs += [tokens[a:b].tolist() for a, b in itertools.pairwise(offsets)]
    return manifest, docs


def test_round_trip_text_and_jsonl(tmp_path, tok, corpus):
    out = tmp_path / "out"
    manifest = tokenize(TokenizeRequest([str(corpus)], str(out), tok)).manifest
    manifest, docs = shard_documents(out)
    assert manifest["documents"] == len(CORPUS) == len(docs)
    decoder = tokenizers.Tokenizer.from_file(tok)
    eos = decoder.token_to_id("</s>")
    assert manifest["eos_id"] == eos and manifest["bos_id"] is None  # as the post-processor
    for doc, text in zip(docs, CORPUS):
        assert doc[-1] == eos
        assert decoder.decode(doc[:-1]) == text  # exactly the input text
    assert manifest["token_size"] == 2 and manifest["tokens"] == sum(map(len, docs))
    assert len(manifest["source"]["files"]) == 2 and len(manifest["source"]["sha256"]) == 64


def test_bos_eos_flags_and_npy_format(tmp_path, tok, corpus):
    out = tmp_path / "out"
    tokenize(TokenizeRequest([str(corpus)], str(out), tok, extension=".npy", bos=True, eos=False))
    manifest, docs = shard_documents(out)
    assert manifest["shards"][0]["file"].endswith(".npy")
    bos = tokenizers.Tokenizer.from_file(tok).token_to_id("<s>")
    assert all(d[0] == bos and d[-1] != manifest["bos_id"] + 1 for d in docs)
    assert manifest["eos_id"] is None


def test_same_input_same_bytes_whatever_the_workers(tmp_path, tok, corpus):
    texts = [f"document {i}: " + CORPUS[i % 4] * (i % 7 + 1) for i in range(300)]
    (corpus / "many.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        request = TokenizeRequest(
            [str(corpus)], str(out), tok, workers=workers, batch_documents=16, shard_tokens=2000
        )
        tokenize(request)
        outputs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert len(outputs[0]) > 4  # several shards, each with its .idx, and the manifest
    assert outputs[0] == outputs[1]


def test_resume_after_an_interruption_gives_the_same_bytes(tmp_path, tok, corpus):
    texts = [f"line {i} " + CORPUS[i % 4] for i in range(200)]
    (corpus / "many.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    settings = dict(batch_documents=8, shard_tokens=500)
    whole = tmp_path / "whole"
    tokenize(TokenizeRequest([str(corpus)], str(whole), tok, **settings))

    class Interrupted(Exception):
        pass

    def stop_midway(documents, tokens, text_bytes):
        if documents > 100:
            raise Interrupted

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        tokenize(TokenizeRequest([str(corpus)], str(cut), tok, **settings), stop_midway)
    assert not (cut / "manifest.json").exists() and (cut / ".tokenize-progress.json").exists()
    with pytest.raises(PsycheError, match="not empty; pass --resume"):
        tokenize(TokenizeRequest([str(corpus)], str(cut), tok, **settings))
    tokenize(TokenizeRequest([str(corpus)], str(cut), tok, resume=True, **settings))
    assert {p.name: p.read_bytes() for p in cut.iterdir()} == {
        p.name: p.read_bytes() for p in whole.iterdir()
    }


def test_parquet_and_a_local_dataset(tmp_path, tok):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"body": CORPUS}), folder / "part.parquet")
    tokenize(TokenizeRequest([str(folder)], str(tmp_path / "a"), tok, text_field="body"))
    _, from_parquet = shard_documents(tmp_path / "a")
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    datasets.Dataset.from_dict({"body": CORPUS}).save_to_disk(str(tmp_path / "saved"))
    request = TokenizeRequest([], str(tmp_path / "b"), tok, dataset=str(tmp_path / "saved"))
    request.text_field = "body"
    manifest = tokenize(request).manifest
    _, from_dataset = shard_documents(tmp_path / "b")
    assert from_parquet == from_dataset and len(from_dataset) == len(CORPUS)
    assert manifest["source"]["rows"] == len(CORPUS)
    # a folder of data files through datasets.load_dataset
    request = TokenizeRequest([], str(tmp_path / "c"), tok, dataset=str(folder), text_field="body")
    tokenize(request)
    assert shard_documents(tmp_path / "c")[1] == from_parquet


def test_local_provider_marks_documents(tmp_path, tok, corpus):
    out = tmp_path / "out"
    tokenize(TokenizeRequest([str(corpus)], str(out), tok))
    starts = read_document_starts(out / "00000.ds")
    plain = LocalDataProvider(out, 16)
    marked = LocalDataProvider(out, 16, document_boundaries=True)
    assert plain.get_samples(range(2))[0].sequence_lengths is None  # off by default
    n = plain.num_sequences
    assert n >= 3
    for i, (a, b) in enumerate(zip(plain.get_samples(range(n)), marked.get_samples(range(n)))):
        assert np.array_equal(a.input_ids, b.input_ids)
        assert sum(b.sequence_lengths) == 16
        cuts = [s - 16 * i for s in starts.tolist() if 16 * i < s < 16 * (i + 1)]
        assert np.cumsum(b.sequence_lengths)[:-1].tolist() == cuts
        # positions restart with each piece (a sample's first piece has no earlier context)
        expected = np.concatenate([np.arange(n) for n in b.sequence_lengths])
        assert np.array_equal(b.position_ids, expected)
    with pytest.raises(PsycheError, match=r"no document index \(x\.ds\.idx\)"):
        np.zeros(64, "<u2").tofile(tmp_path / "x.ds")
        LocalDataProvider(tmp_path / "x.ds", 16, document_boundaries=True)


# -- bad input: one clear line each -------------------------------------------------------------


def run_cli(*args):
    result = CliRunner().invoke(data, list(args))
    assert result.exit_code != 0
    assert isinstance(result.exception, PsycheError), result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_missing_input(tmp_path, tok):
    message = run_cli("tokenize", str(tmp_path / "nope.txt"), "--tokenizer", tok, "--out", "o")
    assert "nope.txt" in message and "does not exist" in message


def test_jsonl_line_without_the_field_names_file_and_line(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\nnot json\n{"text": "also fine"}\n')
    out = tmp_path / "out"
    message = run_cli("tokenize", str(bad), "--tokenizer", tok, "--out", str(out))
    assert f"{bad} line 2" in message and "--skip-bad" in message
    result = CliRunner().invoke(
        data, ["tokenize", str(bad), "--tokenizer", tok, "--out", str(out), "--skip-bad"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["skipped_bad"] == 2
    assert manifest["skipped_examples"] == [f"{bad} line 2", f"{bad} line 3"]


def test_tokenizer_not_found_offline(tmp_path, corpus, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    message = run_cli("tokenize", str(corpus), "--tokenizer", "nobody/no-model", "--out", "o")
    assert "'nobody/no-model'" in message and "offline" in message
    message = run_cli("tokenize", str(corpus), "--tokenizer", "./missing.json", "--out", "o")
    assert "no such file" in message


def test_vocabulary_too_large_for_two_byte_tokens(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000}
    big = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "big.json"))
    args = ["tokenize", str(corpus), "--tokenizer", str(tmp_path / "big.json")]
    message = run_cli(*args, "--out", str(tmp_path / "o"), "--token-size", "2")
    assert "70,001 tokens" in message and "--token-size 4" in message
    result = CliRunner().invoke(data, [*args, "--out", str(tmp_path / "o4")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o4" / "manifest.json").read_text())["token_size"] == 4


def test_output_folder_not_empty(tmp_path, tok, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = run_cli("tokenize", str(corpus), "--tokenizer", tok, "--out", str(out))
    assert "not empty" in message and "--resume" in message and "--overwrite" in message
    result = CliRunner().invoke(
        data, ["tokenize", str(corpus), "--tokenizer", tok, "--out", str(out), "--overwrite"]
    )
    assert result.exit_code == 0 and not (out / "keep.txt").exists()
    assert "4 documents" in result.output


# -- the real fixtures ----------------------------------------------------------------------------


def test_fineweb_documents_tokenize_to_the_fixture_tokens(tmp_path, fixtures):
    """Psyche's fineweb .ds was written by datatrove with the Llama 2 tokenizer: no BOS, an EOS
    (id 2) after every document, documents back to back. Tokenizing the decoded documents with
    --no-bos --eos gives those exact tokens, and our .idx starts are datatrove's boundaries."""
    llama = fixtures / "llama2_tokenizer.json"
    tokens = np.fromfile(fixtures / "fineweb" / "data" / "00000_00000_shuffled.ds", "<u2")
    ends = np.flatnonzero(tokens == 2) + 1  # a complete document ends with EOS
    decoder = tokenizers.Tokenizer.from_file(str(llama))
    decoded = " ".join(
        " ".join((fixtures / "fineweb" / "decoded" / f"{i}.txt").read_text().split())
        for i in (0, 1)
    )
    starts = np.concatenate([[0], ends[:-1]])
    texts = [decoder.decode(tokens[a : b - 1].tolist()) for a, b in zip(starts, ends)]
    for text in texts:  # the documents are the fixture's decoded text
        assert " ".join(text.split()) in decoded
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "out"
    request = TokenizeRequest([str(tmp_path / "docs.jsonl")], str(out), str(llama))
    request.bos, request.eos = False, True
    tokenize(request)
    assert np.array_equal(np.fromfile(out / "00000.ds", "<u2"), tokens[: ends[-1]])
    assert read_document_starts(out / "00000.ds").tolist() == starts.tolist()
    # without flags the Llama 2 tokenizer's own post-processor applies: BOS, no EOS
    request = TokenizeRequest([str(tmp_path / "docs.jsonl")], str(tmp_path / "d"), str(llama))
    default = tokenize(request)
    assert default.manifest["bos_id"] == 1 and default.manifest["eos_id"] is None


def test_inspect_shows_the_manifest(tmp_path, tok, corpus):
    out = tmp_path / "out"
    tokenize(TokenizeRequest([str(corpus)], str(out), tok, token_size=4))
    result = CliRunner().invoke(data, ["inspect", str(out), "--sequence-length", "8"])
    assert result.exit_code == 0, result.output
    assert "token size: 4 bytes" in result.output  # from the manifest
    assert (
        f"tokenizer:  {tok}" in result.output and "documents:  4 (BOS None, EOS 2;" in result.output
    )
