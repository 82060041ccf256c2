"""flows.serve_model.FreshRead, what `serve.consistent` rests on: every caller gets the result of a read
that began after it called, and callers that arrive together share reads."""

from __future__ import annotations

import threading
import time

import pytest

from flows.serve_model import FreshRead


def test_each_caller_gets_a_read_that_began_after_it_called_and_a_burst_shares_reads():
    begun: list[float] = []

    def read():
        t = time.monotonic()
        begun.append(t)
        time.sleep(0.05)
        return t

    fresh = FreshRead(read)
    got: list[tuple[float, float]] = []  # (call time, start of the read it got)
    lock = threading.Lock()

    def caller():
        t = time.monotonic()
        value = fresh()
        with lock:
            got.append((t, value))

    threads = [threading.Thread(target=caller) for _ in range(40)]
    for th in threads:
        th.start()
        time.sleep(0.002)
    for th in threads:
        th.join()
    assert len(got) == 40
    assert all(read_start >= called for called, read_start in got)
    # 40 callers over ~0.1 s with 50 ms reads: a few shared reads, not one each
    assert len(begun) < 10, len(begun)
    assert len(begun) == len(set(begun))


def test_a_failed_read_is_raised_to_its_callers_and_the_next_call_reads_again():
    calls = []

    def read():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("registry down")
        return "v2"

    fresh = FreshRead(read)
    with pytest.raises(RuntimeError, match="registry down"):
        fresh()
    assert fresh() == "v2" and len(calls) == 2
