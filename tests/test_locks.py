from __future__ import annotations

import threading

from immutable_logging.locks import owned_rlock


def test_owned_rlock_tells_which_thread_holds_it() -> None:
    lock = owned_rlock()
    seen: list[bool] = []
    assert not lock._is_owned()
    with lock:
        with lock:  # re-entrant
            assert lock._is_owned()
        thread = threading.Thread(target=lambda: seen.append(lock._is_owned()))
        thread.start()
        thread.join()
        assert lock._is_owned()
    assert seen == [False] and not lock._is_owned()
    assert lock.acquire(timeout=0.1)
    lock.release()
