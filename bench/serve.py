"""The line protocol between `beatlab bench` and its Python peers.

A peer sets up (builds its model, warms up, ...), prints one JSON object describing itself
(the hello), then waits on standard input. Each `round` line makes it run one timed round and
print one JSON object with at least `wall` (seconds), `cpu` (process CPU seconds, all threads)
and `work` (items done: windows, points, records). `done` or the end of input ends it.

The Rust side alternates its own rounds with the peer's, so both see the same background load
on a shared machine; while one side runs, the other waits idle on its pipe.
"""

import json
import sys
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def timed(work_fn):
    """Runs `work_fn()` (which returns the items done and a dict of extras) and measures it."""
    wall, cpu = time.perf_counter(), time.process_time()
    work, extra = work_fn()
    result = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "work": work}
    result.update(extra)
    return result


def serve(hello, round_fn):
    """Prints `hello`, then `round_fn()` per `round` line. `round_fn` returns the dict of
    `timed`, having done any untimed set-up of the round (a fresh store, say) first."""
    emit(hello)
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            emit(round_fn())
        elif command in ("done", ""):
            break
        else:
            raise SystemExit(f"unknown command {command!r} (expected round or done)")
