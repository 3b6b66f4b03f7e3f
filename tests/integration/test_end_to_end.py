"""Whole workflows through the real `psyche` entry point with the first-party plugins."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from psyche_core.cli import main
from psyche_core.plugins import LOAD_PLUGINS_ENV, Plugins
from tests.data.data_servers import FakeHub

FIRST_PARTY = "psyche_llama,psyche_data,psyche_distro,psyche_deepseek,psyche_hf"
FIXTURES = Path(
    os.environ.get("PSYCHE_FIXTURES", Path(__file__).parents[3] / "shared/fixtures/psyche")
)


@pytest.fixture
def psyche(monkeypatch, capsys):
    """Run `psyche ...` in-process with only the first-party plugins; returns (code, stderr)."""
    monkeypatch.setenv(LOAD_PLUGINS_ENV, FIRST_PARTY)

    def call(*args):
        with pytest.raises(SystemExit) as excinfo:
            main([str(a) for a in args], plugins=Plugins.load())
            raise SystemExit(0)
        return excinfo.value.code, capsys.readouterr().err

    return call


def losses(path):
    return [json.loads(line)["loss"] for line in Path(path).read_text().splitlines()]


def write_tokens(folder: Path, sizes, seed=0, vocab=512):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, n in enumerate(sizes):
        rng.integers(3, vocab, n, dtype=np.uint16).tofile(folder / f"{i:05d}.ds")
    return folder


def test_local_folder_and_hf_dataset_repo_train_on_the_same_samples(tmp_path, psyche, monkeypatch):
    data = write_tokens(tmp_path / "fineweb-10bt", [640, 1280, 384])
    common = [
        "--model",
        "llama:tiny",
        "--total-batch",
        2,
        "--micro-batch",
        1,
        "--sequence-length",
        64,
        "--total-steps",
        4,
        "--warmup-steps",
        1,
        "--seed",
        9,
    ]
    code, err = psyche("train", *common, "--data-path", data, "--metrics", tmp_path / "local.jsonl")
    assert code == 0, err
    repo = {f"data/{p.name}": p.read_bytes() for p in data.iterdir()}
    with FakeHub({"someone/fineweb-10bt": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, err = psyche(
            "train",
            *common,
            "--data-provider",
            "http",
            "--data-url",
            "someone/fineweb-10bt",
            "--metrics",
            tmp_path / "http.jsonl",
        )
    assert code == 0, err
    assert losses(tmp_path / "local.jsonl") == losses(tmp_path / "http.jsonl")


def test_transformers_loads_a_training_checkpoint(tmp_path, psyche):
    transformers = pytest.importorskip("transformers")
    code, err = psyche(
        "train",
        "--total-steps",
        3,
        "--warmup-steps",
        1,
        "--total-batch",
        2,
        "--sequence-length",
        32,
        "--save-path",
        tmp_path / "run",
        "--checkpoint-every",
        2,
    )
    assert code == 0, err
    from psyche_llama.model import LlamaForCausalLM

    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    for directory in (tmp_path / "run" / "step-000002", tmp_path / "run"):
        ours = LlamaForCausalLM.from_pretrained(directory).eval()
        theirs = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-5)


def test_generation_reproduces_a_memorised_sequence(tmp_path, psyche):
    rng = np.random.default_rng(7)
    sequence = rng.integers(3, 512, 64, dtype=np.uint16)
    data = tmp_path / "data"
    data.mkdir()
    np.tile(sequence, 64).tofile(data / "one.bin")
    code, err = psyche(
        "train",
        "--data-path",
        data,
        "--sequence-length",
        64,
        "--total-batch",
        4,
        "--total-steps",
        80,
        "--warmup-steps",
        5,
        "--learning-rate",
        3e-3,
        "--save-path",
        tmp_path / "model",
    )
    assert code == 0, err
    from psyche_core.generation import generate
    from psyche_llama.model import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tmp_path / "model")
    prompt = sequence[:8].tolist()
    assert generate(model, prompt, max_new_tokens=24) == sequence[8:32].tolist()


@pytest.mark.parametrize("optimizer", [[], ["--distro"], ["--distro", "--distro-mode", "sync"]])
def test_deepseek_v3_trains_with_adamw_and_distro(tmp_path, psyche, optimizer):
    pytest.importorskip("psyche_deepseek")
    code, err = psyche(
        "train",
        "--model",
        "deepseek_v3",
        "--total-steps",
        8,
        "--warmup-steps",
        1,
        "--total-batch",
        4,
        "--sequence-length",
        64,
        "--learning-rate",
        3e-3,
        "--metrics",
        tmp_path / "m.jsonl",
        *optimizer,
    )
    assert code == 0, err
    curve = losses(tmp_path / "m.jsonl")
    assert curve[-1] < curve[0] - 0.3


def test_real_fineweb_tokens_train_the_20m_llama(tmp_path, psyche):
    data = FIXTURES / "fineweb" / "data"
    if not data.is_dir():
        pytest.skip(f"real-data fixtures not found at {FIXTURES} (set PSYCHE_FIXTURES)")
    code, err = psyche(
        "train",
        "--model",
        "llama:20m",
        "--data-path",
        data,
        "--sequence-length",
        2048,
        "--total-batch",
        2,
        "--micro-batch",
        1,
        "--total-steps",
        2,
        "--warmup-steps",
        1,
        "--metrics",
        tmp_path / "m.jsonl",
    )
    assert code == 0, err
    first = losses(tmp_path / "m.jsonl")[0]
    assert abs(first - np.log(32000)) < 0.5  # a random-init 32k-vocab model on real text
