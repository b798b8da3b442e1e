"""`call_mode` is per context: threads and asyncio tasks on one thread never see each other's mode.

Modules run on ``(B, C, T)`` clips in "forward" mode and ``(B, C)`` frames in "forward_step" mode.
"""

from __future__ import annotations

import asyncio
import threading

import torch

import cofunc.nn as cn
from cofunc.nn._call_mode import current_call_mode


def test_asyncio_tasks_do_not_share_a_mode():
    conv = cn.Conv1d(2, 2, 3, padding=1)
    seen = {}

    async def stepping(entered, release):
        with cn.call_mode("forward_step"):
            entered.set()
            await release.wait()  # the other task runs while this one is inside the block
            seen["stepping"] = current_call_mode()

    async def clip(entered, release):
        await entered.wait()
        seen["clip"] = current_call_mode()
        seen["clip_output"] = conv(torch.randn(1, 2, 5))  # a clip: must run "forward"
        release.set()

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()  # made inside the loop that uses them
        await asyncio.gather(stepping(entered, release), clip(entered, release))

    asyncio.run(main())
    assert seen["stepping"] == "forward_step"
    assert seen["clip"] is None
    assert seen["clip_output"].shape == (1, 2, 5)


def test_a_task_started_inside_the_block_inherits_the_mode_and_cannot_change_ours():
    async def child():
        assert current_call_mode() == "forward_step"
        with cn.call_mode("forward"):
            await asyncio.sleep(0)
            return current_call_mode()

    async def main():
        with cn.call_mode("forward_step"):
            task = asyncio.ensure_future(child())
            await asyncio.sleep(0)  # the child is now inside its own block
            assert current_call_mode() == "forward_step"
            assert await task == "forward"
            return current_call_mode()

    assert asyncio.run(main()) == "forward_step"
    assert current_call_mode() is None


def test_threads_do_not_share_a_mode():
    inside, release, seen = threading.Event(), threading.Event(), {}

    def worker():
        with cn.call_mode("forward_steps"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    seen["main"] = current_call_mode()
    release.set()
    thread.join()
    assert seen["main"] is None


def test_nesting_restores_the_outer_mode_and_an_error_unwinds():
    with cn.call_mode("forward_step"):
        try:
            with cn.call_mode(1):
                assert current_call_mode() == "forward_steps"
                raise KeyError("inner")
        except KeyError:
            pass
        assert current_call_mode() == "forward_step"
    assert current_call_mode() is None
