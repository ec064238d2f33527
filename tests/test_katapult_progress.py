"""flashtool.py's [####…] bars as percentages: the last marks may come with the line's end."""
from __future__ import annotations

from typing import List

from moonraker_octoflash.events import Progress
from moonraker_octoflash.flash.katapult import _HashProgress


def test_marks_that_arrive_with_the_line_end_still_reach_100():
    seen: List[Progress] = []
    bars = _HashProgress(seen.append)
    bars.feed("Flashing '/x/klipper.bin'...")
    bars.feed_partial("[")
    bars.feed_partial("#" * 20)                  # drawn: 40 %
    bars.feed("[" + "#" * 50 + "]")              # the rest came with the newline
    assert [p.percent for p in seen] == [40.0, 100.0]
    assert seen[-1].stage == "write" and seen[-1].message == "write 100%"
    bars.feed("Verifying (block count = 557)...")
    bars.feed("[" + "#" * 50 + "]")              # all at once: one event at 100
    assert seen[-1].stage == "verify" and seen[-1].percent == 100.0


def test_a_bar_drawn_to_its_end_is_not_counted_twice():
    seen: List[Progress] = []
    bars = _HashProgress(seen.append)
    bars.feed("Flashing '/x/klipper.bin'...")
    for _ in range(50):
        bars.feed_partial("#")
    bars.feed("[" + "#" * 50 + "]")
    assert [p.percent for p in seen][-1] == 100.0
    assert len(seen) == 50
