"""What ``--data-url`` names: the list of remote token files, in reading order.

Accepted forms (see docs/data.md):

- ``http://host/a.ds``: one file;
- ``http://host/a.ds,http://host/b.ds``: several files, in the order given;
- ``http://host/{:05}.ds`` with ``--data-url-count N`` (and ``--data-url-start S``, default 0):
  the files numbered ``S .. S+N-1``; ``{}`` means no padding, ``{:05}`` pads with zeros to 5
  digits;
- ``http://host/`` (ending with ``/``): every data file of a folder served by
  ``psyche data serve``, read from its JSON index;
- ``owner/name`` or ``owner/name@revision``: the ``.ds``/``.bin``/``.npy`` files of a Hugging
  Face dataset repo, sorted by path (``HF_ENDPOINT`` and the saved token are honoured).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urljoin

from psyche_core.errors import PsycheError
from psyche_data.index import is_data_file

_TEMPLATE_FIELD = re.compile(r"\{(?::(0\d+)d?)?\}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[\w./-]+)?$")


@dataclass(frozen=True)
class RemoteFile:
    """One remote token file; ``size`` is None until asked of the server."""

    url: str
    size: int | None = None


@dataclass(frozen=True)
class Sources:
    files: list[RemoteFile]
    headers: dict[str, str]  # extra headers for every request (a Hugging Face token)
    description: str


def template_urls(template: str, start: int, count: int | None) -> list[str]:
    """The URLs a numbered template names (exactly one ``{}`` or ``{:0N}`` field)."""
    fields = _TEMPLATE_FIELD.findall(template)
    braces = template.count("{")
    if len(fields) != 1 or braces != 1 or template.count("}") != 1:
        raise PsycheError(
            f"--data-url template {template!r} must hold exactly one number field: "
            "{} (no padding) or {:05} (zero-padded to 5 digits)"
        )
    if count is None:
        raise PsycheError(f"--data-url template {template!r} needs --data-url-count")
    if count < 1 or start < 0:
        raise PsycheError(
            f"--data-url-count must be at least 1 and --data-url-start at least 0 "
            f"(got {count} and {start})"
        )
    width = _TEMPLATE_FIELD.search(template).group(1)  # type: ignore[union-attr]
    spec = f"{{:{width}d}}" if width else "{:d}"
    return [
        _TEMPLATE_FIELD.sub(spec.format(number), template) for number in range(start, start + count)
    ]


def resolve_sources(
    spec: str, start: int = 0, count: int | None = None, timeout: float = 30.0
) -> Sources:
    """Parse ``--data-url`` (reading a served folder's index or a hub repo's file list)."""
    spec = (spec or "").strip()
    if not spec:
        raise PsycheError("the http data provider needs --data-url")
    if "{" in spec or "}" in spec:
        urls = template_urls(spec, start, count)
        return Sources([RemoteFile(u) for u in urls], {}, f"{spec} x {len(urls)}")
    if "," in spec:
        urls = [u.strip() for u in spec.split(",") if u.strip()]
        for url in urls:
            _check_url(url)
        return Sources([RemoteFile(u) for u in urls], {}, f"{len(urls)} URLs")
    if spec.startswith(("http://", "https://")):
        if spec.endswith("/"):
            return Sources(_served_folder(spec, timeout), {}, spec)
        return Sources([RemoteFile(spec)], {}, spec)
    if _REPO_ID.match(spec) and not os.path.exists(spec):
        return hub_sources(spec)
    raise PsycheError(
        f"--data-url {spec!r} is neither an http(s) URL, a list or template of them, nor a "
        "Hugging Face dataset repo id (owner/name); for a local folder use --data-path"
    )


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise PsycheError(f"--data-url entry {url!r} is not an http(s) URL")


def _served_folder(url: str, timeout: float) -> list[RemoteFile]:
    import httpx

    try:
        response = httpx.get(url, headers={"Accept": "application/json"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PsycheError(f"{url}: cannot read the folder index: {exc}") from None
    if response.status_code != 200:
        raise PsycheError(f"{url}: cannot read the folder index: HTTP {response.status_code}")
    try:
        files = json.loads(response.content)["files"]
        result = [RemoteFile(urljoin(url, quote(f["path"])), int(f["size"])) for f in files]
    except (ValueError, KeyError, TypeError):
        raise PsycheError(
            f"{url}: a URL ending with / must be a folder served by `psyche data serve` (it "
            "answers with a JSON file index); name the files instead"
        ) from None
    if not result:
        raise PsycheError(f"{url}: the served folder has no .ds, .bin or .npy files")
    return result


def hub_error(repo_id: str, exc: BaseException) -> PsycheError:
    """One line for a failed Hugging Face Hub call."""
    name = type(exc).__name__
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return PsycheError(
            f"Hugging Face dataset repo {repo_id!r} not found, or private or gated (log in with "
            "`hf auth login` or set HF_TOKEN)"
        )
    if name == "RevisionNotFoundError":
        return PsycheError(f"Hugging Face dataset repo {repo_id!r}: revision not found")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return PsycheError(f"Hugging Face dataset repo {repo_id!r}: {name}: {first_line}")


def hub_sources(spec: str) -> Sources:
    """The data files of a Hugging Face dataset repo, pinned to the commit read now."""
    from huggingface_hub import HfApi, get_token, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    repo_id, _, revision = spec.partition("@")
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    token = get_token()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        commit = api.dataset_info(repo_id, revision=revision or None).sha
        entries = api.list_repo_tree(repo_id, recursive=True, repo_type="dataset", revision=commit)
        found = sorted(
            (e.path, e.size) for e in entries if isinstance(e, RepoFile) and is_data_file(e.path)
        )
    except Exception as exc:  # huggingface_hub raises many types; show one line
        raise hub_error(repo_id, exc) from None
    if not found:
        raise PsycheError(f"Hugging Face dataset repo {repo_id!r} has no .ds, .bin or .npy files")
    files = [
        RemoteFile(
            hf_hub_url(repo_id, path, repo_type="dataset", revision=commit, endpoint=endpoint),
            size,
        )
        for path, size in found
    ]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Sources(files, headers, f"hf:{repo_id}@{(commit or '')[:10]}")
