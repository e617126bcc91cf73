"""Per-molecule featurizers: pure functions from a molecule and params to values or a rejection."""
