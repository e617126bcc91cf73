"""A shard version to look inside: search by CID, by words of the description, or by substructure.

The light columns (no drawing, coordinates or E3FP) of every molecule are read once; a molecule's
whole row is read from its part when it is opened, so memory grows with the text, not the images.
Substructure search parses each molecule once, on the first SMARTS query.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from rdkit import Chem, rdBase

from deepmolm.data.shards.parts import read_manifest, read_shard_rejects, read_shards, resolve_version
from deepmolm.serve.asking import Refused

LIGHT_COLUMNS = ["cid", "split", "smiles", "inchikey", "description", "conformer_source", "properties", "flags", "notes"]
SEARCH_KINDS = ("cid", "words", "smarts")


@dataclass(frozen=True)
class SearchPage:
    kind: str
    query: str
    total: int
    page: int  # 1-based
    pages: int
    molecules: list[dict]  # light columns

    def as_json(self) -> dict:
        return {"kind": self.kind, "query": self.query, "total": self.total, "page": self.page, "pages": self.pages,
                "molecules": self.molecules}


class ShardBrowser:
    def __init__(self, path: Path, page_size: int, max_query_chars: int):
        self.version = resolve_version(Path(path))
        self.manifest = read_manifest(self.version)
        self.page_size, self.max_query_chars = page_size, max_query_chars
        self.rows = read_shards(self.version, columns=LIGHT_COLUMNS).to_pylist()
        self.where: dict[int, tuple[Path, int]] = {}
        position = 0
        for part in self.manifest["parts"]:
            count = pq.ParquetFile(self.version / part["path"]).metadata.num_rows
            for offset in range(count):
                self.where[self.rows[position + offset]["cid"]] = (self.version / part["path"], offset)
            position += count
        self._mols: list[Chem.Mol | None] | None = None

    def search(self, kind: str, query: str, page: int = 1) -> SearchPage:
        query = (query or "").strip()
        if kind not in SEARCH_KINDS:
            raise Refused(f"search by {kind!r}: one of {', '.join(SEARCH_KINDS)}")
        if len(query) > self.max_query_chars:
            raise Refused(f"the query has {len(query)} characters, over serve.max_query_chars ({self.max_query_chars})", 413)
        found = self._matches(kind, query) if query else self.rows
        pages = max(1, math.ceil(len(found) / self.page_size))
        if page < 1:
            raise Refused(f"page {page}: pages count from 1")
        if page > pages:
            raise Refused(f"page {page} of {pages}: {len(found)} molecules match", 404)
        chosen = found[(page - 1) * self.page_size: page * self.page_size]
        return SearchPage(kind, query, len(found), page, pages, chosen)

    def _matches(self, kind: str, query: str) -> list[dict]:
        if kind == "cid":
            if not query.isdigit():
                raise Refused(f"CID {query!r} is not a whole number")
            return [r for r in self.rows if r["cid"] == int(query)]
        if kind == "words":
            words = re.findall(r"\w[\w'-]*", query.lower())
            return [r for r in self.rows if all(w in (r["description"] or "").lower() for w in words)]
        with rdBase.BlockLogs():
            pattern = Chem.MolFromSmarts(query)
        if pattern is None:
            raise Refused(f"SMARTS {query!r} does not parse")
        return [r for r, mol in zip(self.rows, self._molecules()) if mol is not None and mol.HasSubstructMatch(pattern)]

    def _molecules(self) -> list[Chem.Mol | None]:
        if self._mols is None:
            with rdBase.BlockLogs():
                self._mols = [Chem.MolFromSmiles(r["smiles"]) for r in self.rows]
        return self._mols

    def molecule(self, cid: int, columns: list[str] | None = None) -> dict:
        """Every column of one molecule (the drawing as PNG bytes), or just `columns`: only those are read."""
        if cid not in self.where:
            raise Refused(f"no molecule with CID {cid} in shard version {self.version.name}", 404)
        part, row = self.where[cid]
        return pq.read_table(part, columns=columns).slice(row, 1).to_pylist()[0]

    def drawing(self, cid: int) -> bytes:
        return self.molecule(cid, ["image_png"])["image_png"]

    def thumbnail(self, cid: int, pixels: int) -> Image.Image:
        return thumbnail(self.drawing(cid), pixels)

    def rejects(self) -> list[dict]:
        return read_shard_rejects(self.version).to_pylist()


def thumbnail(png: bytes, pixels: int) -> Image.Image:
    with Image.open(io.BytesIO(png)) as drawing:
        return drawing.convert("RGB").resize((pixels, pixels), Image.Resampling.LANCZOS)
