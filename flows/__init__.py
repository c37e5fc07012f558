"""Prefect flows: wiring only. Read ``pipeline.py`` top to bottom to follow the data."""
