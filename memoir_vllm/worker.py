"""The worker side: methods memoir calls on every vLLM worker through its collective RPC.

vLLM mixes this class into its worker (`worker_extension_cls`, a documented extension point),
so `self` is the worker and `self.model_runner` its model runner. No vLLM code is replaced:
`memoir_install` swaps one submodule of the loaded model (the edited block's down projection)
for a wrapper around it, as PEFT wraps a layer.
"""

from __future__ import annotations

from .batch import BatchView
from .errors import NotInstalledError, UnsupportedEngineConfigError
from .layer import MemoryProjection
from .routes import RouteTable, unpack


class MemoirWorkerExtension:
    def memoir_install(self, module_path: str, release_after_answer: bool = True) -> dict:
        """Wrap the model's `module_path` (the edited down projection, e.g.
        "model.layers.25.mlp.down_proj"); a second call is a no-op."""
        self._memoir_check_config()
        model = self.model_runner.get_model()
        current = model.get_submodule(module_path)
        if not isinstance(current, MemoryProjection):
            decode = None
            if release_after_answer:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.model_config.tokenizer)
                decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
            device = next(current.parameters()).device
            wrapper = MemoryProjection(current, BatchView(self.model_runner), RouteTable(device), decode)
            parent, _, leaf = module_path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, wrapper)
        return self.memoir_status()

    def memoir_put_route(self, edit_id: str, version: int, idx: dict, cols: dict, offset: dict | None,
                         answer: str | None, key: dict | None = None) -> int:
        """Keep an edit's columns at one memory version (tensors as routes.pack made them);
        returns the routes held."""
        table = self._memoir_table()
        table.put(edit_id, version, unpack(idx), unpack(cols), None if offset is None else unpack(offset), answer,
                  None if key is None else unpack(key))
        return len(table.held())

    def memoir_drop_routes(self, keys: list[tuple[str, int]]) -> int:
        """Forget columns no running request names any more; returns how many were held."""
        return self._memoir_table().drop(keys)

    def memoir_status(self) -> dict:
        layer = self._memoir_layer()
        if layer is None:
            return {"installed": False, "routes": [], "bytes": 0}
        # lists, not tuples: the RPC's reply comes back as msgpack would give it
        return {"installed": True, "routes": [list(k) for k in layer.table.held()], "bytes": layer.table.nbytes}

    def _memoir_check_config(self) -> None:
        from vllm.config import CompilationMode

        config = self.vllm_config
        if config.compilation_config.mode != CompilationMode.NONE:
            # a compiled graph was traced before the wrapper existed and would not call it
            raise UnsupportedEngineConfigError("the memory needs an eager model: start vLLM with enforce_eager=True")
        parallel = config.parallel_config
        if parallel.tensor_parallel_size > 1 or parallel.pipeline_parallel_size > 1:
            raise UnsupportedEngineConfigError("the memory runs on one worker for now (tensor_parallel_size 1, "
                                               "pipeline_parallel_size 1): docs/engines.md says what sharding needs")

    def _memoir_layer(self) -> MemoryProjection | None:
        for module in self.model_runner.get_model().modules():
            if isinstance(module, MemoryProjection):
                return module
        return None

    def _memoir_table(self) -> RouteTable:
        layer = self._memoir_layer()
        if layer is None:
            raise NotInstalledError("memoir_install was not called on this worker")
        return layer.table
