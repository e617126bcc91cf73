"""`deepmolm`: the command line of the pipeline, one module per command group.

Every command takes `--params FILE` and `-S key=value` (the configuration), `--quiet` (no progress
bars) and `--json` (one JSON object as the last line of stdout, the interface for scripts); they are
declared once, in `common`. Exit codes: 0 done (bad rows are rejections, not failures), 1 unusable
input or data that fails its contract, 2 bad usage or configuration.
"""

from __future__ import annotations

from deepmolm.cli import ask, data, evaluate, model, mumo, report, show_config, train
from deepmolm.cli.root import app

app.add_typer(data.data_app, name="data")
app.add_typer(train.train_app, name="train")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(report.report_app, name="report")
app.add_typer(show_config.config_app, name="config")
app.add_typer(model.model_app, name="model")
app.add_typer(mumo.mumo_app, name="mumo")

__all__ = ["app", "ask"]

if __name__ == "__main__":  # pragma: no cover
    app()
