"""ptmbench: a benchmark suite for task-agnostic backdoors in pre-trained models."""

__version__ = "0.1.0"
