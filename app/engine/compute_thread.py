"""Where torch may compute: see `batching` for why one thread should do all of it.

Work that must run before the inference thread exists (loading the model) runs on a thread of
its own that ends with it, so the OpenMP workers it started end too.
"""

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["in_fresh_thread"]

T = TypeVar("T")


def in_fresh_thread(function: Callable[[], T]) -> T:
    """Runs `function` on a new thread, waits for it, returns its result (or raises)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=body, name="pqm-load", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
