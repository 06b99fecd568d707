"""Measurements of the scripts beside this folder (python -m tools.bench)."""
