"""What makes a directory a DeepMoLM checkpoint, checkable before torch and transformers load, so a
command given a wrong path says so at once."""

from __future__ import annotations

from pathlib import Path


def checked_checkpoint(checkpoint: Path | str) -> Path:
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
    return checkpoint
