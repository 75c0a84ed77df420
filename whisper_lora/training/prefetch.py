"""The next training step's batch, prepared on a background thread while this step runs.

On a GPU the host otherwise collates each batch (log-mel features stacked and cut, labels padded) while the device
waits. A step's batch depends on the step number only (``data/sampler.batch_indices``), so the batch prepared ahead
is exactly the one the step would have made: the same batches in the same order, and a resumed run stays bit-exact.
Tensors are put in pinned memory on CUDA, so the step's copies to the device do not block the host. On a CPU the step
already keeps every core busy: ``train.py`` prefetches on accelerators only.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``get(step)`` returns ``make(step)``, computed ahead on one background thread while the caller works on the
    previous step. Use as a context manager (the thread is stopped on exit)."""

    def __init__(self, make: Callable[[int], T]):
        self._make = make
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-lora-prefetch")
        self._ahead: tuple[int, Future] | None = None

    def get(self, step: int) -> T:
        if self._ahead is not None and self._ahead[0] == step:
            future = self._ahead[1]
        else:  # first call, or a jump (a resume): nothing useful was prepared
            if self._ahead is not None:
                self._ahead[1].cancel()
            future = self._pool.submit(self._make, step)
        self._ahead = (step + 1, self._pool.submit(self._make, step + 1))
        return future.result()  # an error of make(step) is raised here, in the training loop

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
