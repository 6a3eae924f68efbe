"""Run a function over tasks, in this process or in a pool of worker processes.

One signature for every distributor, so a cluster distributor can be added later without
touching the engine: ``distributor(work, tasks, setup, setup_args) -> iterator of results``
in any order. ``setup(*setup_args)`` runs once per worker before its first task.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Distributor(Protocol):
    def __call__(
        self,
        work: Callable[[Any], Any],
        tasks: Iterable[Any],
        setup: Callable[..., None],
        setup_args: tuple[Any, ...],
    ) -> Iterator[Any]: ...


def serial(
    work: Callable[[T], R], tasks: Iterable[T], setup: Callable[..., None], setup_args: tuple
) -> Iterator[R]:
    """Everything in this process: simplest to debug, no start-up cost."""
    setup(*setup_args)
    for task in tasks:
        yield work(task)


def process_pool(workers: int, chunksize: int = 1) -> Distributor:
    """A pool of ``workers`` processes; each takes ``chunksize`` consecutive tasks at a time.

    Consecutive tasks usually share data (the rows of one parquet row group, the pages of
    one document), so chunks keep a worker's caches warm and cut the messages sent.
    """

    def run(
        work: Callable[[T], R], tasks: Iterable[T], setup: Callable[..., None], setup_args: tuple
    ) -> Iterator[R]:
        methods = multiprocessing.get_all_start_methods()
        # fork: workers inherit loaded plugins and the converter without pickling them
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers, initializer=setup, initargs=setup_args) as pool:
            yield from pool.imap_unordered(work, tasks, chunksize=chunksize)

    return run


def distributor_for(workers: int, tasks: int = 0) -> Distributor:
    """Serial for one worker; else a pool with chunks small enough to balance the load."""
    if workers <= 1:
        return serial
    return process_pool(workers, chunksize=max(1, min(32, tasks // (workers * 8))))
