"""Client CPU per range request: psyche's ``http.client`` reads against httpx, same server.

The http provider is bound by its own CPU over a fast network (each shuffled batch is a few
requests of hundreds of ranges), which is why its range reads moved from httpx to the standard
library. This measures that choice on the two request shapes the provider sends, against
``psyche data serve --multipart-only`` in a child process over loopback (multipart for both
clients: the transport compared on the same answers, not psyche's back-to-back ranges):

- ``ranges_64``: 64 ranges of 4 KiB in one request (a shuffled batch's request; multipart
  answer, parsed and split into parts);
- ``single_1MiB``: one 1 MiB range (a file-order batch).

Each client makes the same requests one at a time in alternating rounds; the figures are the
calling process's CPU time (user + system) and wall time per request, medians over rounds.

    python benchmarks/http_client_cpu.py --save
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _record
import httpx
import numpy as np
from data_http import serve, write_files

from psyche_data.fetch import RangeClient, _boundary, _cut_into, _multipart_parts

SAMPLE = 4096


def httpx_reader(client: httpx.Client):
    """What the provider did with httpx: stream the answer, read it into one buffer, split."""

    def read(url: str, ranges: list[tuple[int, int]]) -> list[memoryview]:
        spec = ",".join(f"{start}-{start + length - 1}" for start, length in ranges)
        with client.stream("GET", url, headers={"Range": f"bytes={spec}"}) as response:
            body = bytearray(int(response.headers["content-length"]))
            filled = 0
            for chunk in response.iter_raw():
                body[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
            if len(ranges) == 1:
                return [memoryview(body)]
            kind = response.headers["content-type"]
            into = memoryview(bytearray(sum(length for _, length in ranges)))
            _cut_into(_multipart_parts(body, _boundary(kind)), ranges, into)
            return [into]

    return read


def psyche_reader(client: RangeClient):
    def read(url: str, ranges: list[tuple[int, int]]) -> list[memoryview]:
        if len(ranges) == 1:
            return [memoryview(client.read(url, *ranges[0]))]
        into = memoryview(bytearray(sum(length for _, length in ranges)))
        client.read_ranges_into(url, ranges, into)
        return [into]

    return read


def requests_for(size: int, count: int, seed: int) -> dict[str, list[list[tuple[int, int]]]]:
    rng = np.random.default_rng(seed)
    samples = size // SAMPLE
    shuffled = [
        [(int(s) * SAMPLE, SAMPLE) for s in np.sort(rng.choice(samples, 64, replace=False))]
        for _ in range(count)
    ]
    mib = 1 << 20
    ordered = [[((i % (size // mib)) * mib, mib)] for i in range(count)]
    return {"ranges_64": shuffled, "single_1MiB": ordered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40, help="requests per client and round")
    parser.add_argument("--rounds", type=int, default=7)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    report: dict[str, object] = {
        "benchmark": "client CPU per range request over loopback: http.client (psyche) vs httpx",
        "requests_per_round": args.requests,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="psyche-bench-") as tmp:
        folder = Path(tmp)
        write_files(folder, 64, files=1)
        server, url = serve(folder, "--multipart-only")
        file_url = url + "00000.ds"
        size = (folder / "00000.ds").stat().st_size
        headers = {"Accept-Encoding": "identity", "User-Agent": "psyche-data"}
        client = httpx.Client(timeout=30, headers=headers)
        ranges = RangeClient(connections=1)
        readers = {"httpx": httpx_reader(client), "psyche": psyche_reader(ranges)}
        try:
            for shape in ("ranges_64", "single_1MiB"):
                cpu: dict[str, list[float]] = {name: [] for name in readers}
                wall: dict[str, list[float]] = {name: [] for name in readers}
                for round_ in range(args.rounds + 1):  # round 0 warms up
                    batch = requests_for(size, args.requests, seed=round_)[shape]
                    order = list(readers.items())
                    for name, read in order if round_ % 2 else order[::-1]:
                        cpu_start, wall_start = time.process_time(), time.perf_counter()
                        for wanted in batch:
                            got = read(file_url, wanted)
                            assert sum(len(part) for part in got) == sum(n for _, n in wanted)
                        if round_:
                            cpu[name].append((time.process_time() - cpu_start) / len(batch))
                            wall[name].append((time.perf_counter() - wall_start) / len(batch))
                entry = {
                    f"{name}_{kind}_ms": round(statistics.median(values[name]) * 1e3, 3)
                    for kind, values in (("cpu", cpu), ("wall", wall))
                    for name in readers
                }
                entry["httpx_vs_psyche_cpu"] = round(
                    entry["httpx_cpu_ms"] / entry["psyche_cpu_ms"], 2
                )
                report[shape] = entry
        finally:
            client.close()
            ranges.close()
            server.terminate()
            server.wait(timeout=10)
    _record.emit(report, args.save, "http_client_cpu")


if __name__ == "__main__":
    main()
