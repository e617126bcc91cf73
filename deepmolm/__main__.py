"""`python -m deepmolm ...`: the CLI without relying on the console script being on PATH (Ray Jobs)."""

from deepmolm.cli import app

app(prog_name="deepmolm")
