"""The inference pool's measured load, and live streams admitted by it rather than by a fixed count."""
from __future__ import annotations

import threading
import time

from app.engines.pool import InferencePool, StreamSlots


def test_streams_beyond_one_per_worker_are_admitted_only_while_the_workers_keep_up():
    pool = InferencePool(2, 4)
    slots = StreamSlots(16, pool, window=0.2)
    held = threading.Event()
    try:
        assert slots.acquire() and slots.acquire()  # one per worker always
        assert slots.acquire()  # idle workers: room for more
        calls = [pool.submit(held.wait, 30) for _ in range(2)]
        time.sleep(0.3)  # both workers busy for the whole measured window
        assert pool.utilisation(0.2) > 0.9
        assert slots.room() == 0
        assert not slots.acquire()  # a fourth stream would slow the three
        slots.release()
        assert slots.open == 2
        assert not slots.acquire()
        held.set()
        for call in calls:
            call.result(30)
        time.sleep(0.3)  # the window has passed with nothing running
        assert pool.utilisation(0.2) == 0.0
        assert slots.room() == 14
        assert slots.acquire()
    finally:
        held.set()
        pool.shutdown()


def test_a_configured_stream_limit_is_kept_whatever_the_load():
    slots = StreamSlots(2)
    assert slots.acquire() and slots.acquire() and not slots.acquire()
    slots.release()
    assert slots.acquire()


def test_partials_and_other_courtesy_work_do_not_refuse_streams():
    # Partial transcripts only start on a free worker and the next final replaces them: a pool
    # busy with them has room for what streams must do, so they must not count as load.
    pool = InferencePool(2, 4)
    slots = StreamSlots(16, pool, window=0.2)
    held = threading.Event()
    try:
        assert slots.acquire() and slots.acquire()
        assert pool.courtesy_room()
        drafts = [pool.submit_courtesy(held.wait, 30)]
        assert not pool.courtesy_room()  # the other worker stays free for checks and finals
        drafts.append(pool.submit_courtesy(held.wait, 30))
        time.sleep(0.3)  # both workers on courtesy work for the whole measured window
        assert pool.pending == 2
        assert pool.utilisation(0.2) == 0.0
        assert slots.acquire()  # a third stream is admitted
        held.set()
        for draft in drafts:
            draft.result(30)
        assert pool.pending == 0  # counted free before their callers woke
    finally:
        held.set()
        pool.shutdown()


def test_a_burst_of_streams_is_admitted_by_what_each_stream_was_measured_to_need():
    # Eight dictations that start together right after a quieter spell must not all be admitted
    # because the pool was idle at that moment: what one stream needed is remembered.
    pool = InferencePool(2, 4)
    slots = StreamSlots(16, pool, window=0.2, history=3.0, min_held=1.0)
    try:
        assert slots.acquire() and slots.acquire()
        work = [pool.submit(time.sleep, 1.0) for _ in range(2)]  # the two streams keep both workers busy
        for call in work:
            call.result(30)
        slots.release()
        slots.release()
        time.sleep(0.3)  # a pause: nothing runs over the short window
        assert pool.utilisation(0.2) == 0.0
        assert slots.per_stream() > 0.7  # about one worker-second per stream-second
        assert slots.acquire() and slots.acquire()  # one per worker always
        assert slots.room() == 0 and not slots.acquire()  # a third would need more than the workers have
        slots.release()
        slots.release()
    finally:
        pool.shutdown()


def test_a_call_knows_whether_it_is_courtesy_work():
    pool = InferencePool(1, 4)  # one worker: the required call runs on the thread the courtesy call ran on
    try:
        assert pool.submit_courtesy(pool.in_courtesy_call).result(30)
        assert not pool.submit(pool.in_courtesy_call).result(30)
        assert not pool.in_courtesy_call()  # outside the pool
    finally:
        pool.shutdown()
