"""What a flow returned, for the caller that ran it in this process, when Prefect's copy of its final state lost it.

On a busy machine the server can take a flow's final state while its answer times out. The client
sends the state again; the server refuses the repeat and answers with its own copy of the state,
which carries no data while results are not persisted. ``state.result()`` then raises MissingResult
for a run that completed, and the caller would report a failure that did not happen. The flows keep
what they return under their run's id (``@keeps_return``, beneath ``@flow``), and their callers read
a run's outcome with ``result_of``.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.states import State

# Flow runs whose return value is kept: a caller reads its run's right after it ends, and a long-lived
# process (the worker, `lepton serve`) whose callers never ask must not grow without end.
KEPT = 64

P = ParamSpec("P")
R = TypeVar("R")

_returned: OrderedDict[UUID, Any] = OrderedDict()
_lock = threading.Lock()
_NOTHING = object()


def keeps_return(fn: Callable[P, R]) -> Callable[P, R]:
    """Keep what ``fn`` returns under the flow run it runs in, for ``result_of``."""

    @functools.wraps(fn)
    def keeping(*args: P.args, **kwargs: P.kwargs) -> R:
        value = fn(*args, **kwargs)
        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            with _lock:
                _returned[context.flow_run.id] = value
                while len(_returned) > KEPT:
                    _returned.popitem(last=False)
        return value

    # Resolved here, in fn's module: Prefect would read the parameters' types in this one.
    keeping.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return keeping


def result_of(state: State) -> Any:
    """A finished run's result, or its exception where it failed: ``state.result(raise_on_failure=False)``, lost data recovered."""
    with _lock:
        kept = _returned.pop(state.state_details.flow_run_id, _NOTHING)
    if state.data is None and kept is not _NOTHING:  # the server's copy of the state: what the flow returned is kept here
        return kept.result(raise_on_failure=False) if isinstance(kept, State) else kept
    return state.result(raise_on_failure=False)
