"""DeepMoLM pipeline: molecule databases to trained, evaluated multimodal molecule-text models."""

__version__ = "0.1.0"
