"""Prefect flows: wiring only, one flow a module."""
