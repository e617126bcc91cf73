"""The pipeline's front page, reports/index.html: what the run learned from, how training went, how the
model compares with the retrieval baseline, and what it wrote for some held-out molecules.

It reads only the artifacts of earlier stages (the data-quality summary, each stage's dvclive
metrics, the evaluation's metrics and prediction files, the shard version's drawings) and writes
its plot and thumbnails beside it under <reports_dir>/pipeline/, so it opens offline. Like the
data-quality page it marks `data-images-loaded` on <body> for the headless-browser check.
"""

from __future__ import annotations

import html
import io
import json
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from deepmolm.config import Params
from deepmolm.data.instructions import instruction_shards
from deepmolm.data.shards.parts import read_shards
from deepmolm.evaluation.captions import METRICS
from deepmolm.evaluation.examples import examples_of_splits
from deepmolm.evaluation.outputs import BASELINE_PREDICTIONS, GROUNDING, MODEL_PREDICTIONS, evaluation_dir
from deepmolm.evaluation.outputs import METRICS as METRICS_FILE
from deepmolm.reports.html import IMAGES_LOADED_SCRIPT, PAGE_STYLE
from deepmolm.runtime.run_log import portable_path
from deepmolm.training.driver import SUMMARY, read_metric, stage_metrics_dir

ASSETS = "pipeline"  # the page's plot and thumbnails: <reports_dir>/pipeline/


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _predictions(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines()) if row} if path.is_file() else {}


def stage_epochs(params: Params, stage: int) -> list[dict]:
    """A stage's epochs as dvclive logged them: the step each ended at, its mean training loss, and
    the held-out loss when there was a held-out split."""
    directory = stage_metrics_dir(params, stage)
    held = dict(read_metric(directory, "holdout/loss"))
    return [{"epoch": epoch, "step": step, "train_loss": loss, "holdout_loss": held.get(step)}
            for epoch, (step, loss) in enumerate(read_metric(directory, "epoch/train_loss"))]


