"""What a test reads back from a studio folder after a sweep: the MLflow runs and the Optuna trials of the
default embedded stores (``mlflow.db`` in the folder, the journal under ``mlruns/optuna/``)."""

from __future__ import annotations

from pathlib import Path


def mlflow_runs(cwd: Path):
    """Every run of every experiment in ``<cwd>/mlflow.db`` (a pandas frame, as ``mlflow.search_runs``)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def study_trials(cwd: Path):
    """The trials of the one Optuna study in ``<cwd>/mlruns/optuna/journal.log``."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(cwd / "mlruns" / "optuna" / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
