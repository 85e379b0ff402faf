"""Named fault points: a test hook that kills the process at a precise step of a run.

``checkpoint(name)`` SIGKILLs its own process when the environment variable ``LEPTON_KILL_AT``
equals ``name``, and does nothing otherwise (one environment lookup). The crash tests set it on a
real ``lepton run`` to stop the run exactly there, as a power cut or an OOM kill would, and then
check that a plain re-run converges. Nothing in production sets it.

The points, in the order a run reaches them:

- ``ingest``: the increment's bytes are copied into the workspace, not yet in place in ``data/``;
- ``train``: the candidate is trained in memory, nothing about it written anywhere (training
  writes nothing until registration, so this is the state a kill at any epoch leaves);
- ``register``: the model version exists in the registry, its tracking run is not ended, the champion has not moved;
- ``promote``: the champion's history records the move, the alias has not moved yet.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "LEPTON_KILL_AT"
POINTS = ("ingest", "train", "register", "promote")


def checkpoint(name: str) -> None:
    """Die here, at once and without clean-up, if ``LEPTON_KILL_AT`` names this point."""
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
