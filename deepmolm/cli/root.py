"""The root `deepmolm` command; the groups register on it in deepmolm/cli/__init__.py."""

from __future__ import annotations

from typing import Annotated

import typer

from deepmolm import __version__

app = typer.Typer(
    name="deepmolm",
    help="Public molecule databases -> featurized shards -> trained, evaluated molecule-text models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="print the version and exit.")] = False) -> None:
    if version:
        print(__version__)
        raise typer.Exit()
