"""`deepmolm predict` and `deepmolm serve`: asking a trained model, from the shell or a web page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from deepmolm.cli.common import Common, Exit, command, stderr, stdout
from deepmolm.cli.root import app


@command(app, "predict")
def predict(
    common: Common,
    checkpoint: Annotated[Path, typer.Option(help="a DeepMoLM checkpoint directory (model and tokenizer).")],
    smiles: Annotated[str | None, typer.Option(help="the molecule; drawn and given a conformer as the shards are.")] = None,
    image: Annotated[Path | None, typer.Option(help="the molecule's drawing (PNG); needs --sdf.")] = None,
    sdf: Annotated[Path | None, typer.Option(help="a 3D structure (SDF) of the same molecule; needs --image.")] = None,
    prompt: Annotated[str, typer.Option(help="the instruction.")] = "Describe the input molecule.",
    task: Annotated[str, typer.Option(help="what the prompt asks: caption (a paragraph) | property_qa (a sentence).")] = "caption",
) -> None:
    """Ask a trained DeepMoLM about one molecule: --smiles SMILES, or --image PNG --sdf SDF."""
    from deepmolm.config import TASKS
    from deepmolm.models.deepmolm.checkpoint import checked_checkpoint

    with common.errors():
        cfg = common.params
        if (smiles is None) == (image is None and sdf is None):
            raise Exit(2, "give either --smiles or both --image and --sdf")
        if smiles is None and (image is None or sdf is None):
            raise Exit(2, "--image and --sdf go together")
        if task not in TASKS:
            raise Exit(2, f"--task {task!r}: one of {', '.join(TASKS)}")
        checked_checkpoint(checkpoint)
        # the model's libraries load only for a request that can be answered (a usage error: at once)
        from deepmolm.data.featurize.outcome import FeaturizeError
        from deepmolm.inference import Predictor, molecule_from_files, molecule_from_smiles

        try:
            molecule = molecule_from_smiles(smiles, cfg) if smiles else molecule_from_files(image, sdf, cfg)
        except FeaturizeError as exc:
            raise Exit(1, f"cannot read the molecule: {exc}") from None
        text = Predictor(checkpoint).answer(molecule, prompt, cfg, task)
    common.emit({"prompt": prompt, "answer": text, "geometry": molecule.e3fp is not None,
                 "conformer_source": molecule.conformer_source},
                lambda s: stdout.print(s["answer"], highlight=False, markup=False))


@command(app, "serve")
def serve(
    common: Common,
    checkpoint: Annotated[Path, typer.Option(help="a DeepMoLM checkpoint directory (model and tokenizer), e.g. models/stage2.")],
    shards: Annotated[Path | None, typer.Option(help="a shard version (or dataset directory: its LATEST) to browse.")] = None,
    instructions: Annotated[Path | None, typer.Option(help="the retrieval baseline's pool: this instruction set's training molecules (default: the checkpoint's, from its provenance).")] = None,
    host: Annotated[str | None, typer.Option(help="interface to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port, 7860); 0: any free one.")] = None,
    public: Annotated[bool, typer.Option(help="allow a --host other than loopback: anyone who reaches it can run the model and read the shards.")] = False,
) -> None:
    """A web page to ask a trained DeepMoLM about a molecule and to browse a shard version, with a
    JSON API beside it (POST /api/predict, GET /api/health, /api/molecules). Runs until interrupted."""
    from deepmolm.serve.server import bind, hold_stop_signals, is_loopback
    from deepmolm.serve.server import serve as run_server

    hold_stop_signals()  # before the model's threads start: they inherit it
    with common.errors():
        cfg = common.params
        host = host or cfg.serve.host
        if not is_loopback(host) and not public:
            raise Exit(2, f"--host {host} is not a loopback address: anyone who can reach it could use the model "
                           f"and read the shards; add --public to serve it anyway")
        if not (Path(checkpoint) / "config.json").is_file():
            raise Exit(1, f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
        try:
            sock = bind(host, cfg.serve.port if port is None else port)
        except OSError as exc:
            raise Exit(1, str(exc)) from None

        def announce(summary: dict) -> None:
            def render(s: dict) -> None:
                stdout.print(f"serving {s['url']} (page; API: {s['url']}api/predict, {s['url']}api/health); Ctrl-C stops",
                             highlight=False)
                if s["baseline_missing"]:
                    stderr.print(f"[bold yellow]warning:[/] {escape(s['baseline_missing'])}", highlight=False,
                                 soft_wrap=True)

            common.emit(summary, render)
            sys.stdout.flush()

        stopped_by = run_server(cfg, sock, checkpoint, shards, instructions, announce)
    if stopped_by is not None:
        raise typer.Exit(128 + stopped_by)  # the shell's status for a process a signal ended
