"""`psyche data prepare-chat`: chat template, assistant-only labels, packing, parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import tiny_tokenizer

from psyche_core.errors import PsycheError
from psyche_data.cli import data
from psyche_data.packing import build_rows, pack, write_parquet
from psyche_data.prepare_chat import ChatRequest, prepare_chat

pytest.importorskip("tokenizers", reason="tokenizers is not installed")
pytest.importorskip("pyarrow", reason="pyarrow is not installed")
pytest.importorskip("jinja2", reason="jinja2 is not installed")

# a ChatML-like template: the header of a turn is prompt, the words and <|end|> are the reply
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
REPLIES = ["Hello! How can I help?", "One, two, three.", "4", "Sure."]


def conversations(n: int = 12):
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"question {i} " + "more words " * (i % 5)}]
        messages.append({"role": "assistant", "content": REPLIES[i % 4]})
        if i % 3 == 0:
            messages = [{"role": "system", "content": "Be brief."}, *messages]
            messages += [
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "ok"},
            ]
        if i % 2:  # ShareGPT shape for odd rows
            names = {"user": "human", "assistant": "gpt", "system": "system"}
            rows.append(
                {
                    "conversations": [
                        {"from": names[m["role"]], "value": m["content"]} for m in messages
                    ]
                }
            )
        else:
            rows.append({"messages": messages})
    return rows


@pytest.fixture
def setup(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok.json", eos=False)
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_file(str(tok))  # the template's markers as special tokens
    tokenizer.add_special_tokens(
        [AddedToken(f"<|{r}|>", special=True) for r in ("system", "user", "assistant", "end")]
    )
    tokenizer.save(str(tok))
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in conversations()))
    template = tmp_path / "template.jinja"
    template.write_text(TEMPLATE)
    return tokenizer, tok, source, template


def read_rows(out):
    import pyarrow.parquet as pq

    return pq.read_table(out / "train-00000-of-00001.parquet").to_pylist()


@pytest.mark.parametrize("method", ["ffd", "greedy", "random"])
def test_rows_labels_and_lengths(tmp_path, setup, method):
    tokenizer, tok, source, template = setup
    out = tmp_path / "out"
    request = ChatRequest([str(source)], str(out), str(tok), 96, chat_template=str(template))
    request.packing = method
    manifest = prepare_chat(request)
    rows = read_rows(out)
    assert manifest["rows"] == len(rows) and manifest["documents"] == 12
    end = tokenizer.token_to_id("<|end|>")
    replies = []
    for row in rows:
        assert len(row["inputs"]) == len(row["labels"]) == len(row["position_ids"]) == 96
        assert sum(row["sequence_lengths"]) == 96
        at = 0
        for n in row["sequence_lengths"]:
            assert row["position_ids"][at : at + n] == list(range(n))
            at += n
        labels = np.array(row["labels"])
        inputs = np.array(row["inputs"])
        learned = labels != -100
        assert np.array_equal(labels[learned], inputs[learned])  # unshifted, as Psyche's
        # the learned spans are exactly the replies, each with the template's end of turn
        # (<|end|> and the newline after it), and nothing of the prompt
        where = np.flatnonzero(learned)
        for span in np.split(where, np.flatnonzero(np.diff(where) > 1) + 1):
            if span.size:
                tokens = inputs[span].tolist()
                assert tokens.index(end) == len(tokens) - 2
                assert tokenizer.decode(tokens[-1:]) == "\n"
                replies.append(tokenizer.decode(tokens[:-2]))
    assert sorted(replies) == sorted([REPLIES[i % 4] for i in range(12)] + ["ok"] * 4)
    tokens = sum(n for r in rows for n in r["sequence_lengths"]) - sum(
        r["sequence_lengths"][-1] for r in rows if r["inputs"][-1] == manifest["pad_id"]
    )
    assert manifest["fill_ratio"] == pytest.approx(tokens / (96 * len(rows)), abs=1e-6)


def test_ffd_uses_fewest_rows_and_greedy_keeps_order():
    lengths = [60, 50, 40, 30, 20, 10, 45, 35]
    rows = pack(lengths, 100, "ffd")
    # longest first, each into the first row with room: 60+40 | 50+45 | 35+30+20+10
    assert rows == [[0, 2], [1, 6], [7, 3, 4, 5]]
    assert pack(lengths, 100, "greedy") == [[0], [1, 2], [3, 4, 5], [6, 7]]
    shuffled = pack(lengths, 100, "random", seed=3)
    assert sorted(d for row in shuffled for d in row) == list(range(8))
    assert shuffled == pack(lengths, 100, "random", seed=3)  # seeded


def test_attention_stays_inside_each_document(tmp_path, setup):
    """Each conversation's logits in a packed row equal its logits alone."""
    torch = pytest.importorskip("torch")
    from psyche_llama.model import LlamaForCausalLM

    tokenizer, tok, source, template = setup
    out = tmp_path / "out"
    prepare_chat(ChatRequest([str(source)], str(out), str(tok), 96, chat_template=str(template)))
    config = {
        "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    }  # fmt: skip
    model = LlamaForCausalLM.from_config(config, seed=0).eval()
    row = max(read_rows(out), key=lambda r: len(r["sequence_lengths"]))
    assert len(row["sequence_lengths"]) >= 2
    ids = torch.tensor([row["inputs"]])
    with torch.no_grad():
        packed, _ = model(
            ids,
            position_ids=torch.tensor([row["position_ids"]]),
            sequence_lengths=[row["sequence_lengths"]],
        )
        at = 0
        for n in row["sequence_lengths"]:
            alone, _ = model(ids[:, at : at + n])
            torch.testing.assert_close(packed[:, at : at + n], alone, atol=1e-5, rtol=1e-4)
            at += n
        crossing, _ = model(ids)  # without the lengths the later documents see the earlier
        first = row["sequence_lengths"][0]
        assert not torch.allclose(crossing[:, first:], packed[:, first:], atol=1e-4)


def test_too_long_truncate_or_drop_is_counted(tmp_path, setup):
    _, tok, source, template = setup
    manifests = {}
    for mode in ("truncate", "drop"):
        out = tmp_path / mode
        request = ChatRequest([str(source)], str(out), str(tok), 24, chat_template=str(template))
        request.too_long = mode
        manifests[mode] = prepare_chat(request)
        assert all(sum(r["sequence_lengths"]) == 24 for r in read_rows(out))
    assert manifests["truncate"]["truncated"] == manifests["drop"]["dropped"] > 0
    assert manifests["drop"]["documents"] == 12 - manifests["drop"]["dropped"]


def test_unknown_role_is_one_line(tmp_path, setup):
    _, tok, _, template = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
        + json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}) + "\n"
    )  # fmt: skip
    args = ["prepare-chat", str(bad), "--tokenizer", str(tok), "--chat-template", str(template)]
    result = CliRunner().invoke(
        data, [*args, "--out", str(tmp_path / "o"), "--sequence-length", "32"]
    )
    assert isinstance(result.exception, PsycheError)
    message = str(result.exception)
    assert f"{bad} line 2" in message and "'wizard'" in message and "\n" not in message
    result = CliRunner().invoke(
        data, [*args, "--out", str(tmp_path / "o"), "--sequence-length", "32", "--skip-bad"]
    )
    assert result.exit_code == 0, result.output
    assert "bad 1" in result.output


