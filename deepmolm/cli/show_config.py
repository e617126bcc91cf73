"""`deepmolm config`: the resolved params."""

from __future__ import annotations

import json
import sys

import typer
import yaml

from deepmolm.cli.common import Common, command

config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@command(config_app, "show")
def config_show(common: Common) -> None:
    """Print the resolved params (file plus overrides, paths made absolute), or the error that stops them."""
    with common.errors():
        cfg = common.params
    # absolute paths, as the program uses them (a JSON dump writes them relative to the project root)
    dumped = json.loads(json.dumps(cfg.model_dump(), default=str))
    if common.as_json:
        print(json.dumps(dumped))
    else:
        sys.stdout.write(yaml.safe_dump(dumped, sort_keys=False))
