"""The training tests' fixtures (a small instruction set, a BPE tokenizer) are in tests/conftest.py:
the evaluation tests use them too."""
