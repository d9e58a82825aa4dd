"""Process exit for programs that used a Temporal client.

The Temporal SDK's Rust bridge keeps threads that can touch the GIL while CPython
finalises, which aborts the process (SIGABRT/SIGSEGV, "PyGILState_Release: thread state
... must be current") after the program's work is done: temporalio/sdk-python#300.
A CLI whose exit status is its answer cannot afford that, so once everything is flushed
we leave without interpreter teardown.
"""

from __future__ import annotations

import os
import sys


def exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed pipe: nothing left to tell anyone
            os.write(2, f"exit: could not flush {getattr(stream, 'name', 'stream')}: {exc}\n".encode())
    os._exit(code)
