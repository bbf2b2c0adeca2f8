"""Quiet the libraries' own progress bars and logging, for the CLI and for each worker process it spawns."""

from __future__ import annotations


def quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
