"""Time slices of a long generator: hand control back every few milliseconds, even mid-forward.

A server that trains an edit between decode steps can only let a new request in where the
edit's generator yields: after a whole preparation (a forward up to block L over every row) or
a whole optimisation step, tens to hundreds of milliseconds. `Sliced` runs the generator on a
worker thread and also pauses it at the entry of any of the given modules (the blocks of the
model copy edits train on), and where a backward pass reaches their outputs, once its slice is
used up, so each `next()` returns within about one block's time after `slice_s`.

The two threads never run at once: the caller blocks while the worker runs and the worker
blocks while paused, so the generator sees the same single-threaded world as before. Pausing
mid-forward is only safe where nothing else uses those modules meanwhile, which is why the
pause points are the training copy's blocks, never the served model's (Memoir.pause_points).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable

import torch
import torch.nn as nn

_current = threading.local()  # the Sliced whose worker this thread is, if any


class _Closed(BaseException):
    """Unwinds an abandoned worker from wherever it is paused."""


class Sliced:
    """Iterates like the generator it wraps; each next() runs at most about `slice_s` of it."""

    def __init__(self, gen: Generator, pause_points: Iterable[nn.Module], slice_s: float):
        self._gen = gen
        self._slice = slice_s
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._finished = False
        self._closed = False
        self._result = None
        self._error: BaseException | None = None
        self._hooks = []
        for m in pause_points:
            self._hooks += [m.register_forward_pre_hook(_checkpoint), m.register_forward_hook(_on_output)]

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration(self._result)
        self._deadline = time.perf_counter() + self._slice
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="memoir-edit-slice", daemon=True)
            self._thread.start()
        else:
            self._go.release()
        self._back.acquire()
        if self._finished:
            self._remove_hooks()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration(self._result)
        return None

    def close(self) -> None:
        """Abandon the generator: its worker unwinds (GeneratorExit in the generator) and ends."""
        if self._thread is not None and not self._finished:
            self._closed = True
            self._go.release()
            self._back.acquire()
        self._finished = True
        self._remove_hooks()

    def __del__(self):
        if not self._finished:
            self.close()

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        _current.sliced = self
        try:
            while True:
                next(self._gen)
                self._pause()
        except StopIteration as stop:
            self._result = stop.value
        except _Closed:
            self._gen.close()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self._error = error
        self._finished = True
        self._back.release()

    def _pause(self) -> None:
        self._back.release()
        self._go.acquire()
        if self._closed:
            raise _Closed

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _checkpoint(*_args) -> None:
    sliced = getattr(_current, "sliced", None)
    if sliced is not None and time.perf_counter() > sliced._deadline:
        sliced._pause()


def _on_output(_module, _args, output) -> None:
    """A backward pass is a pause point too: where the gradient reaches this module's output."""
    out = output[0] if isinstance(output, tuple) else output
    if getattr(_current, "sliced", None) is not None and isinstance(out, torch.Tensor) and out.requires_grad:
        out.register_hook(_checkpoint)
