"""ChEBI-20 splits: from a local mirror, or downloaded and verified into a cache.

Either way the file must carry its known SHA-256 (params.yaml `sources.chebi20.sha256`), so a mirror
and a download give the same raw table. The rows' provenance names the public URL of the split and
the file's SHA-256, which identify the content wherever the bytes were read from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepmolm.config import Chebi20Params
from deepmolm.data.sources.errors import ChecksumError, LayoutError, SourceError
from deepmolm.data.sources.http import check_response, http_client, retrying
from deepmolm.store.files import sha256_file


@dataclass(frozen=True)
class SplitFile:
    split: str
    path: Path
    uri: str
    sha256: str
    origin: str  # "mirror" or "download"


def locate_split(params: Chebi20Params, split: str, cache_dir: Path) -> SplitFile:
    """The verified local file of one split, downloading it first when there is no mirror."""
    url = params.url.format(split=split)
    if params.mirror is not None:
        path = params.mirror / f"{split}.txt"
        if not path.is_file():
            raise LayoutError(f"ChEBI-20 mirror {params.mirror} has no {split}.txt")
        digest = sha256_file(path)
        _verify(path, digest, params.sha256.get(split), split)
        return SplitFile(split, path, url, digest, "mirror")
    return _download(params, split, url, Path(cache_dir) / "chebi20")


def _verify(path: Path, digest: str, expected: str | None, split: str) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(
            f"{path}: SHA-256 {digest} does not match the known sum of ChEBI-20 {split} ({expected}); "
            "the file is damaged or not the published one"
        )


def _download(params: Chebi20Params, split: str, url: str, cache: Path) -> SplitFile:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{split}.txt"
    pin_file = cache / f"{split}.txt.sha256"
    expected = params.sha256.get(split)
    if expected is None and pin_file.is_file():
        expected = pin_file.read_text().strip()
    if expected is None and not params.trust_on_first_use:
        raise ChecksumError(
            f"no known SHA-256 for ChEBI-20 {split}: set sources.chebi20.sha256.{split}, "
            "or allow sources.chebi20.trust_on_first_use to pin the first download's sum"
        )
    if target.is_file() and expected is not None and sha256_file(target) == expected:
        return SplitFile(split, target, url, expected, "download")

    partial = target.with_suffix(".txt.part")
    try:
        with http_client(params.timeout_s) as client:
            for attempt in retrying(
                max_attempts=params.max_attempts,
                backoff_initial_s=params.backoff_initial_s,
                backoff_max_s=params.backoff_max_s,
                retry_after_max_s=params.backoff_max_s,
            ):
                with attempt, client.stream("GET", url) as response:
                    check_response(response)
                    with open(partial, "wb") as handle:
                        for chunk in response.iter_bytes():
                            handle.write(chunk)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, SourceError):
            raise
        raise SourceError(f"downloading ChEBI-20 {split} from {url} failed: {exc}") from exc
    digest = sha256_file(partial)
    try:
        _verify(partial, digest, expected, split)
    except ChecksumError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    if expected is None:
        pin_file.write_text(digest + "\n")
    return SplitFile(split, target, url, digest, "download")
