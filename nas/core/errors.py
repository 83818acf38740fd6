"""Errors a user can cause: each ends the command with one clear line and a non-zero exit."""


def first_line(e: BaseException) -> str:
    """A library exception's first line (runtimes put pages of context below it), or its type when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class NasError(Exception):
    """Base class: the message is the whole story (what was wrong, what to do)."""

    exit_code = 1


class ConfigError(NasError, ValueError):
    exit_code = 2


class ArchError(NasError, ValueError):
    """An architecture that cannot be had: an unknown timm model, or one whose blocks an ``Arch`` cannot express."""


class DatasetError(NasError, ValueError):
    pass


class TargetError(NasError, RuntimeError):
    """The target itself cannot be used (a missing runtime, an unreachable device): the command stops."""


class NoFeasibleTrial(NasError):
    pass


class StudyNotFound(NasError):
    pass


class CandidateFailed(NasError):
    """One candidate could not be built, exported, converted, measured or trained: in a search its trial is
    recorded as failed and the study goes on; in `nas measure` it is the command's one line."""


class TrainingDiverged(CandidateFailed):
    """The loss became NaN or infinite."""


class StoreError(NasError):
    """A store in the workdir (Optuna, MLflow, the measurement cache) is damaged or cannot be opened."""
