"""`deepmolm serve` as a user starts it: the real server on a free loopback port, a small random
model, a shard version with rejects; driven over HTTP and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from PIL import Image
from rdkit import Chem

from deepmolm.config import load_params
from deepmolm.data.shards.parts import read_shard_rejects, read_shards
from deepmolm.inference import molecule_from_smiles
from deepmolm.training.deepmolm.stages import initial_model
from tests.browser import chromium
from tests.conftest import PARAMS, run_cli, split_copy, tmp_overrides

pytestmark = [pytest.mark.network, pytest.mark.slow]

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
MW_PROMPT = "What is the molecular weight of this molecule?"


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    pool: list[dict]  # the baseline's molecules: cid, description, properties
    shards: Path
    sdf: str  # PubChem's 3D record of CID 1
    sdf_smiles: str
    root: Path  # the model is in root/model
    overrides: list[str]

    def post(self, body: dict | str, timeout: float = 120) -> httpx.Response:
        content = body if isinstance(body, str) else json.dumps(body)
        return httpx.post(self.url + "api/predict", content=content, headers={"content-type": "application/json"},
                          timeout=timeout)


@pytest.fixture(scope="module")
def server(instruction_set, small_versions, tokenizer, shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    pool_set = split_copy(instruction_set, root, "validation")  # every molecule in the training pool
    overrides = [*small_versions[2], *tmp_overrides(root), "model.preset=tiny", "train.splits=[validation]",
                 "train.holdout.fraction=0", "model.generation.max_new_tokens=8", "model.generation.min_new_tokens=6",
                 "eval.property_max_new_tokens=8", "serve.max_smiles_chars=300", "serve.max_upload_bytes=200000"]
    model = initial_model(load_params(PARAMS, overrides), 1, tokenizer, None)
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    with torch.no_grad():  # a random model's greedy choice may be a newline or a special token: an answer ""
        model.get_input_embeddings().weight[blank] = 0.0  # tied embeddings: those tokens' logits are 0
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    process, announced, log = _launch(root, ["--checkpoint", str(root / "model"), "--shards", str(small_versions[1]),
                                             "--instructions", str(pool_set)], overrides)
    try:
        shard_rows = read_shards(small_versions[0], columns=["cid", "description", "properties"]).to_pylist()
        sdf = (shared / "pubchem" / "Conformer3D_COMPOUND_CID_1.sdf").read_text()
        sdf_smiles = Chem.MolToSmiles(Chem.RemoveHs(Chem.MolFromMolBlock(sdf, removeHs=False)))
        yield Server(announced["url"], process, shard_rows, small_versions[1], sdf, sdf_smiles, root, overrides)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def ignore_sigint() -> None:
    """As a shell starts a background job (CI's runner does): the server must stop on Ctrl-C anyway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _launch(root: Path, args: list[str], overrides: list[str]) -> tuple[subprocess.Popen, dict, object]:
    """`deepmolm serve ... --port 0 --json` started, and its announcement once it answers /api/health."""
    exe = Path(sys.executable).with_name("deepmolm")
    log = (root / f"server-{len(list(root.glob('server-*.log')))}.log").open("w")
    process = subprocess.Popen([str(exe), "serve", *args, "--port", "0", "--json",
                                *[a for o in overrides for a in ("-S", o)]],
                               stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=ignore_sigint)
    try:
        line = process.stdout.readline()  # the announcement, once the model is loaded and the socket bound
        assert line, f"the server exited before serving:\n{Path(log.name).read_text()}"
        announced = json.loads(line)
        assert announced["url"].startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(announced["url"] + "api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
    except BaseException:
        process.kill()
        raise
    return process, announced, log


def _png(size: int = 300) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def test_health_says_what_is_served(server):
    health = httpx.get(server.url + "api/health").json()
    assert health["status"] == "ok" and health["baseline_pool"] == len(server.pool) == 10
    assert health["shards"] == server.shards.name and health["image_size"] == 64 and health["waiting"] == 0


def test_an_answer_comes_with_the_baseline_and_the_molecule_it_read(server):
    first = server.post({"smiles": ASPIRIN})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["task"] == "caption" and body["answer"] and body["conformer_source"] == "etkdg"
    featurized = molecule_from_smiles(ASPIRIN, load_params(PARAMS, []))
    assert body["e3fp_tokens"] == int((featurized.e3fp >= 0).sum()) and 13 <= body["e3fp_tokens"] <= 13 * 4
    nearest = next(m for m in server.pool if m["cid"] == body["nearest"]["cid"])
    assert body["baseline"] == nearest["description"] and 0 < body["nearest"]["similarity"] <= 1
    assert 0 < body["seconds"] < 60
    assert server.post({"smiles": ASPIRIN}).json()["answer"] == body["answer"], "greedy decoding is deterministic"

    asked = server.post({"smiles": ASPIRIN, "prompt": MW_PROMPT}).json()
    assert asked["task"] == "property_qa"  # the instruction set's own question: a one-sentence answer
    mw = next(m for m in server.pool if m["cid"] == asked["nearest"]["cid"])["properties"]["mw"]
    assert asked["baseline"] == f"The molecular weight is {mw:.2f} g/mol."

    with_sdf = server.post({"smiles": server.sdf_smiles, "sdf": _b64(server.sdf)}).json()
    assert with_sdf["conformer_source"] == "pubchem", with_sdf  # the SDF's conformer, not ETKDG's
    drawing = server.post({"image": _b64(_png()), "sdf": _b64(server.sdf), "prompt": MW_PROMPT}).json()
    assert drawing["conformer_source"] == "sdf" and drawing["e3fp_tokens"] == with_sdf["e3fp_tokens"] > 0


@pytest.mark.parametrize("body, status, reason", [
    ({"smiles": "c1cccc1"}, 400, "cannot read the molecule: kekulization_failed"),
    ({"smiles": "not a molecule"}, 400, "cannot read the molecule: unparseable_smiles"),
    ({"smiles": "C" * 301}, 413, "over serve.max_smiles_chars (300)"),
    ({"smiles": "CCO", "prompt": "   "}, 400, "the prompt is empty"),
    ({"smiles": "CCO", "prompt": "x" * 501}, 413, "over serve.max_prompt_chars"),
    ({"smiles": "CCO", "task": "poem"}, 400, "task 'poem': one of caption, property_qa"),
    ({"prompt": "Describe the input molecule."}, 400, "no molecule"),
    ({"image": "SU1BR0U="}, 400, "a drawing needs an SDF"),
    ({"image": "@@@", "sdf": "QQ=="}, 400, "image is not base64"),
    ({"image": _b64(b"x" * 200_001), "sdf": "QQ=="}, 413, "over serve.max_upload_bytes"),
    ({"smiles": "CCO", "bogus": 1}, 400, "malformed request: bogus"),
    ('{"smiles": ', 400, "malformed request"),
])
def test_bad_requests_get_a_4xx_and_a_reason(server, body, status, reason):
    response = server.post(body)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]


@pytest.mark.parametrize("method, path, content, content_type, status, reason", [
    ("POST", "api/predict", "CCO", "text/plain", 415, "content type is text/plain; send application/json"),
    ("POST", "api/predict", b'{"smiles": "\xff"}', "application/json", 400, "not UTF-8: byte 0xff at position 12"),
    ("POST", "api/predict", "[" * 5000 + "]" * 5000, "application/json", 400, "nests more than 1000 levels deep"),
    ("POST", "api/predict", '{"smiles": ' + "[" * 9 + "]" * 9 + "}", "application/json", 400, "nests 10 levels deep, over 8"),
    ("POST", "api/predict", "[1]", "application/json", 400, "a JSON list, not an object"),
    ("POST", "api/predict", '{"smiles": 3}', "application/json", 400, "smiles: Input should be a valid string"),
    ("POST", "api/predict", "", "application/json", 400, "not JSON (Expecting value"),
    ("GET", "api/predict", None, None, 405, "GET /api/predict: use POST"),
    ("POST", "api/health", "{}", "application/json", 405, "POST /api/health: use GET"),
    ("GET", "api/nowhere", None, None, 404, "no API endpoint /api/nowhere"),
    ("GET", "api/molecules?page=x", None, None, 400, "page: Input should be a valid integer"),
    ("POST", "api/predict", "x" * 700_000, "application/json", 413, "the request has 700000 bytes, over what two uploads"),
])
def test_every_refusal_has_one_envelope_that_names_what_was_wrong(server, method, path, content, content_type, status,
                                                                    reason):
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.request(method, server.url + path, content=content, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and reason in response.json()["error"], response.text


def _stream_until_answered(url: str, chunks: int, size: int) -> tuple[int, dict, int]:
    """POST `chunks` chunks of `size` bytes without a Content-Length (chunked) on a raw socket, reading
    while sending, as a client must for an early answer: the server answers, stops reading and
    closes, and a client that only reads after sending everything may find the connection reset
    before it reads the answer. Returns the status, the JSON body and the body bytes sent."""
    address = httpx.URL(url)
    sock = socket.create_connection((address.host, address.port), timeout=60)
    sock.sendall(f"POST /api/predict HTTP/1.1\r\nHost: {address.host}:{address.port}\r\nContent-Type: application/json"
                 f"\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = f"{size:x}\r\n".encode() + b"A" * size + b"\r\n"
    received, sent, pending = b"", 0, memoryview(b"")
    sock.setblocking(False)
    try:
        while True:
            head, _, body = received.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return int(head.split()[1]), json.loads(body[:length]), sent
            sending = not received and (sent < chunks * size or len(pending))
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 60)
            if not readable and not writable:
                raise TimeoutError(f"no answer after {sent} bytes sent")
            if readable:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed without a whole answer: {received!r}")
                received += data
            elif writable:
                if not len(pending):
                    pending = memoryview(chunk if sent < chunks * size else b"0\r\n\r\n")
                    sent += size if sent < chunks * size else 0
                pending = pending[sock.send(pending):]
    finally:
        sock.close()


def test_a_chunked_body_is_refused_while_it_streams_in(server):
    """100 MB without a Content-Length: 413 once the cap is passed, and the server never holds it."""
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status, answer, sent = _stream_until_answered(server.url, chunks=100, size=2**20)
    finally:
        done.set()
        sampler.join()
    assert status == 413 and "while it streamed in" in answer["error"], answer
    assert sent < 100 * 2**20, "refused before the client had sent everything"
    assert max(peak) - before < 50 * 2**20, f"RSS grew by {(max(peak) - before) / 2**20:.0f} MiB"
    assert httpx.get(server.url + "api/health").json()["status"] == "ok"


def test_a_refused_client_that_never_stops_sending_is_cut_off_after_the_linger(server):
    """After a 413 the server reads and drops the rest for a while (so the answer is not lost to a
    reset while the client still writes), but not for ever: a client that never reads and never
    stops is disconnected."""
    from deepmolm.serve.bodies import LINGER_S

    address = httpx.URL(server.url)
    sock = socket.create_connection((address.host, address.port), timeout=30)
    sock.sendall(f"POST /api/predict HTTP/1.1\r\nHost: {address.host}:{address.port}\r\nContent-Type: application/json"
                 f"\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = f"{2**20:x}\r\n".encode() + b"A" * 2**20 + b"\r\n"
    started, sent = time.monotonic(), 0
    try:
        with pytest.raises(OSError):  # a reset or a broken pipe under the writes
            while time.monotonic() - started < LINGER_S + 60:
                sock.sendall(chunk)
                sent += 1
    finally:
        sock.close()
    assert time.monotonic() - started < LINGER_S + 60 and sent > 1
    assert httpx.get(server.url + "api/health").json()["status"] == "ok"


def test_refusals_about_the_files_themselves(server):
    not_an_image = server.post({"image": _b64(b"plain text, not a PNG"), "sdf": _b64(server.sdf)})
    assert not_an_image.status_code == 400 and "not_an_image" in not_an_image.json()["error"]
    truncated = "\n".join(server.sdf.splitlines()[:6]) + "\n"  # the counts line promises atoms that are not there
    broken = server.post({"image": _b64(_png()), "sdf": _b64(truncated)})
    assert broken.status_code == 400 and "unreadable_sdf" in broken.json()["error"], broken.text
    mismatch = server.post({"smiles": "CCO", "sdf": _b64(server.sdf)})
    assert mismatch.status_code == 400
    assert "the SDF's atoms do not match the SMILES (atom_count_mismatch)" in mismatch.json()["error"]


def test_twenty_parallel_requests_are_all_answered_within_bounded_memory(server):
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    smiles = ["C" * (i + 1) + "O" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda s: server.post({"smiles": s}, timeout=300), smiles))
    done.set()
    sampler.join()
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert {r.json()["smiles"] for r in responses} == set(smiles)
    assert httpx.get(server.url + "api/health").json()["waiting"] == 0
    assert max(peak) - before < 500 * 2**20, f"RSS grew by {(max(peak) - before) / 2**20:.0f} MiB for 20 requests"


def test_browse_finds_molecules_by_cid_words_and_substructure(server):
    rows = read_shards(server.shards, columns=["cid", "smiles", "description"]).to_pylist()
    one = rows[3]
    by_cid = httpx.get(server.url + "api/molecules", params={"by": "cid", "q": str(one["cid"])}).json()
    assert [m["cid"] for m in by_cid["molecules"]] == [one["cid"]] and by_cid["total"] == 1
    word = "acid"
    by_words = httpx.get(server.url + "api/molecules", params={"by": "words", "q": word}).json()
    assert {m["cid"] for m in by_words["molecules"]} == {r["cid"] for r in rows if word in r["description"].lower()}
    carbonyl = Chem.MolFromSmarts("C=O")
    by_smarts = httpx.get(server.url + "api/molecules", params={"by": "smarts", "q": "C=O"}).json()
    assert by_smarts["total"] == sum(Chem.MolFromSmiles(r["smiles"]).HasSubstructMatch(carbonyl) for r in rows) > 0
    every = httpx.get(server.url + "api/molecules", params={"q": "", "page": 1}).json()
    assert every["total"] == len(rows) and every["pages"] == 1
    opened = httpx.get(server.url + f"api/molecules/{one['cid']}").json()
    assert opened["smiles"] == one["smiles"] and opened["conformer_source"] and "properties" in opened
    drawing = httpx.get(server.url + opened["image"].lstrip("/"))
    assert drawing.headers["content-type"] == "image/png" and Image.open(io.BytesIO(drawing.content)).size == (1024, 1024)
    rejects = httpx.get(server.url + "api/rejects").json()["rejects"]
    assert len(rejects) == len(read_shard_rejects(server.shards)) == 3 and all(r["reason"] for r in rejects)
    for path, params, status in [("api/molecules", {"by": "smarts", "q": "c1("}, 400),
                                 ("api/molecules", {"by": "cid", "q": "aspirin"}, 400),
                                 ("api/molecules", {"by": "colour", "q": "red"}, 400),
                                 ("api/molecules", {"q": "", "page": 9}, 404),
                                 ("api/molecules/999999999", {}, 404)]:
        response = httpx.get(server.url + path, params=params)
        assert response.status_code == status and response.json()["error"], (path, params, response.text)


def test_the_page_answers_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    expected = server.post({"smiles": ASPIRIN}).json()["answer"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server.url, wait_until="load", timeout=60_000)  # gradio holds a connection open: never network-idle
        page.locator("#smiles textarea").fill(ASPIRIN)
        page.locator("#ask").click()
        page.wait_for_function("document.querySelector('#answer textarea').value.length > 0", timeout=60_000)
        assert page.locator("#answer textarea").input_value() == expected, "the page and the API share one answer path"
        assert page.locator("#baseline textarea").input_value()
        assert "etkdg" in page.locator("#details").inner_text()
        page.wait_for_function("(i => i && i.complete && i.naturalWidth >= 64)(document.querySelector('#view img'))",
                               timeout=60_000)  # the model's view of the drawing, loaded after the text
        page.screenshot(path=str(tmp_path / "ask.png"), full_page=True)

        page.locator("#smiles textarea").fill("c1cccc1")
        page.locator("#ask").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('Cannot answer')", timeout=60_000)
        assert "kekulization_failed" in page.locator("#status").inner_text()

        page.get_by_role("tab", name="Browse").click()
        page.locator("#query textarea").fill("")
        page.locator("#search").click()
        loaded = "Array.from(document.querySelectorAll('#gallery img'))"
        page.wait_for_function(f"{loaded}.length == 10 && {loaded}.every(i => i.complete && i.naturalWidth > 0)",
                               timeout=60_000)  # every thumbnail drawn, none broken
        assert "10 molecules" in page.locator("#found").inner_text()
        page.locator("#gallery img").nth(0).click()
        page.wait_for_function("document.querySelector('#molecule').innerText.includes('InChIKey')", timeout=60_000)
        page.get_by_role("tab", name="Rejects").click()
        page.wait_for_function("document.querySelector('#rejects') && document.querySelector('#rejects').innerText"
                               ".includes('kekulization_failed')", timeout=60_000)
        browser.close()

    shot = Image.open(tmp_path / "ask.png").convert("L")
    histogram = shot.histogram()
    assert shot.width == 1280 and shot.height >= 700
    assert sum(histogram[:200]) / sum(histogram) > 0.01, "the screenshot shows text and the drawing, not a blank page"


def test_serve_refuses_a_public_interface_without_the_flag_and_a_taken_port(server):
    public = run_cli("serve", "--checkpoint", "models/stage2", "--host", "0.0.0.0")
    assert public.returncode == 2 and "add --public" in public.stderr
    taken = int(server.url.rsplit(":", 1)[1].strip("/"))
    busy = run_cli("serve", "--checkpoint", str(Path(server.process.args[3])), "--port", str(taken))
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{taken}" in busy.stderr


def test_a_model_without_its_baseline_says_so_and_ctrl_c_stops_it_with_requests_in_flight(server):
    """A second server, on the model alone (no provenance, no --instructions): the missing baseline is
    in its announcement, /api/health and the page. Then 30 requests at once and SIGINT while they
    wait: RDKit holds the SIGINT handler while it embeds a conformer and swallowed the Ctrl-C that
    came then, so the server used to go on. Every request ends answered (200) or refused (503), and
    the process exits within serve.shutdown_grace_s and the answer being computed."""
    process, announced, log = _launch(server.root, ["--checkpoint", str(server.root / "model")], server.overrides)
    try:
        url, missing = announced["url"], announced["baseline_missing"]
        assert announced["baseline_pool"] == 0 and missing.startswith("no baseline:") and "--instructions" in missing
        assert httpx.get(url + "api/health").json()["baseline_missing"] == missing
        assert missing in httpx.get(url + "config").text, "the page's header says it"
        answered = httpx.post(url + "api/predict", json={"smiles": ASPIRIN}, timeout=60).json()
        assert answered["answer"] and answered["baseline"] is None

        with ThreadPoolExecutor(30) as pool:
            futures = [pool.submit(httpx.post, url + "api/predict", json={"smiles": "C" * (i + 2) + "O"}, timeout=120)
                       for i in range(30)]
            # SIGINT only once every request is in the server (in line or answered): one still connecting
            # would meet a closed port, which says nothing about how the server stops (CI met that once)
            deadline = time.monotonic() + 60
            while (httpx.get(url + "api/health").json()["waiting"] + sum(f.done() for f in futures) < len(futures)
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            process.wait(timeout=30)
            stopped_after = time.monotonic() - interrupted
            responses = [f.result() for f in futures]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes, codes
    assert all(r.json()["error"] == "the server is stopping" for r in responses if r.status_code == 503)
    assert process.returncode == 130, "the exit status of a Ctrl-C (128 + SIGINT), whatever SIGINT did in the parent"
    assert stopped_after < load_params(PARAMS).serve.shutdown_grace_s + 10, stopped_after
