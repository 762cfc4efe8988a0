"""Typed errors. The service maps each class to one HTTP status in one place (app/http/errors.py)."""


class MemoirError(Exception):
    """Base class; `code` is a stable machine-readable name."""

    code = "memoir_error"


class InvalidRequestError(MemoirError, ValueError):
    """The caller sent something unusable (empty prompt, target too long, bad sampling value)."""

    code = "invalid_request"


class UnsupportedArchitectureError(MemoirError):
    code = "unsupported_architecture"


class ConfigError(MemoirError, ValueError):
    """A config file, MEMOIR_CONFIG or --set an operator wrote cannot be used (unknown field, not JSON)."""

    code = "config_error"


class EditNotFoundError(MemoirError, KeyError):
    code = "edit_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "edit not found"


class EditConflictError(MemoirError):
    """An edit id was reused with different content."""

    code = "edit_conflict"


class EditRejectedError(MemoirError):
    """The edit is well-formed but policy refuses it (e.g. blast radius over the limit)."""

    code = "edit_rejected"


class EditFailedError(MemoirError):
    """Optimisation failed (non-finite loss, delta out of range); nothing was applied."""

    code = "edit_failed"


class StateError(MemoirError):
    """The state directory cannot be used as it is."""

    code = "state_error"


class StateMismatchError(StateError):
    """The state was made for another base model, block or k."""

    code = "state_mismatch"


class StateCorruptError(StateError):
    code = "state_corrupt"


class StateLockedError(StateError):
    code = "state_locked"


class DurabilityError(MemoirError):
    """A write or fsync failed: the edit was not acknowledged and the writer stops."""

    code = "durability_error"


class TransientDurabilityError(DurabilityError):
    """A write failed for a reason that passes (EMFILE, ENFILE, ENOSPC, EAGAIN): the edit was not
    acknowledged; the store pauses writes and resumes by itself once it checks sound again."""

    code = "durability_transient"
    retry_after = 2


class ModelLoadError(MemoirError):
    """The base model cannot be loaded: no such folder, not a causal LM, not in the local cache."""

    code = "model_load_error"