def test_no_chat_template(tmp_path, setup):
    _, tok, source, _ = setup
    with pytest.raises(PsycheError, match="has no chat template.*--chat-template"):
        prepare_chat(ChatRequest([str(source)], str(tmp_path / "o"), str(tok), 32))


def test_reads_back_with_the_preprocessed_provider(tmp_path, setup):
    from psyche_data.preprocessed import PreprocessedDataProvider

    _, tok, source, template = setup
    out = tmp_path / "out"
    prepare_chat(ChatRequest([str(source)], str(out), str(tok), 96, chat_template=str(template)))
    rows = read_rows(out)
    provider = PreprocessedDataProvider(out, 96)
    for row, sample in zip(rows, provider.get_samples(range(provider.num_sequences))):
        assert sample.labels.tolist() == row["labels"]
        assert list(sample.sequence_lengths) == row["sequence_lengths"]


def test_hermes3_fixture_round_trips_and_repacks(tmp_path, fixtures):
    """Psyche's hermes3 parquet written again by our writer reads back identically, with the
    same schema; re-packing its 18 conversations with ffd gives the same 2 full rows."""
    import pyarrow.parquet as pq

    from psyche_data.preprocessed import PreprocessedDataProvider

    source = fixtures / "hermes3" / "data" / "train-00000-of-00001.parquet"
    original = pq.read_table(source)
    columns = {
        name: [np.asarray(v) for v in original[name].to_pylist()] for name in original.column_names
    }
    write_parquet(columns, tmp_path / "copy.parquet")
    copy = pq.read_table(tmp_path / "copy.parquet")
    assert copy.schema.remove_metadata() == original.schema.remove_metadata()
    assert copy.to_pylist() == original.to_pylist()
    ours = PreprocessedDataProvider(tmp_path / "copy.parquet", 4096).get_samples(range(2))
    theirs = PreprocessedDataProvider(source, 4096).get_samples(range(2))
    for a, b in zip(ours, theirs):
        assert (
            a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
        )
    documents = []
    for row in original.to_pylist():
        at = 0
        for n in row["sequence_lengths"]:
            documents.append(
                (np.array(row["inputs"][at : at + n]), np.array(row["labels"][at : at + n]))
            )
            at += n
    rows = pack([len(d[0]) for d in documents], 4096, "ffd")
    packed = build_rows(documents, rows, 4096, pad_id=128004)
    assert len(documents) == 18 and len(rows) == 2  # the fixture: 2 rows, fill ratio 1.0
    assert all(sum(lengths) == 4096 and len(lengths) == 9 for lengths in packed["sequence_lengths"])


def test_a_local_dataset_gives_the_same_rows(tmp_path, setup):
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    _, tok, source, template = setup
    records = [json.loads(line) for line in source.read_text().splitlines()]
    openai = [r for r in records if "messages" in r]  # one shape per column
    (tmp_path / "openai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in openai))
    datasets.Dataset.from_list(openai).save_to_disk(str(tmp_path / "saved"))
    kwargs = dict(chat_template=str(template))
    prepare_chat(
        ChatRequest([str(tmp_path / "openai.jsonl")], str(tmp_path / "a"), str(tok), 96, **kwargs)
    )
    request = ChatRequest(
        [], str(tmp_path / "b"), str(tok), 96, dataset=str(tmp_path / "saved"), **kwargs
    )
    assert prepare_chat(request)["documents"] == len(openai)
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
