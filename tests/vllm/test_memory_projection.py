"""memoir_vllm's down-projection wrapper on vLLM's flattened token axis, against memoir's own
ResidualMemory: the same output for a routed request whose prefill is cut into chunks and shares
the step with an unrouted one; release after the answer; no route, no change. A stand-in for
vLLM's model runner gives the batch layout, so this runs without vLLM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from memoir_core.memory_layer import BatchRouting, Decision, ResidualMemory, Route
from memoir_vllm.batch import BatchView
from memoir_vllm.errors import MissingRouteError
from memoir_vllm.layer import MemoryProjection
from memoir_vllm.routes import RouteTable, pack, unpack
from memoir_vllm.tags import RouteTag

WIDTH, D_OUT, K = 16, 8, 5


class Runner:
    """The few fields of vLLM's model runner the wrapper reads (memoir_vllm/batch.py)."""

    def __init__(self):
        self.requests = {}
        self.input_batch = SimpleNamespace(num_reqs=0, req_ids=[], num_computed_tokens_cpu=np.zeros(8, np.int32))
        self.query_start_loc = SimpleNamespace(np=np.zeros(9, np.int32))

    def add(self, req_id: str, prompt_len: int, tag: RouteTag | None, output=()):
        params = SimpleNamespace(extra_args=None if tag is None else tag.extra_args())
        self.requests[req_id] = SimpleNamespace(sampling_params=params, output_token_ids=list(output),
                                                num_prompt_tokens=prompt_len)

    def step(self, scheduled: list[tuple[str, int, int]]):
        """scheduled: (request, first position, number of tokens) in batch order."""
        batch = self.input_batch
        batch.num_reqs = len(scheduled)
        batch.req_ids = [r for r, _, _ in scheduled]
        self.query_start_loc.np[0] = 0
        for i, (_, position, n) in enumerate(scheduled):
            batch.num_computed_tokens_cpu[i] = position
            self.query_start_loc.np[i + 1] = self.query_start_loc.np[i] + n


@pytest.fixture
def parts():
    torch.manual_seed(0)
    base = nn.Linear(WIDTH, D_OUT, bias=False)
    idx = torch.randperm(WIDTH)[:K]
    cols, offset = torch.randn(K, D_OUT), torch.randn(K)
    table = RouteTable(torch.device("cpu"))
    table.put("e1", 3, idx, cols, offset, "7 8")
    runner = Runner()
    layer = MemoryProjection(base, BatchView(runner), table, decode=lambda ids: " ".join(map(str, ids)))
    return base, Route("e1", 3, idx, cols, offset, "7 8"), runner, layer


def builtin(base, route, x, start):
    """memoir's ResidualMemory on one sequence's prefill, the memory acting from `start` on."""
    memory = ResidualMemory(base)
    active = torch.zeros(1, x.shape[0], dtype=torch.bool)
    active[0, start:] = True
    decision = Decision(route, route.edit_id, 1.0, route.version)
    routing = BatchRouting(decide=lambda features, *a, **k: [decision], span=torch.ones_like(active), active=active)
    with memory.use(routing):
        return memory(x[None])[0]


@torch.inference_mode()
def test_a_chunked_routed_prefill_matches_residual_memory_and_its_batch_neighbour_is_untouched(parts):
    base, route, runner, layer = parts
    xa, xb = torch.randn(6, WIDTH), torch.randn(3, WIDTH)
    expected = builtin(base, route, xa, start=2)
    assert not torch.equal(expected, base(xa))  # the memory does act
    runner.add("a", 6, RouteTag("e1", 3, start=2))
    runner.add("b", 3, None)

    runner.step([("a", 0, 4), ("b", 0, 3)])  # a's first chunk beside b's whole prefill
    step = torch.cat([xa[:4], xb])
    out, plain = layer(step), base(step)
    torch.testing.assert_close(out[:4], expected[:4], rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:2], plain[:2])  # before the span's start: the base model's reading
    assert torch.equal(out[4:], plain[4:])  # bit-identical: nothing added

    runner.step([("a", 4, 2)])  # the rest of a's prompt
    torch.testing.assert_close(layer(xa[4:]), expected[4:], rtol=1e-6, atol=1e-6)


