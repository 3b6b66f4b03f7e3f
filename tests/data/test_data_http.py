"""The http provider: same samples as local, every source form, and every way a server fails."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from data_helpers import make_options, write_tokens
from data_servers import FakeHub, FaultyServer, RedirectServer

from psyche_core.errors import PsycheError
from psyche_data.http import HttpDataProvider, build_http
from psyche_data.local import LocalDataProvider
from psyche_data.server import start_server
from psyche_data.sources import RemoteFile, resolve_sources, template_urls

FAST = {"timeout": 0.3, "retries": 2, "backoff": 0.01}


@pytest.fixture(params=[True, False], ids=["back-to-back", "multipart"])
def server(token_folder, request):
    """``psyche data serve``, answering several ranges back to back (to psyche's client, which
    asks for that) or as multipart, as other servers do."""
    server, port = start_server(token_folder, concatenated=request.param)
    yield f"http://127.0.0.1:{port}/"
    server.close()


@pytest.mark.parametrize("seed", [None, 0, 17])
def test_same_samples_as_local(token_folder, server, seed):
    options = make_options(data_url=server, sequence_length=100, seed=seed)
    local = LocalDataProvider(token_folder, 100, seed=seed)
    with build_http(options) as http:
        assert http.num_sequences == local.num_sequences == 65
        for ids in (range(0, 16), range(16, 65), [64, 3, 3, 40]):
            assert np.array_equal(http.read(ids), local.read(ids))
        samples = http.get_samples(range(2))
        assert samples[0].input_ids.dtype == np.int32


def test_same_samples_as_local_with_token_size_4(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("x.ds", 333), ("y.ds", 1000)]:
        write_tokens(tmp_path / name, rng.integers(0, 2**32, n, dtype=np.uint32), token_size=4)
    server, port = start_server(tmp_path)
    try:
        local = LocalDataProvider(tmp_path, 32, token_size=4, seed=9)
        files = resolve_sources(f"http://127.0.0.1:{port}/").files
        with HttpDataProvider(files, 32, token_size=4, seed=9) as http:
            assert np.array_equal(http.read(range(local.num_sequences)), local.read(range(41)))
    finally:
        server.close()


def test_adjacent_samples_are_one_request(token_folder):
    files = {n: (token_folder / n).read_bytes() for n in ("a.ds", "b.ds")}
    with FaultyServer(files) as fake:
        urls = [RemoteFile(f"{fake.url}/a.ds"), RemoteFile(f"{fake.url}/b.ds")]
        with HttpDataProvider(urls, 100, **FAST) as http:
            before = len(fake.requests)
            http.read(range(0, 20))  # 10 from a.ds, 10 from b.ds
            ranges = sorted(h["range"] for _, _, h in fake.requests[before:])
    assert ranges == ["bytes=0-1999", "bytes=0-1999"]


def test_url_list_and_template(token_folder, server):
    local = LocalDataProvider(token_folder, 100)
    listed = ",".join(f"{server}{n}" for n in ["a.ds", "b.ds", "c.bin", "d.npy"])
    with build_http(make_options(data_url=listed, sequence_length=100)) as http:
        assert np.array_equal(http.read(range(65)), local.read(range(65)))
    for i, name in enumerate(["a.ds", "b.ds"]):
        (token_folder / f"part-{i + 7:03}.bin").write_bytes((token_folder / name).read_bytes())
    options = make_options(
        data_url=server + "part-{:03}.bin", data_url_start=7, data_url_count=2, sequence_length=100
    )
    with build_http(options) as http:
        assert http.num_sequences == 35
        assert np.array_equal(http.read(range(35)), local.read(range(35)))


def test_template_syntax():
    assert template_urls("http://h/{}.ds", 9, 2) == ["http://h/9.ds", "http://h/10.ds"]
    assert template_urls("http://h/{:05}.ds", 0, 1) == ["http://h/00000.ds"]
    assert template_urls("http://h/{:03d}.ds", 1, 1) == ["http://h/001.ds"]
    with pytest.raises(PsycheError, match="needs --data-url-count"):
        template_urls("http://h/{}.ds", 0, None)
    with pytest.raises(PsycheError, match="exactly one number field"):
        template_urls("http://h/{}/{}.ds", 0, 1)
    with pytest.raises(PsycheError, match="exactly one number field"):
        template_urls("http://h/{x}.ds", 0, 1)


def test_bad_data_url():
    with pytest.raises(PsycheError, match="needs --data-url"):
        resolve_sources("")
    with pytest.raises(PsycheError, match="neither an http"):
        resolve_sources("ftp://x/y.ds")
    with pytest.raises(PsycheError, match="is not an http"):
        resolve_sources("http://x/a.ds,b.ds")


def test_hugging_face_repo_through_a_fake_hub(token_folder, monkeypatch):
    names = ["a.ds", "b.ds", "c.bin", "d.npy"]
    repo = {f"data/{n}": (token_folder / n).read_bytes() for n in names}
    repo["README.md"] = b"# tiny"
    with FakeHub({"psyche/tiny": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        local = LocalDataProvider(token_folder, 100, seed=3)
        options = make_options(data_url="psyche/tiny", sequence_length=100, seed=3)
        with build_http(options) as http:
            assert "hf:psyche/tiny" in http.describe()
            assert np.array_equal(http.read(range(65)), local.read(range(65)))
        ranged = [h for m, p, h in hub.requests if "/resolve/" in p]
        assert ranged and all(h.get("authorization") == "Bearer hf_test_token" for h in ranged)
        with pytest.raises(PsycheError, match="'psyche/missing' not found"):
            build_http(make_options(data_url="psyche/missing", sequence_length=100))


def test_serve_hf_repo_downloads_then_serves(tmp_path, token_folder, monkeypatch):
    from psyche_data.server import download_hf_repo

    repo = {f"data/{n}": (token_folder / n).read_bytes() for n in ("a.ds", "b.ds")}
    repo["notes.txt"] = b"skip me"
    with FakeHub({"psyche/tiny": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = download_hf_repo("psyche/tiny", tmp_path / "dl")
    assert (folder / "data" / "a.ds").read_bytes() == repo["data/a.ds"]
    assert not (folder / "notes.txt").exists()
    server, port = start_server(folder)
    try:
        local = LocalDataProvider(folder, 100, seed=1)
        files = resolve_sources(f"http://127.0.0.1:{port}/").files
        with HttpDataProvider(files, 100, seed=1) as http:
            assert np.array_equal(http.read(range(35)), local.read(range(35)))
    finally:
        server.close()


# -- faults --------------------------------------------------------------------------------------

DATA = np.arange(400, dtype="<u2").tobytes()  # 4 sequences of 100 tokens


def provider_for(fake, **kwargs) -> HttpDataProvider:
    return HttpDataProvider([RemoteFile(f"{fake.url}/x.ds", len(DATA))], 100, **{**FAST, **kwargs})


@pytest.mark.parametrize("fault", ["500", "drop", "short", "truncated", "stall"])
def test_transient_faults_are_retried(fault):
    with FaultyServer({"x.ds": DATA}, script=[fault, fault]) as fake:
        with provider_for(fake, retries=2) as http:
            assert http.read([2])[0].tolist() == list(range(200, 300))
        assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("500", "HTTP 500"),
        ("drop", "closed the connection early"),
        ("short", "closed the connection early"),
        ("truncated", "short read: got 100 of 200 bytes"),
    ],
)
def test_persistent_faults_end_in_a_clear_error(fault, message):
    pattern = rf"x\.ds bytes 200-399: .*({message})"
    with (
        FaultyServer({"x.ds": DATA}, default=fault) as fake,
        provider_for(fake) as http,
        pytest.raises(PsycheError, match=pattern) as info,
    ):
        http.read([1])
    assert "gave up after 3 attempts" in str(info.value)


def test_stalling_server_times_out_instead_of_hanging():
    with (
        FaultyServer({"x.ds": DATA}, default="stall") as fake,
        provider_for(fake, timeout=0.2, retries=1) as http,
    ):
        started = time.monotonic()
        with pytest.raises(PsycheError, match="timed out waiting for the server"):
            http.read(range(4))
        assert time.monotonic() - started < 3


def test_refused_connection():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    files = [RemoteFile(f"http://127.0.0.1:{port}/x.ds")]
    started = time.monotonic()
    with pytest.raises(PsycheError, match=r"x\.ds \(finding its size\): cannot connect"):
        HttpDataProvider(files, 100, **FAST)
    assert time.monotonic() - started < 3


def test_server_ignoring_range_is_reported():
    with FaultyServer({"x.ds": DATA}, default="ignore-range") as fake:
        with pytest.raises(PsycheError, match="ignores Range requests"):
            HttpDataProvider([RemoteFile(f"{fake.url}/x.ds")], 100, **FAST)
        ignored = r"bytes 200-399: the server ignores Range"
        with provider_for(fake) as http, pytest.raises(PsycheError, match=ignored):
            http.read([1])
        assert len(fake.requests) == 2  # not retried


def test_a_200_with_exactly_the_bytes_asked_for_is_accepted():
    whole = DATA[:200]  # one sequence: a request for it is a request for the whole file
    with FaultyServer({"x.ds": whole}, default="ignore-range") as fake:
        http = HttpDataProvider([RemoteFile(f"{fake.url}/x.ds", 200)], 100, **FAST)
        with http:
            assert http.read([0])[0].tolist() == list(range(100))


def test_not_found_and_unsatisfiable():
    with FaultyServer({"x.ds": DATA}) as fake:
        with pytest.raises(PsycheError, match=r"nope\.ds \(finding its size\): 404 Not Found"):
            HttpDataProvider([RemoteFile(f"{fake.url}/nope.ds")], 100, **FAST)
        # a file that shrank after its size was read: the range is past its end
        too_long = [RemoteFile(f"{fake.url}/x.ds", len(DATA) * 2)]
        with (
            HttpDataProvider(too_long, 100, **FAST) as http,
            pytest.raises(PsycheError, match=r"bytes 1400-1599: 416"),
        ):
            http.read([7])


def test_redirects_are_followed_and_credentials_stay_with_their_host():
    token = {"Authorization": "Bearer hf_secret"}
    with FaultyServer({"x.ds": DATA}) as cdn, RedirectServer(cdn.url) as hub:
        files = [RemoteFile(f"{hub.url}/x.ds")]
        with HttpDataProvider(files, 100, **FAST, headers=token) as http:
            assert http.read([2])[0].tolist() == list(range(200, 300))
        assert all(h.get("authorization") == "Bearer hf_secret" for _, _, h in hub.requests)
        assert cdn.requests and all("authorization" not in h for _, _, h in cdn.requests)
        assert all(h.get("range") for _, _, h in cdn.requests)  # the Range goes along
    with FaultyServer({"x.ds": DATA}) as cdn, RedirectServer(cdn.url) as hub:
        hub.target = hub.url + "/elsewhere"  # a redirect to itself, forever
        with pytest.raises(PsycheError, match="more than 10 redirects"):
            HttpDataProvider([RemoteFile(f"{hub.url}/x.ds")], 100, **FAST)


def test_a_kept_alive_connection_the_server_closed_is_replaced_quietly():
    """Servers close idle keep-alive connections without notice; the next request on one is
    sent again on a new connection, without using up a retry."""
    with FaultyServer({"x.ds": DATA}, default="ok-then-close") as fake:
        with provider_for(fake, retries=0) as http:
            for row in range(4):
                assert http.read([row])[0].tolist() == list(range(100 * row, 100 * row + 100))
        assert len(fake.requests) == 4


def test_proxy_from_the_environment(monkeypatch):
    import base64

    with FaultyServer({"x.ds": DATA}) as proxy:
        with_login = proxy.url.replace("http://", "http://reader:p%40ss@")
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, with_login)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        files = [RemoteFile("http://data.example.invalid/x.ds", len(DATA))]
        with HttpDataProvider(files, 100, **FAST) as http:
            assert http.read([3])[0].tolist() == list(range(300, 400))
        assert [p for _, p, _ in proxy.requests] == ["http://data.example.invalid/x.ds"]
        login = "Basic " + base64.b64encode(b"reader:p@ss").decode()
        assert proxy.requests[0][2]["proxy-authorization"] == login


def test_https_checks_the_certificate(monkeypatch, tmp_path):
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
    import ssl

    authority = trustme.CA()
    with FaultyServer({"x.ds": DATA}) as fake:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(context)
        fake.socket = context.wrap_socket(fake.socket, server_side=True)
        url = fake.url.replace("http://", "https://") + "/x.ds"
        started = time.monotonic()
        with pytest.raises(PsycheError, match="cannot connect: .*certificate.*SSL_CERT_FILE"):
            HttpDataProvider([RemoteFile(url)], 100, **{**FAST, "backoff": 5.0})
        assert time.monotonic() - started < 4  # not retried: a retry cannot fix it
        authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        with HttpDataProvider([RemoteFile(url)], 100, **FAST) as http:
            assert http.read([1])[0].tolist() == list(range(100, 200))


def test_one_failing_sample_fails_the_batch():
    with (
        FaultyServer({"x.ds": DATA}, script=["ok", "404"], default="ok") as fake,
        provider_for(fake) as http,
        pytest.raises(PsycheError, match="404"),
    ):
        http.read([0, 2])  # two separate requests, one of them fails


# -- batches: coalesced, several ranges per request, read ahead ---------------------------------


def ranged_requests(fake, since=0):
    return [h["range"] for _, _, h in fake.requests[since:]]


@pytest.mark.parametrize("seed", [None, 5])
def test_a_shuffled_batch_is_a_few_multi_range_requests(token_folder, seed):
    names = ("a.ds", "b.ds")
    files = {n: (token_folder / n).read_bytes() for n in names}
    with FaultyServer(files, multi_range=True) as fake:
        urls = [RemoteFile(f"{fake.url}/{n}") for n in names]
        local = LocalDataProvider(token_folder / "a.ds", 50, seed=seed)
        with HttpDataProvider(urls[:1], 50, seed=seed, **FAST) as http:
            before = len(fake.requests)
            ids = [3, 17, 4, 9, 0, 18, 11, 5]
            assert np.array_equal(http.read(ids), local.read(ids))
            sent = ranged_requests(fake, before)
            assert len(sent) == 1  # one request, several ranges
            if seed is None:  # file order: samples 3,4,5 are adjacent and become one range
                assert sent[0] == "bytes=0-99,300-599,900-999,1100-1199,1700-1899"


@pytest.mark.parametrize("script", [[], ["ok", "short"]], ids=["whole", "cut-then-whole"])
def test_ranges_back_to_back_land_in_place(token_folder, script):
    """A server that answers several ranges back to back (psyche's, when asked): the batch is
    right, the client asked for that type, and an answer cut short is asked for again."""
    from psyche_data.fetch import CONCATENATED

    files = {"a.ds": (token_folder / "a.ds").read_bytes()}
    with FaultyServer(files, script=script, multi_range=True, concatenated=True) as fake:
        local = LocalDataProvider(token_folder / "a.ds", 50, seed=1)
        with HttpDataProvider([RemoteFile(f"{fake.url}/a.ds")], 50, seed=1, **FAST) as http:
            ids = [1, 7, 12, 19, 2]
            assert np.array_equal(http.read(ids), local.read(ids))
            several = [h for _, _, h in fake.requests if "," in h.get("range", "")]
            assert len(several) == (2 if script else 1)
            assert all(CONCATENATED in h["accept"] for h in several)


def test_ranges_back_to_back_with_a_byte_too_many_is_an_error(token_folder):
    files = {"a.ds": (token_folder / "a.ds").read_bytes()}
    with FaultyServer(files, ["ok"], "long", multi_range=True, concatenated=True) as fake:
        http = HttpDataProvider([RemoteFile(f"{fake.url}/a.ds")], 50, seed=1, **FAST)
        with http, pytest.raises(PsycheError, match="ranges in .*sent more than the 500 bytes"):
            http.read([1, 7, 12, 19, 4])
        assert sum("," in h.get("range", "") for _, _, h in fake.requests) == 1  # not retried


def test_plain_server_falls_back_to_one_range_per_request(token_folder):
    files = {"b.ds": (token_folder / "b.ds").read_bytes()}
    with FaultyServer(files) as fake:  # answers several ranges with the whole file
        local = LocalDataProvider(token_folder / "b.ds", 100, seed=2)
        with HttpDataProvider([RemoteFile(f"{fake.url}/b.ds")], 100, seed=2, **FAST) as http:
            before = len(fake.requests)
            ids = [0, 1, 2, 3, 4, 5]
            assert np.array_equal(http.read(ids), local.read(ids))
            sent = ranged_requests(fake, before)
            assert "," in sent[0] and all("," not in r for r in sent[1:])
            middle = len(fake.requests)
            assert np.array_equal(http.read([7, 8, 9]), local.read([7, 8, 9]))
            assert all("," not in r for r in ranged_requests(fake, middle))  # remembered


def test_adjacent_samples_of_a_shuffled_batch_are_merged(token_folder):
    """Every sample of a file, asked for in shuffled order and twice over, is one range."""
    files = {"b.ds": (token_folder / "b.ds").read_bytes()}
    with FaultyServer(files) as fake:
        local = LocalDataProvider(token_folder / "b.ds", 100, seed=4)
        with HttpDataProvider([RemoteFile(f"{fake.url}/b.ds")], 100, seed=4, **FAST) as http:
            before = len(fake.requests)
            ids = [*range(25), 3, 3]
            assert np.array_equal(http.read(ids), local.read(ids))
            assert ranged_requests(fake, before) == ["bytes=0-4999"]


def test_short_multipart_answer_is_retried(token_folder):
    files = {"a.ds": (token_folder / "a.ds").read_bytes()}
    with FaultyServer(files, script=["ok", "short"], multi_range=True) as fake:
        local = LocalDataProvider(token_folder / "a.ds", 50, seed=1)
        with HttpDataProvider([RemoteFile(f"{fake.url}/a.ds")], 50, seed=1, **FAST) as http:
            ids = [1, 7, 12]
            assert np.array_equal(http.read(ids), local.read(ids))
            assert len(fake.requests) == 3  # size probe, the cut answer, its retry


def test_the_next_batches_are_read_ahead(token_folder):
    def asked(start: int) -> str:  # the range of samples start, start + 1 (200 bytes each)
        return f"bytes={start * 200}-{start * 200 + 399}"

    files = {"b.ds": (token_folder / "b.ds").read_bytes()}  # 25 samples of 100 tokens
    with FaultyServer(files) as fake:
        local = LocalDataProvider(token_folder / "b.ds", 100)
        with HttpDataProvider([RemoteFile(f"{fake.url}/b.ds")], 100, **FAST) as http:
            for start in (0, 4, 8, 12):  # a stride of 4, as a peer of two sees
                if start == 8:  # both next calls asked for before the caller wants them
                    deadline = time.monotonic() + 5
                    while not {asked(8), asked(12)} <= set(ranged_requests(fake)):
                        assert time.monotonic() < deadline, "8 and 12 were not read ahead"
                        time.sleep(0.01)
                ids = range(start, start + 2)
                assert np.array_equal(http.read(ids), local.read(ids))
        sent = ranged_requests(fake, 1)
    # 0-2 read; then guesses of 2-4 (dropped if it had not started when 4-6 came) and 4-6;
    # once the stride was known, 8-10 and 12-14 were read ahead, so not asked for again;
    # then 16-18 and 20-22 guessed
    needed = {asked(start) for start in (0, 4, 8, 12)}
    assert needed <= set(sent) <= needed | {asked(start) for start in (2, 16, 20)}
    assert len(sent) == len(set(sent))


# -- servers without multi-range: many steps per request, read through the gaps -----------------

PLAIN = np.arange(64 * 50, dtype="<u2").tobytes()  # 64 sequences of 50 tokens (100 bytes each)


def plain_provider(fake, **kwargs) -> HttpDataProvider:
    files = [RemoteFile(f"{fake.url}/p.ds", len(PLAIN))]
    return HttpDataProvider(files, 50, **{**FAST, "seed": 3, **kwargs})


def expected(ids, seed=3):
    order = LocalDataProvider.__new__(LocalDataProvider)  # only its index, for the ids
    from psyche_data.index import SequenceIndex

    order.index = SequenceIndex(["p.ds"], [len(PLAIN)], 2, 50, seed)
    offsets = order.index.locate(ids).token_offset
    return np.stack([np.arange(o, o + 50) for o in offsets])


def test_read_through_merges_close_ranges_up_to_the_request_limit(monkeypatch):
    from psyche_data import http as module

    monkeypatch.setattr(module, "HOLE_BYTES", 100)
    monkeypatch.setattr(module, "MAX_REQUEST_BYTES", 1000)
    rows = [slice(i, i + 1) for i in range(5)]
    ranges = [(0, 100, rows[0]), (150, 100, rows[1]), (400, 100, rows[2]), (600, 300, rows[3])]
    ranges.append((950, 600, rows[4]))  # close enough, but 400-1549 is over the limit
    merged = module._read_through(ranges)
    assert [(start, length) for start, length, _ in merged] == [(0, 250), (400, 500), (950, 600)]
    assert merged[0][2] == [(rows[0], 0, 100), (rows[1], 150, 100)]
    assert merged[1][2] == [(rows[2], 0, 100), (rows[3], 200, 300)]


def test_plain_server_is_learned_once_and_its_whole_file_is_not_read():
    with FaultyServer({"p.ds": PLAIN}) as fake, plain_provider(fake) as http:
        ids = [5, 40, 17, 2]
        assert np.array_equal(http.read(ids), expected(ids))
        sent = ranged_requests(fake)
        assert "," in sent[0]  # asked for several ranges, got the whole file: dropped unread
        assert all("," not in r for r in sent[1:])
        # the whole file is 6400 bytes; what was kept is only the ranges asked for
        assert http.bytes_useful == 4 * 100 <= http.bytes_fetched < len(PLAIN)


def test_plain_server_steps_ahead_share_requests(monkeypatch):
    """Once the stride of the calls is known (here a peer's share of each step), the samples
    of the calls ahead are read at once, in a few ranges through the gaps between them; those
    calls then take their samples without a request."""
    from psyche_data import http as module

    monkeypatch.setattr(module, "HOLE_BYTES", 300)  # read through gaps of up to 3 samples
    with FaultyServer({"p.ds": PLAIN}) as fake, plain_provider(fake) as http:
        sent = []
        for step in range(10):  # the first of two peers: 3 samples per step of 6
            ids = range(step * 6, step * 6 + 3)
            assert np.array_equal(http.read(ids), expected(ids))
            sent.append(len(fake.requests))
        # calls 3-10 (24 samples) came in one read-ahead, of at most 8 ranges, during call 3
        assert sent[2] - sent[1] <= 8 and sent[2:] == [sent[2]] * 8, fake.requests
        assert all("," not in r for r in ranged_requests(fake, 1))
        assert http.bytes_fetched > http.bytes_useful  # gaps were read through
        assert set(http._store) <= {60, 61, 62}  # taken, but for the next call


def test_plain_server_read_ahead_is_bounded_by_the_cache():
    cache = 6 * 100 / (1 << 20)  # six samples
    with FaultyServer({"p.ds": PLAIN}) as fake, plain_provider(fake, cache_megabytes=cache) as http:
        sizes = []
        for step in range(20):
            ids = range(step * 2, step * 2 + 2)
            assert np.array_equal(http.read(ids), expected(ids))
            with http._lock:
                sizes.append(len(http._store) + len(http._pending))
        assert max(sizes) <= 6
        assert len(ranged_requests(fake)) > 4  # read ahead a few calls at a time


def test_a_failed_read_ahead_is_fetched_again_by_its_call():
    import threading

    with FaultyServer({"p.ds": PLAIN}) as fake, plain_provider(fake) as http:
        fetch, failed = http._fetch, []

        def fail_once_ahead(ids):
            if threading.current_thread().name.startswith("psyche-http-ahead") and not failed:
                failed.append(list(ids))
                raise PsycheError("the read-ahead failed")
            return fetch(ids)

        http._fetch = fail_once_ahead
        for step in range(8):
            ids = range(step * 4, step * 4 + 4)
            assert np.array_equal(http.read(ids), expected(ids))
        assert failed


def test_plain_server_persistent_failure_is_one_clear_error():
    cache = 8 * 100 / (1 << 20)  # two calls ahead: later calls need requests of their own
    with FaultyServer({"p.ds": PLAIN}) as fake, plain_provider(fake, cache_megabytes=cache) as http:
        for step in range(3):
            http.read(range(step * 4, step * 4 + 4))
        fake.default = "500"
        with pytest.raises(PsycheError, match=r"p\.ds bytes \d+-\d+: HTTP 500 .*gave up after 3"):
            for step in range(3, 16):
                http.read(range(step * 4, step * 4 + 4))


def test_multipart_parser_reads_any_servers_part_layout():
    """Header case, extra headers, reordered and merged parts, and a boundary inside the data
    (other servers than ours lay multipart answers out differently)."""
    from psyche_data.fetch import _cut_into, _multipart_parts

    data = bytes(range(256)) * 4
    data = data[:500] + b"--sep\r\n" + data[507:]  # the boundary inside a part's bytes

    def part(first: int, last: int, head: str) -> bytes:
        return f"--sep\r\n{head}: bytes {first}-{last}/1024\r\nX-Other: 1\r\n\r\n".encode() + (
            data[first : last + 1] + b"\r\n"
        )

    body = bytearray(
        part(600, 699, "content-range")  # asked second, answered first
        + part(10, 19, "Content-Range")
        + part(480, 559, "CONTENT-RANGE")  # two asked ranges merged into one part
        + b"--sep--\r\n"
    )
    parts = _multipart_parts(body, b"sep")
    assert [(first, len(view)) for first, view in parts] == [(600, 100), (10, 10), (480, 80)]
    ranges = [(10, 10), (600, 100), (480, 20), (520, 40)]
    into = memoryview(bytearray(sum(n for _, n in ranges)))
    assert _cut_into(parts, ranges, into)
    assert bytes(into) == b"".join(data[s : s + n] for s, n in ranges)
    assert not _cut_into(parts, [(10, 10), (700, 5)], memoryview(bytearray(15)))  # no part has it
