"""Real HTTP servers on 127.0.0.1 for the downloaders' tests (the internet does not exist here).

`PubChemServer` speaks the PUG-REST layouts the client uses (PropertyTable, InformationList, Fault
JSON; multi-record SDF for record_type=3d) and injects faults from a per-route script.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rdkit import Chem
from rdkit.Chem import Descriptors, rdMolDescriptors


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # a client that timed out (what the slow-answer faults provoke) has closed its end: not an
        # error of the server, and its traceback would only clutter the test log
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """Runs `handle(handler)` for every request on a thread; use as a context manager."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.requests.append((time.monotonic(), self.path))
                handle(self)

            def log_message(self, *args):
                pass

        self.requests: list[tuple[float, str]] = []
        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def static_files(root: Path, overrides: dict[str, bytes] | None = None) -> Callable:
    """A handler serving files of `root` by name (or the bytes in `overrides`), 404 otherwise."""

    def handle(handler: BaseHTTPRequestHandler) -> None:
        name = urlsplit(handler.path).path.lstrip("/")
        if overrides and name in overrides:
            send(handler, 200, overrides[name], "text/plain")
        elif (root / name).is_file():
            send(handler, 200, (root / name).read_bytes(), "text/plain")
        else:
            send(handler, 404, b"not found", "text/plain")

    return handle


@dataclass
class Compound:
    cid: int
    smiles: str
    inchikey: str
    mw: float
    exact_mass: float
    tpsa: float
    hbd: int
    hba: int
    sdf: str | None = None
    descriptions: list[tuple[str, str]] = field(default_factory=list)  # (source name, text)


def compound_from_sdf(path: Path) -> Compound:
    """A compound whose properties are computed from a real PubChem 3D record."""
    text = path.read_text()
    mol = Chem.MolFromMolBlock(text, removeHs=False)
    heavy = Chem.RemoveHs(mol)
    cid = int(text.split("<PUBCHEM_COMPOUND_CID>")[1].split()[0])
    return _compound(cid, heavy, sdf=text.rstrip() + ("" if text.rstrip().endswith("$$$$") else "\n$$$$") + "\n")


def compound_from_smiles(cid: int, smiles: str, description: str | None = None) -> Compound:
    mol = Chem.MolFromSmiles(smiles)
    compound = _compound(cid, mol)
    if description:
        compound.descriptions = [("LOTUS - the natural products occurrence database", "Other text."), ("ChEBI", description)]
    return compound


def _compound(cid: int, mol: Chem.Mol, sdf: str | None = None) -> Compound:
    return Compound(
        cid=cid,
        smiles=Chem.MolToSmiles(mol),
        inchikey=Chem.MolToInchiKey(mol),
        mw=Descriptors.MolWt(mol),
        exact_mass=Descriptors.ExactMolWt(mol),
        tpsa=rdMolDescriptors.CalcTPSA(mol),
        hbd=rdMolDescriptors.CalcNumHBD(mol),
        hba=rdMolDescriptors.CalcNumHBA(mol),
        sdf=sdf,
    )


ROUTE = re.compile(r"^/rest/pug/compound/cid/(?P<ids>[^/]+)/(?P<op>property/[^/]+/JSON|description/JSON|SDF)$")


class PubChemServer(LoopbackServer):
    """PUG-REST on loopback. `faults[route]` is a deque of fault names consumed one per request;
    `always[route]` is a fault applied to every request of that route."""

    def __init__(self, compounds: list[Compound], stall_s: float = 3.0):
        self.compounds = {c.cid: c for c in compounds}
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.always: dict[str, str] = {}
        self.stall_s = stall_s
        super().__init__(self._handle)

    def requests_to(self, route: str) -> list[tuple[float, str]]:
        marker = {"property": "/property/", "description": "/description/", "sdf": "/SDF"}[route]
        return [r for r in self.requests if marker in r[1]]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        match = ROUTE.match(url.path)
        if not match:
            return self._fault_json(h, 400, "PUGREST.BadRequest", "Unrecognized URL")
        op = match["op"]
        route = "property" if op.startswith("property") else "description" if op.startswith("description") else "sdf"
        fault = self.faults[route].popleft() if self.faults[route] else self.always.get(route)
        if fault and self._inject(h, fault, route):
            return
        ids = match["ids"].split(",")
        if not all(i.isdigit() for i in ids):
            return self._fault_json(h, 400, "PUGREST.BadRequest", "Invalid CID")
        found = [self.compounds[int(i)] for i in ids if int(i) in self.compounds]
        if route == "property":
            if not found:
                return self._fault_json(h, 404, "PUGREST.NotFound", "No CID found")
            rows = [self._properties(c) for c in found]
            return send(h, 200, json.dumps({"PropertyTable": {"Properties": rows}}).encode(), "application/json")
        if route == "description":
            info = []
            for c in found:
                info.append({"CID": c.cid, "Title": f"Compound {c.cid}"})
                for source, text in c.descriptions:
                    info.append({"CID": c.cid, "Description": text, "DescriptionSourceName": source, "DescriptionURL": "https://example.org"})
            return send(h, 200, json.dumps({"InformationList": {"Information": info}}).encode(), "application/json")
        if parse_qs(url.query).get("record_type") != ["3d"]:
            return self._fault_json(h, 400, "PUGREST.BadRequest", "expected record_type=3d")
        records = [c.sdf for c in found if c.sdf]
        if not records:
            return self._fault_json(h, 404, "PUGREST.NotFound", "No records found for the given CID(s)")
        return send(h, 200, "".join(records).encode(), "chemical/x-mdl-sdfile")

    @staticmethod
    def _properties(c: Compound) -> dict:
        # Layout as PubChem returns it: CID first, masses as strings, counts as integers.
        return {
            "CID": c.cid,
            "MolecularWeight": f"{c.mw:.2f}",
            "SMILES": c.smiles,
            "InChIKey": c.inchikey,
            "XLogP": 0.4,
            "ExactMass": f"{c.exact_mass:.8f}",
            "TPSA": round(c.tpsa, 1),
            "Complexity": 214,
            "HBondDonorCount": c.hbd,
            "HBondAcceptorCount": c.hba,
        }

    def _fault_json(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str, headers: dict | None = None) -> None:
        body = json.dumps({"Fault": {"Code": code, "Message": message}}).encode()
        send(h, status, body, "application/json", headers)

    def _inject(self, h: BaseHTTPRequestHandler, fault: str, route: str) -> bool:
        """Answer with `fault`; returns False for faults that only delay the normal answer."""
        if fault == "429":
            self._fault_json(h, 429, "PUGREST.ServerBusy", "Too many requests", {"Retry-After": "1"})
        elif fault in ("503", "504"):
            self._fault_json(h, int(fault), "PUGREST.ServerBusy", "Server busy")
        elif fault in ("400", "404"):
            code = "PUGREST.BadRequest" if fault == "400" else "PUGREST.NotFound"
            self._fault_json(h, int(fault), code, "injected")
        elif fault == "stall":
            time.sleep(self.stall_s)
            return False
        elif fault == "malformed":
            send(h, 200, b'{"PropertyTable": {"Properties": [{"CID": 1, "Mol', "application/json")
        elif fault == "truncated":
            body = b'{"PropertyTable": {"Properties": []}}' if route != "sdf" else b"1\n  -OEChem-\n\n"
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body) + 500))
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
            h.close_connection = True
        elif fault == "cut_sdf":
            send(h, 200, b"1\n  -OEChem-01282400043D\n\n 31 30  0", "chemical/x-mdl-sdfile")
        else:
            raise ValueError(f"unknown fault {fault}")
        return True
