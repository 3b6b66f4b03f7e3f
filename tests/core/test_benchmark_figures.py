"""Every measured figure the docs quote comes from a file in benchmarks/results/ and agrees with it.

The convention (benchmarks/README.md, "Quoting a figure"): the block (paragraph, table, list or
code block) that quotes figures is followed directly, with no blank line, by a comment naming
where each one comes from:

    | psyche | 2,553 tokens/s | 1.34x |
    <!-- figures
    llama_train_step.json: psyche.tokens_per_s = 2,553 tokens/s; speedup = 1.34x
    constant: 16 x 256
    -->

`EXPR = TEXT`: TEXT appears verbatim in the block, and its first number equals EXPR rounded to
the decimals TEXT shows. EXPR is a dotted key path into the JSON file (list indices as numbers),
or arithmetic on paths and numbers with spaces around each operator (`a.b / c.d`).
`constant: TEXT` marks a figure that is a setting or a definition, not a measurement.
Any measured-looking figure (a ratio like 1.3x, tokens/s, MB/s, MiB, ms, %, 12.5s) that no
comment covers fails the test, so a new figure cannot be quoted without its source.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = sorted(
    [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")]
)
GENERATED = {ROOT / "docs" / "cli.md"}  # --help text, checked by test_cli_reference_is_current

UNITS = r"tokens/s|samples/s|[KMGT]?B/s|[KMGT]iB|ms\b|%"
MEASURED = re.compile(
    rf"(?<![\w.,])(?:\d[\d,]*(?:\.\d+)?(?:\s?(?:{UNITS})|x\b(?!\s*\d))|\d+\.\d+s\b)"
)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
COMMENT = re.compile(r"<!--\s*figures\b(.*?)-->", re.S)

# Figures quoted in sections other work in progress is rewriting right now, left to it: each
# entry is (doc, exact text). Annotate them (`constant:` for a setting) and delete the entry; a
# listed text that no longer appears fails too, so the list only shrinks.
PENDING: set[tuple[str, str]] = set()


@dataclass
class Block:
    doc: str
    line: int  # 1-based first line
    text: str  # without its figures comments
    comments: list[str]


def blocks(path: Path) -> list[Block]:
    """Runs of non-blank lines; a fenced code block (blank lines and all) counts as one.

    A figures comment counts only outside code fences (inside one it is an example)."""
    found: list[Block] = []
    text: list[str] = []
    comments: list[str] = []
    comment: list[str] | None = None
    start, fenced = 0, False
    for number, line in enumerate([*path.read_text().splitlines(), ""], 1):
        if comment is not None:  # inside a figures comment
            comment.append(line)
            if "-->" in line:
                comments.append(COMMENT.search("\n".join(comment)).group(1))
                comment = None
            continue
        if not fenced and line.lstrip().startswith("<!-- figures"):
            comment = [line]
            if "-->" in line:
                comments.append(COMMENT.search(line).group(1))
                comment = None
            continue
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if line.strip() or fenced:
            if not text and not comments:
                start = number
            text.append(line)
            continue
        if text or comments:
            doc = path.relative_to(ROOT).as_posix()
            found.append(Block(doc, start, "\n".join(text), comments))
            text, comments = [], []
    return found


def lookup(data: Any, path: str, source: str) -> float:
    for key in path.split("."):
        try:
            data = data[int(key)] if isinstance(data, list) else data[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise AssertionError(f"{source} has no {path!r} (stopped at {key!r})") from None
    return float(data)


def evaluate(expr: str, data: Any, source: str) -> float:
    """Paths replaced by their values, then plain arithmetic (nothing else is allowed)."""
    tokens = []
    for token in expr.split():
        if token in "+-*/()" or NUMBER.fullmatch(token) or re.fullmatch(r"[\d.]+e-?\d+", token):
            tokens.append(token)
        else:
            tokens.append(repr(lookup(data, token, source)))
    tree = ast.parse(" ".join(tokens), mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)
    assert all(isinstance(node, allowed) for node in ast.walk(tree)), f"bad expression {expr!r}"
    return float(eval(compile(tree, source, "eval")))


def agrees(text: str, value: float) -> bool:
    shown = NUMBER.search(text).group(0).replace(",", "")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(value - float(shown)) <= 0.5 * 10**-decimals + 1e-9 * abs(value)


def check_block(block: Block, results: Path = RESULTS) -> list[str]:
    where = f"{block.doc}:{block.line}"
    problems, covered = [], []
    for comment in block.comments:
        for line in comment.strip().splitlines():
            if not line.strip():
                continue
            source, _, items = line.partition(":")
            source = source.strip()
            data = None
            if source != "constant":
                file = results / source
                if not file.is_file():
                    problems.append(f"{where}: no results file benchmarks/results/{source}")
                    continue
                data = json.loads(file.read_text())
            for item in filter(None, (i.strip() for i in items.split(";"))):
                expr, _, text = item.rpartition(" = ") if data is not None else ("", "", item)
                if text not in block.text:
                    problems.append(f"{where}: {text!r} is annotated but not in the text")
                    continue
                covered += [m.span() for m in re.finditer(re.escape(text), block.text)]
                if data is None:
                    continue
                try:
                    value = evaluate(expr, data, source)
                except AssertionError as error:
                    problems.append(f"{where}: {error}")
                    continue
                if not agrees(text, value):
                    problems.append(f"{where}: quotes {text!r} but {source} {expr} = {value:g}")
    pending = {text for doc, text in PENDING if doc == block.doc}
    for match in MEASURED.finditer(re.sub(r"`[^`\n]*`", lambda m: " " * len(m[0]), block.text)):
        inside = any(a <= match.start() and match.end() <= b for a, b in covered)
        if not inside and match.group(0) not in pending:
            line = block.line + block.text[: match.start()].count("\n")
            problems.append(
                f"{block.doc}:{line}: {match.group(0)!r} has no results file "
                "(add a figures comment: benchmarks/README.md)"
            )
    return problems


def all_blocks() -> list[Block]:
    return [b for path in DOCS if path not in GENERATED for b in blocks(path)]


@pytest.mark.parametrize(
    "path", [p for p in DOCS if p not in GENERATED], ids=lambda p: str(p.relative_to(ROOT))
)
def test_quoted_figures_agree_with_their_results_files(path):
    problems = [p for block in blocks(path) for p in check_block(block)]
    assert not problems, "\n".join(problems)


def test_pending_figures_are_still_quoted():
    texts = {(b.doc, b.text) for b in all_blocks()}
    stale = [p for p in PENDING if not any(d == p[0] and p[1] in t for d, t in texts)]
    assert not stale, f"no longer quoted; remove from PENDING: {stale}"


@pytest.mark.parametrize("file", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_results_file_says_how_where_and_when_it_was_measured(file):
    recorded = json.loads(file.read_text()).get("recorded", {})
    for field in ("command", "date", "machine"):
        assert recorded.get(field), f"{file.name}: 'recorded.{field}' is missing"


def test_the_checker_catches_a_wrong_or_unsourced_figure(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"runs": [{"speedup": 1.344}]}))
    text = "| psyche | 1.35x | 2,449 tokens/s | 16 x 256 |"
    wrong = Block("x.md", 1, text, ["\nbench.json: runs.0.speedup = 1.35x\n"])
    problems = check_block(wrong, tmp_path)
    assert any("quotes '1.35x' but bench.json runs.0.speedup = 1.344" in p for p in problems)
    assert any("'2,449 tokens/s' has no results file" in p for p in problems)
    assert len(problems) == 2  # "16 x 256" is not a ratio
    fixed = Block(
        "x.md",
        1,
        text.replace("1.35x", "1.34x"),
        ["\nbench.json: runs.0.speedup = 1.34x\nconstant: 2,449 tokens/s\n"],
    )
    assert check_block(fixed, tmp_path) == []