def training_curves(params: Params, out: Path, epochs: dict[int, list[dict]]) -> tuple[str, dict[int, dict]] | None:
    """One PNG with each stage's loss (and a smoothed line) and learning rate per step, and the
    held-out loss of each epoch (`epochs`, per stage)."""
    stages = {}
    for stage in (1, 2):
        directory = stage_metrics_dir(params, stage)
        if loss := read_metric(directory, "train/loss"):
            lr = dict(read_metric(directory, "train/lr"))
            stages[stage] = [{"step": step, "loss": value, "lr": lr.get(step)} for step, value in loss]
    if not stages:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 3.6), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], stages.items()):
        held = [r for r in epochs.get(stage, []) if r["holdout_loss"] is not None]
        if held:
            ax.plot([r["step"] for r in held], [r["holdout_loss"] for r in held], "o-", color="#238b45", linewidth=2,
                    label="held-out loss (end of epoch)")
        step = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        window = max(1, len(loss) // 20)
        smooth = [sum(loss[max(0, i - window + 1): i + 1]) / len(loss[max(0, i - window + 1): i + 1]) for i in range(len(loss))]
        ax.plot(step, loss, color="#9ecae1", linewidth=1, label="loss")
        ax.plot(step, smooth, color="#08519c", linewidth=2, label=f"mean of {window}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(f"stage {stage}: {'projector alignment' if stage == 1 else 'instruction tuning'}", fontsize=10)
        lr = ax.twinx()
        lr.plot(step, [r["lr"] for r in rows], color="#d95f02", linewidth=1, linestyle="--")
        lr.set_ylabel("learning rate", color="#d95f02")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    name = f"{ASSETS}/training_loss.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name, stages


def model_inputs_strip(rows: list[dict], shards: Path, size: int, out: Path, count: int = 6) -> list[dict]:
    """What the encoder actually reads: a few drawings after the loader's shrinking, at their pixel
    size (shown enlarged without smoothing, so a reader sees whether bonds and labels survive)."""
    from deepmolm.models.deepmolm.processing import cached_pixels

    items = []
    for row in rows[:count]:
        pixels = cached_pixels(str(shards / row["image_part"]), row["image_row"], size)
        name = f"{ASSETS}/inputs/{row['cid']}.png"
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(out / name)
        items.append({"cid": row["cid"], "image": name})
    return items


def _gallery(params: Params, instructions: Path, model: dict[str, dict], baseline: dict[str, dict], out: Path) -> list[dict]:
    """A seeded sample of the held-out molecules the model captioned, with both answers."""
    rows = [r for r in examples_of_splits(instructions, params.eval.splits, ["caption"], None)
            if f"{r['cid']}-caption" in model]
    chosen = sorted(random.Random(params.report.gallery_seed).sample(rows, min(len(rows), params.report.gallery_size)),
                    key=lambda r: r["cid"])
    shards = instruction_shards(instructions)
    smiles = {r["cid"]: r["smiles"] for r in read_shards(shards, columns=["cid", "smiles"]).to_pylist()}
    by_part: dict[str, list[dict]] = {}
    for row in chosen:
        by_part.setdefault(row["image_part"], []).append(row)
    items = []
    for part, part_rows in by_part.items():
        images = pq.read_table(shards / part, columns=["image_png"]).column("image_png")
        for row in part_rows:
            name = f"{ASSETS}/gallery/{row['cid']}.png"
            with Image.open(io.BytesIO(images[row["image_row"]].as_py())) as image:
                image.thumbnail((params.report.thumbnail_px, params.report.thumbnail_px))
                image.save(out / name, optimize=True)
            items.append({"cid": row["cid"], "image": name, "smiles": smiles.get(row["cid"], ""),
                          "reference": row["response"], "model": model[f"{row['cid']}-caption"]["prediction"],
                          "baseline": baseline.get(str(row["cid"]), {}).get("prediction")})
    return sorted(items, key=lambda item: item["cid"])


def write_pipeline_report(params: Params, instructions: Path, out: Path | None = None,
                          robustness: Path | None = None, ablation: Path | None = None) -> Path:
    """Write <reports_dir>/index.html (or <out>/index.html) from the stages' artifacts; returns it.
    `robustness`, `ablation`: a `deepmolm eval robustness` result (robustness.json) and a `deepmolm
    eval ablation` table (ablation.json) to show as well; never looked for, so the report stage's
    page depends only on its declared inputs."""
    reports = params.paths.reports_dir
    out = Path(out) if out else reports
    shutil.rmtree(out / ASSETS, ignore_errors=True)
    (out / ASSETS / "gallery").mkdir(parents=True)
    (out / ASSETS / "inputs").mkdir(parents=True)
    evaluation = evaluation_dir(params)
    metrics = _read_json(evaluation / METRICS_FILE)
    if metrics is None:
        raise FileNotFoundError(f"no evaluation at {evaluation / METRICS_FILE}: run the evaluate stage first")
    model, baseline = _predictions(evaluation / MODEL_PREDICTIONS), _predictions(evaluation / BASELINE_PREDICTIONS)
    epochs = {n: stage_epochs(params, n) for n in (1, 2)}
    curves = training_curves(params, out, epochs)
    context = {
        "metrics": metrics,
        "data": _read_json(reports / "data" / "summary.json"),
        "data_page": _relative(reports / "data" / "index.html", out),
        "stages": {n: _read_json(stage_metrics_dir(params, n) / SUMMARY) for n in (1, 2)},
        "curves": curves[0] if curves else None,
        "gallery": _gallery(params, Path(instructions), model, baseline, out),
        "epochs": epochs,
        "robustness": _robustness(Path(robustness), out) if robustness else None,
        "ablation": _result(Path(ablation), "an ablation table", "deepmolm eval ablation") if ablation else None,
        "grounding": _copied(evaluation / GROUNDING, out, GROUNDING),
    }
    image_size = metrics["model"].get("image_size")
    captioned = [r for r in examples_of_splits(Path(instructions), params.eval.splits, ["caption"], None)]
    context["inputs"] = (model_inputs_strip(captioned, instruction_shards(Path(instructions)), image_size, out)
                         if image_size else [])
    page = out / "index.html"
    page.write_text(_page(context), encoding="utf-8")
    return page


def _copied(source: Path, out: Path, name: str) -> str | None:
    """`source` copied to the page's assets as `name`; its path from the page, None if absent."""
    if not source.is_file():
        return None
    target = out / ASSETS / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"{ASSETS}/{name}"


def _result(path: Path, what: str, command: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}: run `{command}` first")
    return json.loads(path.read_text())


def _robustness(path: Path, out: Path) -> dict:
    """The robustness result, its drawings copied beside the page."""
    report = _result(path, "robustness result", "deepmolm eval robustness")
    drawings = {name: _copied(path.parent / relative, out, f"robustness/{Path(relative).name}")
                for name, relative in report.get("drawings", {}).items() if name != "cid"}
    return {**report, "drawings": drawings, "cid": report.get("drawings", {}).get("cid")}


def _relative(target: Path, out: Path) -> str | None:
    if not target.is_file():
        return None
    return portable_path(target.absolute(), start=out)  # no absolute path in a page: two clones write the same bytes


def _splits(value) -> str:
    return value if isinstance(value, str) else "split(s) " + ", ".join(value)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _page(c: dict) -> str:
    e = html.escape
    m, data = c["metrics"], c["data"]
    ds = m["dataset"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>DeepMoLM pipeline: {e(ds['name'])}</title>"
             f"<style>{PAGE_STYLE} table.metrics td,table.metrics th{{padding:.2rem .7rem;text-align:right}}"
             f" .answer{{margin-top:.3rem}} .who{{font-weight:bold}}</style></head><body>",
             f"<h1>DeepMoLM pipeline report: {e(ds['name'])}</h1>"]
    trained = ds["train_splits"] if isinstance(ds["train_splits"], str) else ", ".join(ds["train_splits"])
    stage_steps = ", ".join(f"stage {n}: {s['steps']} steps on {s['rows']} examples" for n, s in c["stages"].items() if s)
    parts.append(
        f"<p id='dataset'>Shard version <code>{e(ds['shard_version'])}</code>, instruction set <code>{e(ds['instruction_set'])}</code>. "
        f"The model trained on split(s) <b>{e(trained)}</b> ({e(stage_steps or 'no training summary')}) and is scored on "
        f"<b>{ds['eval_molecules']}</b> molecules of <b>{e(_splits(ds['eval_splits']))}</b> "
        f"({', '.join(f'{n} {e(t)} examples' for t, n in ds['eval_examples'].items())}). "
        f"Model: preset <b>{e(str(m['model']['preset']))}</b>, {m['model']['parameters']:,} parameters. "
        "These figures describe this run only: a small preset trained briefly from random weights on the data above is "
        "not comparable with published ChEBI-20 results (26,407 training molecules, a 7B pretrained language model).</p>")
    if c["data_page"]:
        verdict = ""
        if data and data.get("contract"):
            verdict = " (data contract passed)" if data["contract"]["success"] else " (data contract FAILED)"
        parts.append(f"<p><a id='data-quality' href='{e(c['data_page'])}'>Data-quality report</a>{verdict}"
                     + (f": {data['counts']['accepted']} molecules accepted, {data['counts']['rejected']} rejected." if data else "")
                     + "</p>")
    parts.append("<h2>Captioning: model and retrieval baseline</h2><table class='metrics' id='caption-metrics'><tr><th></th>"
                 + "".join(f"<th>{e(name)}</th>" for name in METRICS) + "<th>degenerate</th><th>n</th></tr>")
    for label, scores in (("DeepMoLM", m["model"]["captions"]),
                          (f"retrieval baseline ({e(m['baseline']['fingerprint'])}, pool of {m['baseline']['pool_molecules']})",
                           m["baseline"]["captions"])):
        cells = "".join(f"<td>{_fmt(scores[name]) if scores else '-'}</td>" for name in METRICS)
        degenerate = scores.get("degenerate") if scores else None
        parts.append(f"<tr><th>{label}</th>{cells}<td>{'-' if degenerate is None else f'{degenerate:.1%}'}</td>"
                     f"<td>{scores['n'] if scores else 0}</td></tr>")
    parts.append("</table><p>Degenerate: the share of captions with one word three times in a row or one 4-gram three "
                 "times (" + (f"{m['references']['degenerate']:.1%} of the references" if m.get("references") else
                              "references: not measured") + ", long peptide and sugar chains).</p>")
    if m["model"]["properties"]:
        means = m.get("mean_baseline", {}).get("properties", {})
        parts.append("<h2>Property questions</h2><table class='metrics' id='property-metrics'>"
                     "<tr><th>property</th><th>n</th><th>valid answers</th><th>MAE (valid answers)</th>"
                     "<th>mean baseline MAE</th><th>MAE / mean baseline's</th></tr>")
        for name, s in m["model"]["properties"].items():
            mean_mae = means.get(name, {}).get("mae")
            ratio = s["mae"] / mean_mae if s["mae"] is not None and mean_mae else None
            parts.append(f"<tr><th>{e(name)}</th><td>{s['n']}</td><td>{s['valid_ratio']:.1%}</td><td>{_fmt(s['mae'], 2)}</td>"
                         f"<td>{_fmt(mean_mae, 2)}</td><td>{_fmt(ratio, 2)}</td></tr>")
        parts.append("</table><p>The mean baseline answers every question with the training molecules' mean.</p>")
    if m.get("drawing_dependence"):
        parts.append(_dependence_section(m["drawing_dependence"]))
    if (apart := m.get("without_conformer")) and apart["molecules"]:
        maes = ", ".join(f"{e(name)} {_fmt(p['mae'], 2)}" for name, p in sorted(apart["properties"].items()))
        bleu2 = _fmt((apart["captions"] or {}).get("bleu2"))
        parts.append(f"<p id='without-conformer'>{apart['molecules']} of the held-out molecules have no conformer (no "
                     f"E3FP): answered from the drawing alone, BLEU-2 {bleu2}, property MAE {maes or '-'}.</p>")
    if c["curves"]:
        parts.append("<h2>Training</h2>"
                     f"<figure><img src='{e(c['curves'])}' alt='training loss per step'><figcaption>Loss per optimizer step "
                     "(light), its running mean (dark), the learning rate (dashed) and the loss of the held-out "
                     "molecules (train.holdout) at the end of each epoch (green).</figcaption></figure>")
        held = [(n, r) for n, rows in c["epochs"].items() for r in rows]
        if held:
            parts.append("<table class='metrics' id='epoch-losses'><tr><th>stage</th><th>epoch</th><th>step</th>"
                         "<th>training loss (epoch mean)</th><th>held-out loss</th></tr>"
                         + "".join(f"<tr><td>{n}</td><td>{int(r['epoch'])}</td><td>{int(r['step'])}</td>"
                                   f"<td>{_fmt(r.get('train_loss'))}</td><td>{_fmt(r.get('holdout_loss'))}</td></tr>"
                                   for n, r in held) + "</table>")
    refits = [(n, summary["number_head_refit"]) for n, summary in c["stages"].items()
              if summary and summary.get("number_head_refit")]
    if refits:
        parts.append("<p id='number-head-refit'>" + " ".join(
            f"Stage {n}: the number head fitted again alone (train.number_head_refit, {r['steps']:,} steps) on "
            f"{r['slots']:,} training slots, mean L1 on the signed log scale {_fmt(r['train_l1'][0])} &rarr; "
            f"{_fmt(r['train_l1'][1])}; on {r['held_out_slots']:,} held-out slots {_fmt(r['holdout_l1'][0])} &rarr; "
            f"{_fmt(r['holdout_l1'][1])}." + _drawing_head_refit(r.get("number_head_drawing")) for n, r in refits)
            + "</p>")
    if c["inputs"]:
        parts.append("<h2>What the encoder reads</h2><div class='gallery' id='model-inputs'>"
                     + "".join(f"<div class='card'><img src='{e(i['image'])}' alt='input of CID {i['cid']}' "
                               f"style='width:256px;image-rendering:pixelated'><div>CID {i['cid']}</div></div>"
                               for i in c["inputs"])
                     + "</div><p>Held-out drawings as the model gets them (1024-px renders shrunk to the preset's "
                       "image size, ink thickened first), enlarged without smoothing.</p>")
    if c["grounding"]:
        parts.append("<h2>Grounding: what the Fusion Projector attends to</h2>"
                     f"<figure id='grounding'><img src='{e(c['grounding'])}' alt='cross-attention of visual tokens to atoms' "
                     "style='max-width:100%'><figcaption>For three held-out molecules: the drawing with its atoms "
                     "numbered, then the three atoms whose E3FP tokens draw the most attention, each as a map over the "
                     "model's input drawing (one cell per visual token; bright: the token attends to that atom), and "
                     "every atom together. Grounded attention lights up where the atom is drawn; the same map for "
                     "every atom, or attention left on the null key, means the geometry is not tied to the picture."
                     "</figcaption></figure>")
    if c["ablation"]:
        parts.append(_ablation_section(c["ablation"]))
    if c["robustness"]:
        parts.append(_robustness_section(c["robustness"]))
    parts.append("<h2>Held-out molecules</h2><div class='gallery' id='gallery'>")
    for item in c["gallery"]:
        parts.append(
            f"<div class='card'><img src='{e(item['image'])}' alt='CID {item['cid']}'><div><b>CID {item['cid']}</b></div>"
            f"<div class='smiles'>{e(item['smiles'])}</div>"
            f"<div class='answer'><span class='who'>Reference:</span> {e(item['reference'][:500])}</div>"
            f"<div class='answer'><span class='who'>DeepMoLM:</span> {e(item['model'][:500]) or '<i>(empty)</i>'}</div>"
            + (f"<div class='answer'><span class='who'>Baseline:</span> {e(item['baseline'][:500])}</div>" if item["baseline"] else "")
            + "</div>")
    parts.append(f"</div><script>{IMAGES_LOADED_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _dependence_section(d: dict) -> str:
    """The same molecules answered with both views, a white picture and no E3FP, side by side."""
    e = html.escape
    rows = (("with the drawing and E3FP", "with_both"), ("a white picture instead of the drawing", "blank_drawing"),
            ("no E3FP tokens", "no_geometry"))
    names = sorted(d["with_both"]["properties"])
    head = "".join(f"<th>{e(name)}</th>" for name in METRICS) + "".join(f"<th>{e(n)} MAE</th>" for n in names)
    parts = ["<h2>Does it read the drawing?</h2><table class='metrics' id='drawing-dependence'><tr><th></th>" + head + "</tr>"]
    for label, key in rows:
        scores = d[key]
        captions = "".join(f"<td>{_fmt(scores['captions'][n]) if scores['captions'] else '-'}</td>" for n in METRICS)
        maes = "".join(f"<td>{_fmt(scores['properties'].get(n, {}).get('mae'), 2)}</td>" for n in names)
        parts.append(f"<tr><th>{e(label)}</th>{captions}{maes}</tr>")
    blank = (d["deltas"]["blank_drawing"].get("captions") or {}).get("bleu2")
    geometry = (d["deltas"]["no_geometry"].get("captions") or {}).get("bleu2")
    parts.append(f"</table><p>{d['molecules']} held-out molecules ({d['examples']} examples, drawn with seed {d['seed']}), "
                 "answered three times. A view the model reads costs score when it is taken away; BLEU-2 changes by "
                 f"{_fmt(blank)} without the drawing and by {_fmt(geometry)} without E3FP.</p>")
    return "".join(parts)


def _robustness_section(r: dict) -> str:
    from deepmolm.evaluation.robustness import ROBUSTNESS_COLUMNS, robustness_rows

    e = html.escape
    head = ["perturbation", *ROBUSTNESS_COLUMNS, "valid answers", "property MAE", "E3FP changed"]
    rows = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in robustness_rows(r))
    described = "".join(f"<li><code>{e(p['name'])}</code>: {e(p['description'])}</li>" for p in r["perturbations"])
    cards = "".join(f"<div class='card'><img src='{e(src)}' alt='CID {r['cid']}, {e(name)}' style='width:192px'>"
                    f"<div>{e(name)}</div></div>" for name, src in r["drawings"].items())
    return (f"<h2>Robustness to worse inputs</h2><p>The held-out examples of {r['molecules']} molecules "
            f"({r['examples']} examples, {e(', '.join(r['eval_splits']))}) answered again from perturbed inputs "
            f"(`deepmolm eval robustness`, noise seed {r['seed']}).</p><table class='metrics' id='robustness'><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in head) + f"</tr>{rows}</table><ul>{described}</ul>"
            f"<div class='gallery' id='robustness-drawings'>{cards}</div>"
            f"<p>CID {r['cid']}'s drawing as each drawing perturbation leaves it (shrunk for the page).</p>")


def _ablation_section(a: dict) -> str:
    from deepmolm.evaluation.ablation import COLUMNS, direction_rows, table_rows

    e = html.escape

    def cell(text: str) -> str:  # "mean (min-max)": the range on a line of its own, smaller
        mean, _, spread = text.partition(" (")
        return f"{e(mean)}<br><small>({e(spread)}</small>" if spread else e(mean)

    scores = "".join(f"<tr><td style='text-align:left'>{e(row[0])}</td><td>{e(row[1])}</td>"
                     + "".join(f"<td style='white-space:nowrap'>{cell(value)}</td>" for value in row[2:]) + "</tr>"
                     for row in table_rows(a))
    claims = "".join("<tr>" + "".join(f"<td style='text-align:left'>{e(value)}</td>" for value in row) + "</tr>"
                     for row in direction_rows(a))
    steps = sorted({tuple(s) for row in a["rows"] for s in row["steps"]})
    budget = ", ".join(f"{s1} + {s2}" for s1, s2 in steps)
    return ("<h2>Ablations: the paper's grid</h2>"
            f"<p>One DVC experiment per cell (<code>./dev ablation</code>; <code>dvc exp show</code> lists them): "
            f"each row trained on {a.get('train_molecules') or '?'} molecules with stage 1 + stage 2 optimizer steps "
            f"of {e(budget)}, scored on {a.get('eval_molecules') or '?'} held-out molecules; mean and (min-max) over "
            "the seeds.</p><table class='metrics' id='ablation'><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in ("row", "seeds", *COLUMNS)) + f"</tr>{scores}</table>"
            "<table class='metrics' id='ablation-directions'><tr>"
            + "".join(f"<th style='text-align:left'>{h}</th>" for h in ("the paper", "ours (closest case)", "verdict"))
            + f"</tr>{claims}</table>"
            "<p>\"Agrees\": the paper's sign, by more than the seeds' spread. The CPU recipe's randomly "
            "initialised encoder barely depends on the drawing (see Robustness), so these rows compare how "
            "each projector passes the E3FP tokens on rather than how it grounds a picture.</p>")


def _drawing_head_refit(figures: dict | None) -> str:
    """The sentence for the drawing's head (train.number_head_refit.per_view), empty without one."""
    if not figures:
        return ""
    return (f" The drawing's head (molecules without E3FP) on {figures['slots']:,} training slots "
            f"{_fmt(figures['train_l1'][0])} &rarr; {_fmt(figures['train_l1'][1])}; on {figures['held_out_slots']:,} "
            f"held-out slots {_fmt(figures['holdout_l1'][0])} &rarr; {_fmt(figures['holdout_l1'][1])}.")
