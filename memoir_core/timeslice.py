"""Time slices of a long generator: hand control back every few milliseconds, even mid-forward.

A server that trains an edit between decode steps can only let a new request in where the
edit's generator yields: after a whole preparation (a forward up to block L over every row) or
a whole optimisation step, up to a hundred milliseconds. `Sliced` runs the generator in a
greenlet and also pauses it at the entry of any of the given modules (the blocks of the model
copy edits train on) once its slice is used up, so each `next()` returns within about one
block's time after `slice_s` (a backward pass is not cut: its chunk is the longest).

A greenlet, not a thread: both sides must run on the same OS thread. torch's OpenMP pool
belongs to the thread that starts parallel work, and a second thread brings a second pool
whose idle workers spin on the same two cores; measured here, an edit on a worker thread ran
1.5x slower even while the engine thread only waited.

Pausing mid-forward is only safe where nothing else uses those modules meanwhile, which is
why the pause points are the training copy's blocks, never the served model's
(Memoir.pause_points). Grad mode is thread state, so each switch keeps the side it leaves
and restores the side it enters (inference mode is never held across a switch: the engine
enters it only inside a decode step, the edit only uses no_grad).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable

import torch
import torch.nn as nn
from greenlet import GreenletExit, getcurrent, greenlet


class _Worker(greenlet):
    sliced: "Sliced"


class Sliced:
    """Iterates like the generator it wraps; each next() runs at most about `slice_s` of it."""

    def __init__(self, gen: Generator, pause_points: Iterable[nn.Module], slice_s: float):
        self._gen = gen
        self._slice = slice_s
        self._deadline = 0.0
        self._worker = _Worker(self._work)
        self._worker.sliced = self
        self._caller: greenlet | None = None
        self._finished = False
        self._result = None
        self._hooks = [m.register_forward_pre_hook(_checkpoint) for m in pause_points]

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration(self._take())
        self._deadline = time.perf_counter() + self._slice
        self._caller = self._worker.parent = getcurrent()
        mode = torch.is_grad_enabled()
        try:
            self._worker.switch()
        except BaseException:
            self._end()
            raise
        finally:
            torch.set_grad_enabled(mode)
        if self._finished:
            self._end()
            raise StopIteration(self._take())
        return None

    def close(self) -> None:
        """Abandon the generator: it is closed (GeneratorExit inside) wherever it paused."""
        if self._worker and not self._worker.dead:
            self._caller = self._worker.parent = getcurrent()
            self._worker.throw(GreenletExit)
        self._end()

    def _end(self) -> None:
        self._finished = True
        for h in self._hooks:
            h.remove()
        self._hooks = []
        # The worker and this object name each other: left so, a finished edit's whole training
        # state (its proposal, 1 MB of columns on the default model) lives until the next full
        # garbage collection, which a server with a large heap runs rarely (benchmarks/README §6).
        self._worker.sliced = None
        self._gen = None

    def _take(self):
        """The generator's return value, handed over once (as a generator's StopIteration)."""
        result, self._result = self._result, None
        return result

    # -- inside the greenlet ---------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                next(self._gen)
                self._pause()
        except StopIteration as stop:
            self._result = stop.value
        except GreenletExit:
            self._gen.close()
        self._finished = True

    def _pause(self) -> None:
        mode = torch.is_grad_enabled()
        self._caller.switch()
        torch.set_grad_enabled(mode)


def _checkpoint(_module, _args) -> None:
    sliced = getattr(getcurrent(), "sliced", None)
    if sliced is not None and time.perf_counter() > sliced._deadline:
        sliced._pause()