@torch.inference_mode()
def test_the_memory_lets_go_after_the_output_holds_the_answer(parts):
    base, _, runner, layer = parts
    x = torch.randn(1, WIDTH)
    runner.add("a", 6, RouteTag("e1", 3, start=0), output=[5, 7])
    runner.step([("a", 7, 1)])  # decoding token 7: "5 7" does not hold "7 8" yet
    assert not torch.equal(layer(x), base(x))
    runner.requests["a"].output_token_ids.append(8)
    runner.step([("a", 8, 1)])  # token 8 completes the answer: it is read without the memory
    assert torch.equal(layer(x), base(x))
    # a preempted request recomputed from all of its tokens: the memory up to the release point only
    del layer._running["a"]
    xs = torch.randn(9, WIDTH)
    runner.step([("a", 0, 9)])
    out, plain = layer(xs), base(xs)
    assert not torch.equal(out[:8], plain[:8])
    assert torch.equal(out[8:], plain[8:])


@torch.inference_mode()
def test_no_route_no_change_and_an_unknown_route_is_an_error(parts):
    base, _, runner, layer = parts
    x = torch.randn(3, WIDTH)
    runner.add("b", 3, None)
    runner.step([("b", 0, 3)])
    assert torch.equal(layer(x), base(x))
    runner.add("c", 3, RouteTag("e1", 4, start=0))  # a version that was never pushed
    runner.step([("c", 0, 3)])
    with pytest.raises(MissingRouteError):
        layer(x)


def test_columns_cross_the_rpc_as_bytes_intact():
    cols = torch.randn(K, D_OUT)
    assert torch.equal(unpack(pack(cols)), cols)
    assert torch.equal(unpack(pack(torch.arange(K))), torch.arange(K))


def test_columns_on_the_workers_are_trimmed_oldest_first_but_never_a_running_requests():
    from memoir_vllm.client import VllmMemory

    calls = []
    memory = VllmMemory(None, lambda method, args: calls.append((method, args)) or [1])
    routes = [Route(f"e{i}", 1, torch.arange(K), torch.zeros(K, D_OUT), None) for i in range(3)]
    for route in routes:
        memory._push(route)
    memory._push(routes[0])  # asked again: not sent again, and now the most recent
    assert [c[0] for c in calls] == ["memoir_put_route"] * 3
    memory.trim(in_use={("e1", 1)}, budget=2 * routes[0].cols.nbytes)
    assert calls[-1] == ("memoir_drop_routes", ([["e2", 1]],))  # e1 runs, e0 was used last: e2 goes
    assert memory.pushed == {("e0", 1), ("e1", 1)}


@torch.inference_mode()
def test_the_prompts_last_token_reads_its_answer_key_in_whichever_chunk_holds_it():
    torch.manual_seed(1)
    base = nn.Linear(WIDTH, D_OUT, bias=False)
    idx = torch.randperm(WIDTH)[:K]
    cols, offset, keys = torch.randn(K, D_OUT), torch.randn(K), torch.randn(2, K)
    table = RouteTable(torch.device("cpu"))
    table.put("e1", 3, idx, cols, offset, None, keys)
    runner = Runner()
    layer = MemoryProjection(base, BatchView(runner), table, decode=None)
    route = Route("e1", 3, idx, cols, offset, None, key=keys)
    for form in (0, 1):  # bare prompt: the plain key; templated (span ends before its last token)
        xa = torch.randn(6, WIDTH)
        memory = ResidualMemory(base)
        span = torch.ones(1, 6, dtype=torch.bool)
        span[0, 4:] = bool(form == 0)
        at = torch.zeros(1, 6, dtype=torch.bool)
        at[0, -1] = True
        routing = BatchRouting(decide=lambda features, *a, **k: [Decision(route, "e1", 1.0, 3)], span=span,
                               active=torch.ones(1, 6, dtype=torch.bool), answer_at=at)
        with memory.use(routing):
            expected = memory(xa[None])[0]
        own = base(xa) + (xa[:, idx] - offset) @ cols
        assert not torch.allclose(expected[-1], own[-1], atol=1e-3)  # the key does act
        torch.testing.assert_close(expected[:-1], own[:-1], rtol=1e-6, atol=1e-6)
        req = f"r{form}"
        runner.add(req, 6, RouteTag("e1", 3, start=0, answer_key=form))
        runner.step([(req, 0, 4)])  # a chunk without the last token, then the one with it
        first = layer(xa[:4])
        runner.step([(req, 4, 2)])
        torch.testing.assert_close(torch.cat([first, layer(xa[4:])]), expected, rtol=1e-6, atol=1e-6)
        runner.requests[req].output_token_ids.append(3)
        runner.step([(req, 6, 1)])  # a decode step reads its own input
        x = torch.randn(1, WIDTH)
        torch.testing.assert_close(layer(x), base(x) + (x[:, idx] - offset) @ cols, rtol=1e-6, atol=1e-6)
