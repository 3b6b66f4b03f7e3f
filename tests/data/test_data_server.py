"""`psyche data serve`: ranges, HEAD, keep-alive, the index, and staying inside its folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from data_helpers import write_tokens

from psyche_core.errors import PsycheError
from psyche_data.server import DataServer, parse_range, parse_ranges, start_server


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "served"
    write_tokens(folder / "a.ds", np.arange(50))  # 100 bytes: 0,0,1,0,2,0,...
    write_tokens(folder / "sub" / "b.bin", np.arange(10))
    (folder / "notes.txt").write_text("hello")
    (folder / ".secret.ds").write_bytes(b"xx")
    (tmp_path / "outside.ds").write_bytes(b"secret!!")
    os.symlink(tmp_path / "outside.ds", folder / "escape.ds")
    os.symlink(folder / "a.ds", folder / "inside.ds")
    server, port = start_server(folder)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        yield folder, client
    server.close()


def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-200", 100) == (90, 99)
    assert parse_range("bytes=95-", 100) == (95, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=0-0", 0) == "unsatisfiable"
    assert parse_range("bytes=5-2", 100) is None  # invalid: ignored, whole file
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: whole file
    assert parse_range("items=0-1", 100) is None


def test_explicit_range_lists_parse_as_each_range_does():
    """The one-split path for ``a-b,c-d,...`` agrees with the per-range path on every outcome:
    ranges clipped to the file, ranges past its end left out, all of them past it (416), and
    a reversed range (malformed: the whole file)."""
    import random

    from psyche_data.server import _each_range, _explicit_ranges

    rng = random.Random(0)
    for _ in range(500):
        size = rng.choice([0, 1, 100, 5000])
        pairs = []
        for _ in range(rng.randint(1, 6)):
            first = rng.randint(0, 6000)
            pairs.append((first, first + rng.randint(-3, 2000)))
        spec = ",".join(f"{a}-{b}" for a, b in pairs)
        assert _explicit_ranges(spec, size) == _each_range(spec.split(","), size), (spec, size)
    assert parse_ranges("bytes=0-9,90-200,300-400", 100) == [(0, 9), (90, 99)]
    assert parse_ranges("bytes=200-300,100-150", 100) == "unsatisfiable"
    assert parse_ranges("bytes=0-9,9-5", 100) is None
    assert parse_ranges("bytes=0-9, 20-29", 100) == [(0, 9), (20, 29)]  # spaces: per range


def test_ranges(served):
    folder, client = served
    data = (folder / "a.ds").read_bytes()
    r = client.get("/a.ds", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.headers["content-range"] == "bytes 10-19/100"
    assert r.content == data[10:20]
    r = client.get("/a.ds", headers={"Range": "bytes=90-"})
    assert (r.status_code, r.content) == (206, data[90:])
    r = client.get("/a.ds", headers={"Range": "bytes=-4"})
    assert (r.status_code, r.content) == (206, data[96:])
    r = client.get("/a.ds", headers={"Range": "bytes=100-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */100"
    r = client.get("/a.ds")
    assert (r.status_code, r.content) == (200, data)
    assert r.headers["accept-ranges"] == "bytes"


def test_head_and_keep_alive(served):
    _, client = served
    r = client.head("/a.ds")
    assert r.status_code == 200
    assert r.headers["content-length"] == "100"
    assert r.content == b""
    # several requests over one kept-alive connection
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        request = b"GET /a.ds HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n"
        for _ in range(3):
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n\r\n\x00\x00"):
                chunk = sock.recv(4096)
                assert chunk, "server closed a keep-alive connection"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 206")


def test_index_lists_data_files_in_local_order(served):
    _, client = served
    files = client.get("/").json()["files"]
    assert [f["path"] for f in files] == ["a.ds", "inside.ds", "sub/b.bin"]
    assert [f["size"] for f in files] == [100, 100, 20]


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.ds",
        "/%2e%2e/outside.ds",
        "/sub/../../outside.ds",
        "//etc/passwd",
        "/escape.ds",
        "/.secret.ds",
        "/sub",
        "/missing.ds",
        "/a.ds%00",
    ],
)
def test_never_serves_outside_its_folder(served, path):
    _, client = served
    r = client.get(path)
    assert r.status_code == 404
    assert b"secret" not in r.content


def test_raw_dot_dot_request_is_refused(served):
    _, client = served
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /../outside.ds HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404")
    assert b"secret" not in reply


def test_serves_other_files_inside(served):
    folder, client = served
    assert client.get("/notes.txt").text == "hello"
    assert client.get("/sub/b.bin").content == (folder / "sub" / "b.bin").read_bytes()


def test_bad_folder_and_busy_port(tmp_path):
    with pytest.raises(PsycheError, match="not a folder"):
        DataServer(tmp_path / "nope")
    with DataServer(tmp_path) as first, pytest.raises(PsycheError, match="cannot listen"):
        DataServer(tmp_path, port=first.port)


def test_serve_command_prints_the_url(tmp_path, token_folder):
    code = "import sys; from psyche_data.cli import data; data(sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(token_folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("use: --data-url http://127.0.0.1:")
        url = line.split()[-1]
        files = httpx.get(url, timeout=5).json()["files"]
        assert [f["path"] for f in files] == ["a.ds", "b.ds", "c.bin", "d.npy"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_serve_command_errors(tmp_path):
    from click.testing import CliRunner

    from psyche_data.cli import data

    result = CliRunner().invoke(data, ["serve", str(tmp_path / "missing")])
    assert isinstance(result.exception, PsycheError)
    assert "no such folder" in str(result.exception)
    result = CliRunner().invoke(data, ["serve", str(tmp_path)])
    assert "no .ds, .bin or .npy files" in str(result.exception)


def test_several_ranges_come_back_as_multipart_byteranges(tmp_path):
    import httpx

    from psyche_data.fetch import _boundary, _multipart_parts

    data = bytes(range(256)) * 8
    (tmp_path / "a.ds").write_bytes(data)
    for multi_range in (True, False):
        server, port = start_server(tmp_path, multi_range=multi_range)
        try:
            url = f"http://127.0.0.1:{port}/a.ds"
            answer = httpx.get(url, headers={"Range": "bytes=10-19,-5,100-101,9999-10005"})
            if not multi_range:  # a plain server: the whole file
                assert answer.status_code == 200 and answer.content == data
                continue
            assert answer.status_code == 206
            assert answer.headers["content-length"] == str(len(answer.content))
            parts = _multipart_parts(
                bytearray(answer.content), _boundary(answer.headers["content-type"])
            )
            # in the order asked; the unsatisfiable range is left out
            assert [(first, bytes(body)) for first, body in parts] == [
                (10, data[10:20]), (2043, data[-5:]), (100, data[100:102]),
            ]  # fmt: skip
            one = httpx.get(url, headers={"Range": "bytes=5-6,9999-"})  # one left: no multipart
            assert one.status_code == 206 and one.content == data[5:7]
            none = httpx.get(url, headers={"Range": "bytes=9000-9001,9999-"})
            assert none.status_code == 416
        finally:
            server.close()


def test_psyche_clients_get_whole_ranges_back_to_back(tmp_path):
    """Asked with ``Accept: <CONCATENATED>``, several whole ranges come back as their bytes
    in the order asked, no part headers; anything the client could not cut up by the lengths
    it asked for (a range cut at the end of the file, left out, or not ``first-last``) comes
    back as multipart, and ``concatenated=False`` (``--multipart-only``) always answers so."""
    from psyche_data.fetch import CONCATENATED, _boundary, _multipart_parts

    data = bytes(range(256)) * 8
    (tmp_path / "a.ds").write_bytes(data)
    accept = {"Accept": f"{CONCATENATED}, multipart/byteranges"}
    server, port = start_server(tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/a.ds"
        asked = [(700, 703), (10, 19), (2040, 2047), (10, 10)]  # any order, repeats, to the end
        spec = "bytes=" + ",".join(f"{a}-{b}" for a, b in asked)
        answer = httpx.get(url, headers={"Range": spec, **accept})
        assert answer.status_code == 206
        assert answer.headers["content-type"] == CONCATENATED
        assert answer.headers["vary"] == "Accept"
        assert answer.content == b"".join(data[a : b + 1] for a, b in asked)
        assert answer.headers["content-length"] == str(len(answer.content))
        head = httpx.head(url, headers={"Range": spec, **accept})
        assert head.headers["content-length"] == str(len(answer.content)) and not head.content
        for cut in ("bytes=10-19,2040-2050", "bytes=10-19,-4"):
            other = httpx.get(url, headers={"Range": cut, **accept})
            assert other.headers["content-type"].startswith("multipart/byteranges"), cut
            parts = _multipart_parts(
                bytearray(other.content), _boundary(other.headers["content-type"])
            )
            assert [first for first, _ in parts] == [10, 2040 if "2040" in cut else 2044]
        left_out = httpx.get(url, headers={"Range": "bytes=10-19,5000-5001", **accept})
        assert left_out.headers["content-range"] == "bytes 10-19/2048"  # the one range left
        assert left_out.content == data[10:20]
        plain = httpx.get(url, headers={"Range": spec})  # not asked for: multipart
        assert plain.headers["content-type"].startswith("multipart/byteranges")
    finally:
        server.close()
    server, port = start_server(tmp_path, concatenated=False)
    try:
        url = f"http://127.0.0.1:{port}/a.ds"
        answer = httpx.get(url, headers={"Range": "bytes=0-1,4-5", **accept})
        assert answer.headers["content-type"].startswith("multipart/byteranges")
    finally:
        server.close()


def test_a_large_answer_to_psyche_clients_is_multipart(tmp_path, monkeypatch):
    """Back-to-back answers are built in memory; past that size the multipart answer, which
    sends large parts from the file, is used."""
    import psyche_data.server
    from psyche_data.fetch import CONCATENATED

    data = bytes(range(256)) * 8
    (tmp_path / "a.ds").write_bytes(data)
    monkeypatch.setattr(psyche_data.server, "_GATHER_BYTES", 100)
    server, port = start_server(tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/a.ds"
        headers = {"Accept": CONCATENATED}
        small = httpx.get(url, headers={"Range": "bytes=0-49,100-149", **headers})
        assert small.headers["content-type"] == CONCATENATED
        large = httpx.get(url, headers={"Range": "bytes=0-49,100-150", **headers})
        assert large.headers["content-type"].startswith("multipart/byteranges")
    finally:
        server.close()
