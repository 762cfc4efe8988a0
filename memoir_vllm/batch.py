"""Which request owns which tokens of the forward pass vLLM is running now.

vLLM flattens a step's requests into one token axis: request i's tokens are
query_start_loc[i]:query_start_loc[i+1], in the order of the runner's persistent batch, and its
first one sits at prompt position num_computed_tokens[i] (a chunk of a prefill, a whole prefill
or one decode token alike). The model's forward gets none of this, so it is read here from the
worker's model runner, which has filled it for the step before calling the model. These are
vLLM internals (v1 GPUModelRunner, which the CPU runner extends), read, never changed: the
release range the plugin is tested with is pinned (memoir_vllm.TESTED_VLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Slot:
    req_id: str
    begin: int  # the request's tokens in the flattened step: [begin, end)
    end: int
    position: int  # prompt position of its first token in this step
    prompt_len: int
    extra_args: dict[str, Any] | None
    output_token_ids: list[int]  # the tokens sampled so far (all of them: async scheduling is off on CPU)


class BatchView:
    def __init__(self, runner):
        self.runner = runner

    def slots(self, num_tokens: int) -> list[Slot]:
        """The requests of the step whose forward is running, or [] in a warm-up or profiling pass
        (no request owns those tokens)."""
        runner = self.runner
        batch = runner.input_batch
        n = batch.num_reqs
        if not n:
            return []
        starts = runner.query_start_loc.np[: n + 1]
        if int(starts[n]) > num_tokens:  # a dummy pass smaller than the persistent batch's step
            return []
        computed = batch.num_computed_tokens_cpu
        out = []
        for i, req_id in enumerate(batch.req_ids[:n]):
            state = runner.requests.get(req_id)
            if state is None:
                continue
            params = state.sampling_params
            out.append(Slot(req_id, int(starts[i]), int(starts[i + 1]), int(computed[i]),
                            state.num_prompt_tokens, params.extra_args if params is not None else None, state.output_token_ids))
        return out
