"""Training: :func:`run_training` sets a run up and hands it to the :class:`~.trainer.Trainer`.

Modules: ``schedule`` (learning rate, horizon), ``step`` (one iteration), ``embeddings``
(frozen-encoder cache and on-disk store), ``validation``, ``checkpoints``, ``history`` (history,
progress bar, curve), ``folder`` (the locked output folder), ``cancel`` (stop requests).
"""
from .history import plot_curves
from .trainer import TrainResult, run_training

__all__ = ["TrainResult", "plot_curves", "run_training"]
