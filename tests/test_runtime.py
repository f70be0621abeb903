"""The runtime thread: interactive work steps first, a failing worker fails alone."""

from __future__ import annotations

import threading
import time

from engine.runtime import Runtime


class Recorder:
    """A worker with a fixed amount of work that logs when it steps (a test double of a model)."""

    def __init__(self, name: str, interactive: bool, steps: int, log: list, boom: bool = False):
        self.name, self.interactive, self.left, self.log, self.boom = (
            name,
            interactive,
            steps,
            log,
            boom,
        )
        self.failed: Exception | None = None
        self.done = threading.Event()

    def take_inbox(self) -> None:
        pass

    def has_work(self) -> bool:
        return self.left > 0

    def step(self) -> None:
        self.log.append(self.name)
        self.left -= 1
        if self.left == 0:
            self.done.set()
        if self.boom:
            raise RuntimeError("boom")

    def fail(self, error: Exception) -> None:
        self.failed = error
        self.left = 0
        self.done.set()


def test_interactive_workers_step_first_every_turn():
    log: list[str] = []
    runtime = Runtime(interactive_steps=1)
    chat = Recorder("chat", False, 0, log)
    asr = Recorder("asr", True, 0, log)
    runtime.add(chat)  # added first, still stepped second
    runtime.add(asr)
    chat.left = asr.left = 5  # work arrives for both at once
    runtime.notify()
    assert chat.done.wait(5) and asr.done.wait(5)
    runtime.shutdown()
    # each turn: speech, then chat; speech never waits more than one chat step
    assert log[:2] == ["asr", "chat"] and log == ["asr", "chat"] * 5


def test_other_workers_step_every_fourth_turn_while_speech_has_work():
    log: list[str] = []
    runtime = Runtime()  # INTERACTIVE_STEPS: 4
    chat = Recorder("chat", False, 0, log)
    asr = Recorder("asr", True, 0, log)
    runtime.add(chat)
    runtime.add(asr)
    chat.left, asr.left = 5, 9
    runtime.notify()
    assert chat.done.wait(5) and asr.done.wait(5)
    runtime.shutdown()
    # four speech steps per chat step; once speech is done, chat every turn
    assert log == ["asr"] * 4 + ["chat"] + ["asr"] * 4 + ["chat"] + ["asr"] + ["chat"] * 3


def test_a_failing_worker_fails_alone():
    log: list[str] = []
    runtime = Runtime()
    bad = Recorder("bad", True, 3, log, boom=True)
    good = Recorder("good", False, 4, log)
    runtime.add(bad)
    runtime.add(good)
    runtime.notify()
    assert good.done.wait(5) and bad.done.wait(5)
    time.sleep(0.05)
    runtime.shutdown()
    assert isinstance(bad.failed, RuntimeError) and good.left == 0 and log.count("good") == 4
