"""psyche-data's hook implementations (kept light: nothing heavy is imported here)."""

from __future__ import annotations

from psyche_core.hookspecs import hookimpl
from psyche_core.specs import DataProviderSpec, OptionSpec

DEFAULT_CACHE_MEGABYTES = 256.0  # --data-http-cache-megabytes and HttpDataProvider's default

URL_OPTIONS = (
    OptionSpec(
        "data-url-start",
        int,
        0,
        "First number put into a --data-url template such as .../{:05}.ds.",
    ),
    OptionSpec("data-url-count", int, None, "How many numbered files a --data-url template names."),
)
HTTP_OPTIONS = (
    OptionSpec(
        "data-http-connections", int, 16, "HTTP data: requests in flight (pooled connections)."
    ),
    OptionSpec(
        "data-http-timeout",
        float,
        30.0,
        "HTTP data: seconds to connect and between reads before a request is retried.",
    ),
    OptionSpec(
        "data-http-retries",
        int,
        5,
        "HTTP data: retries (exponential backoff) after a timeout, 5xx, dropped connection "
        "or short read.",
    ),
    OptionSpec(
        "data-http-cache-megabytes",
        float,
        DEFAULT_CACHE_MEGABYTES,
        "HTTP data: MiB of samples read ahead of their step from a server without multi-range "
        "support (a plain static server, a CDN), so that many steps' samples share a request.",
    ),
)
WEIGHTED_OPTION = OptionSpec(
    "weighted",
    list,
    None,
    "Weighted data: [[weighted]] tables of provider options plus a weight (TOML only).",
    cli=False,
)
BOUNDARIES_OPTION = OptionSpec(
    "data-document-boundaries",
    bool,
    False,
    "Local data: mark the documents inside each sample (sequence_lengths, position_ids) from "
    "the .idx files `psyche data tokenize` writes, so attention stays within a document.",
)
OPTIONS = (*URL_OPTIONS, *HTTP_OPTIONS, WEIGHTED_OPTION, BOUNDARIES_OPTION)


@hookimpl
def register_data_providers(register):
    register(
        DataProviderSpec(
            name="local",
            factory="psyche_data.local:build_local",
            implied_by="data_path",
            options=(BOUNDARIES_OPTION,),
            description="a folder of raw token files (.ds/.bin/.npy), memory-mapped",
        )
    )
    register(
        DataProviderSpec(
            name="http",
            factory="psyche_data.http:build_http",
            options=(*URL_OPTIONS, *HTTP_OPTIONS),
            implied_by="data_url",
            description="token files over HTTP range requests (URLs, a template, a HF dataset)",
        )
    )
    register(
        DataProviderSpec(
            name="weighted",
            factory="psyche_data.weighted:build_weighted",
            options=(WEIGHTED_OPTION,),
            description="a seeded mixture of providers, from [[weighted]] tables in the run TOML",
        )
    )
    register(
        DataProviderSpec(
            name="preprocessed",
            factory="psyche_data.preprocessed:build_preprocessed",
            description="parquet files with input_ids (and labels, position_ids) columns",
        )
    )


@hookimpl
def register_commands(cli):
    from psyche_data.cli import data

    cli.add_command(data)
