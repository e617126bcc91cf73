"""The gradio page: Ask (a molecule and a prompt in, the model's and the baseline's answers out),
Browse (search a shard version, open a molecule) and Rejects (what featurization refused, and why).

A refusal is written in the page's status line, never raised as a gradio error, so a person reads
it where the answer would be. The page makes no request outside the server: no analytics, system
fonts only.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from deepmolm.data.instructions import PROPERTIES, PROPERTY_PROMPTS
from deepmolm.inference import DEFAULT_PROMPT
from deepmolm.serve.asking import Asker, Question, Refused
from deepmolm.serve.browse import SEARCH_KINDS, ShardBrowser, thumbnail

PROMPTS = [DEFAULT_PROMPT, *(PROPERTY_PROMPTS[0].format(label=q.label) for q in PROPERTIES.values())]
VIEW_PX = 256  # the model's drawing (128 px in the cpu preset) is shown at least this large, pixels kept square
THEME = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
REJECT_COLUMNS = ["cid", "stage", "reason", "detail", "raw_smiles"]


def _model_view(asker: Asker, answer) -> Image.Image:
    pixels = asker.predictor.model_view(answer.molecule).permute(1, 2, 0).numpy()
    view = Image.fromarray(pixels)
    scale = max(1, VIEW_PX // view.width)
    return view.resize((view.width * scale, view.height * scale), Image.Resampling.NEAREST)


def _details(answer) -> str:
    molecule, nearest = answer.molecule, answer.nearest
    rows = [("task", answer.task), ("SMILES", f"`{molecule.smiles}`"), ("conformer source", molecule.conformer_source),
            ("E3FP tokens", str(molecule.e3fp_tokens)), ("answer time", f"{answer.seconds:.2f} s")]
    if nearest:
        rows.append(("nearest training molecule", f"CID {nearest['cid']} `{nearest['smiles']}` "
                                                  f"(Tanimoto {nearest['similarity']:.2f})"))
    return _fields(rows)


def _molecule_markdown(row: dict) -> str:
    properties = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in (row["properties"] or {}).items() if v is not None)
    atoms = len(row["e3fp"]) if row["e3fp"] else 0
    fields = [("CID", row["cid"]), ("split", row["split"]), ("source", row["source"]),
              ("SMILES", f"`{row['smiles']}`"), ("InChIKey", row["inchikey"]), ("SELFIES", f"`{row['selfies']}`"),
              ("SELFIES atom index", f"{len(row['selfies_atom_index'])} heavy atoms"),
              ("conformer source", row["conformer_source"]), ("coordinates", f"{len(row['coords'] or [])} heavy atoms"),
              ("E3FP", f"{atoms} atoms x levels"), ("flags", ", ".join(row["flags"]) or "none"),
              ("notes", row["notes"] or ""), ("properties", properties), ("input hash", f"`{row['input_hash'][:16]}`")]
    return f"{_fields(fields)}\n\n**Description.** {row['description'] or '(none)'}"


def _fields(rows: list[tuple[str, object]]) -> str:
    """One "**name** value" line each: a two-column table squeezes the names into letters."""
    return "\n".join(f"**{name}:** {value}  " for name, value in rows)


def build_page(asker: Asker, browser: ShardBrowser | None, thumbnail_px: int) -> gr.Blocks:
    def ask(smiles: str, image: bytes | None, sdf: bytes | None, prompt: str):
        try:
            answer = asker.ask(Question(prompt=prompt, smiles=smiles, image=image,
                                        sdf=None if sdf is None else sdf.decode("utf-8", errors="replace")))
        except Refused as exc:
            return f"**Cannot answer:** {exc}", "", "", None, ""
        baseline = answer.baseline or f"({asker.baseline_missing or 'no training molecule answers this'})"
        return "Answered.", answer.answer, baseline, _model_view(asker, answer), _details(answer)

    with gr.Blocks(title="DeepMoLM", analytics_enabled=False) as page:
        pool = f"retrieval baseline over {len(asker.index)} training molecules" if asker.index else \
            f"**{asker.baseline_missing}**"
        gr.Markdown(f"# DeepMoLM\nModel `{asker.predictor.checkpoint}`; {pool}"
                    + (f"; shard version `{browser.version.name}`." if browser else "."), elem_id="served")
        with gr.Tab("Ask"):
            with gr.Row():
                with gr.Column():
                    smiles = gr.Textbox(label="SMILES", placeholder="CC(=O)Oc1ccccc1C(=O)O", elem_id="smiles")
                    with gr.Accordion("or: a drawing and its 3D structure (SDF)", open=False):
                        image = gr.File(label="drawing (PNG or JPEG)", type="binary", elem_id="image")
                        sdf = gr.File(label="3D structure (SDF); with a SMILES, its conformer", type="binary",
                                      elem_id="sdf")
                    prompt = gr.Dropdown(PROMPTS, value=PROMPTS[0], allow_custom_value=True, elem_id="prompt",
                                         label="prompt (pick a question or type your own)")
                    button = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Column():
                    status = gr.Markdown(elem_id="status")
                    answer = gr.Textbox(label="model's answer", lines=4, interactive=False, elem_id="answer")
                    baseline = gr.Textbox(label="retrieval baseline: the nearest training molecule's", lines=3,
                                          interactive=False, elem_id="baseline")
                    view = gr.Image(label="the drawing as the model sees it", type="pil", interactive=False,
                                    elem_id="view")
                    details = gr.Markdown(elem_id="details")
            outputs = [status, answer, baseline, view, details]
            button.click(ask, [smiles, image, sdf, prompt], outputs)
            smiles.submit(ask, [smiles, image, sdf, prompt], outputs)
        if browser is not None:
            _browse_tabs(browser, thumbnail_px)
    return page


def _browse_tabs(browser: ShardBrowser, thumbnail_px: int) -> None:
    def search(kind: str, query: str, page: float):
        try:
            found = browser.search(kind, query, int(page or 1))
        except Refused as exc:
            return f"**Cannot search:** {exc}", [], []
        cids = [m["cid"] for m in found.molecules]
        gallery = [(browser.thumbnail(cid, thumbnail_px), f"CID {cid}") for cid in cids]
        return f"{found.total} molecules; page {found.page} of {found.pages}.", gallery, cids

    def show(cids: list[int], selected: gr.SelectData):
        row = browser.molecule(cids[selected.index])
        return thumbnail(row["image_png"], 2 * thumbnail_px), _molecule_markdown(row)

    with gr.Tab("Browse"):
        with gr.Row():
            kind = gr.Radio(list(SEARCH_KINDS), value="words", label="search by", elem_id="kind")
            query = gr.Textbox(label="CID, words of the description, or SMARTS (empty: every molecule)",
                               elem_id="query")
            page_no = gr.Number(value=1, precision=0, minimum=1, label="page", elem_id="page")
            button = gr.Button("Search", elem_id="search")
        found = gr.Markdown(elem_id="found")
        gallery = gr.Gallery(columns=6, allow_preview=False, elem_id="gallery", label="molecules")
        cids = gr.State([])
        with gr.Row():
            drawing = gr.Image(type="pil", interactive=False, label="drawing", elem_id="drawing")
            shown = gr.Markdown(elem_id="molecule")
        for trigger in (button.click, query.submit):
            trigger(search, [kind, query, page_no], [found, gallery, cids])
        gallery.select(show, cids, [drawing, shown])
    with gr.Tab("Rejects"):
        rejects = browser.rejects()
        gr.Markdown(f"{len(rejects)} rows of shard version `{browser.version.name}` were refused by featurization.")
        gr.Dataframe(value=[[r[c] for c in REJECT_COLUMNS] for r in rejects] or None, headers=REJECT_COLUMNS,
                     interactive=False, elem_id="rejects")
