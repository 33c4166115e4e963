"""Geometric models, robust fitting and model selection."""
