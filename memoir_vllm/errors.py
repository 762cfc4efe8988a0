"""Typed errors of the vLLM plugin (memoir_core.errors keeps the service's own)."""

from __future__ import annotations

from memoir_core.errors import MemoirError


class VllmPluginError(MemoirError):
    """Base class of the plugin's errors."""

    code = "vllm_plugin_error"


class UnsupportedEngineConfigError(VllmPluginError):
    """The vLLM engine runs in a mode the memory cannot act in yet (compiled graphs, tensor parallelism)."""

    code = "vllm_unsupported_config"


class MissingRouteError(VllmPluginError):
    """A request names an edit's columns (edit, version) that were never pushed to the worker."""

    code = "vllm_missing_route"


class NotInstalledError(VllmPluginError):
    """A route was pushed before the memory layer was installed in the worker's model."""

    code = "vllm_not_installed"
