"""sah.infra.threads.map_in_threads: independent chunks of a call on a few Python threads."""

import multiprocessing
import threading

import pytest
import torch

from sah.infra.threads import map_in_threads, torch_threads


def test_results_come_in_order_from_more_than_one_thread():
    seen = set()

    def work(i):
        seen.add(threading.current_thread().name)
        return (torch.full((200, 200), float(i)) @ torch.eye(200)).sum().item()

    with torch_threads(2, at_most_current=False):
        got = map_in_threads(work, list(range(12)), "cpu")
    assert got == [i * 200 * 200 for i in range(12)]
    assert all(name.startswith("sah-chunk") for name in seen) and len(seen) == 2


def test_one_torch_thread_or_another_device_runs_the_plain_loop():
    def name(_):
        return threading.current_thread().name

    here = threading.current_thread().name
    with torch_threads(1):
        assert map_in_threads(name, [0, 1, 2], "cpu") == [here] * 3
    with torch_threads(2, at_most_current=False):
        assert map_in_threads(name, [0, 1, 2], torch.device("meta")) == [here] * 3
        assert map_in_threads(name, [0], "cpu") == [here]


def test_an_error_in_a_chunk_is_raised_to_the_caller():
    def work(i):
        if i == 3:
            raise ValueError("chunk 3 is bad")
        return i

    with torch_threads(2, at_most_current=False), pytest.raises(ValueError, match="chunk 3"):
        map_in_threads(work, list(range(6)), "cpu")


def test_the_callers_grad_and_inference_modes_hold_in_every_chunk():
    def modes(_):
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch_threads(2, at_most_current=False):
        assert set(map_in_threads(modes, list(range(6)), "cpu")) == {(True, False)}
        with torch.no_grad():
            assert set(map_in_threads(modes, list(range(6)), "cpu")) == {(False, False)}
        with torch.inference_mode():
            assert set(map_in_threads(modes, list(range(6)), "cpu")) == {(False, True)}


def test_a_chunk_that_maps_again_runs_its_items_in_its_own_thread():
    def inner(_):
        return threading.current_thread().name

    def outer(_):
        names = map_in_threads(inner, [0, 1, 2], "cpu")
        return len(set(names)) == 1 and names[0] == threading.current_thread().name

    with torch_threads(2, at_most_current=False):
        assert map_in_threads(outer, list(range(4)), "cpu") == [True] * 4


def _child(queue):
    queue.put(map_in_threads(lambda i: i * i, list(range(5)), "cpu"))


def test_a_forked_child_gets_threads_of_its_own():
    with torch_threads(2, at_most_current=False):
        map_in_threads(lambda i: i, list(range(4)), "cpu")  # the parent's pool exists
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child, args=(queue,))
        child.start()
        child.join(30)
        alive = child.is_alive()
        if alive:
            child.kill()
    assert not alive, "the child hung on the parent's pool"
    assert queue.get(timeout=5) == [0, 1, 4, 9, 16]
