"""``python tests/hold_at_checkpoint.py ARGS``: ``unet-zoo ARGS``, held still once the first checkpoint is on
disk, for a test to SIGKILL there (also as torchrun's script: then only rank 0, which checkpoints, holds;
the other ranks wait for it in their next collective).

A kill tests resume only if the run is not over when it lands. Killing the moment ``checkpoint.pt``
appears races a fast run to its end, so runs had to be long; held, a run can be as short as it likes, and
the kill lands at a fixed point: after epoch 0's checkpoint, before its metrics reach the store, the
hardest place to resume from. The checkpoint is written to a temporary name and renamed into place
(``os.replace``, watched here), so the hold begins with the file complete.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

_real_replace = os.replace


def _replace_then_hold(src: object, dst: object, *args: object, **kwargs: object) -> None:
    _real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]
    if Path(str(dst)).name == "checkpoint.pt":
        threading.Event().wait()  # until killed


def hold_at_checkpoint() -> None:
    """From now on, this process holds still once a checkpoint is renamed into place."""
    os.replace = _replace_then_hold  # type: ignore[assignment]


if __name__ == "__main__":
    hold_at_checkpoint()
    from zoo.cli import main

    sys.exit(main(sys.argv[1:]))
