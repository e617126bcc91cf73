"""Prefect flows: thin schedules over deepmolm library calls (no chemistry in here)."""
