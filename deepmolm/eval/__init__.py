"""Evaluation: caption metrics (MolT5 protocol), property QA, the retrieval baseline."""
