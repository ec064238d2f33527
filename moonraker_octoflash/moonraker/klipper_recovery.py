"""After Moonraker died during a flash: Klipper started again, the job told what happened.

The writer lock's record (``flash/writer_lock.py``) outlives the process
that held the lock: it says whether that flash had stopped Klipper and how
to recover the board it was writing.  When Moonraker starts, ``after_crash``
takes the lock (so Klipper is never started under another writer's feet),
starts Klipper if the dead flash had left it stopped, and gives the
interrupted job the recovery text and what became of Klipper — or says why
Klipper was not started and what to do.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional, Tuple

from ..errors import OctoflashError
from ..flash.writer_lock import WriterBusy, WriterLock, describe_holder, writer_lock_path

log = logging.getLogger("octoflash")

START_IT = "Start it yourself: sudo systemctl start klipper"


async def after_crash(component: Any, interrupted: List[str]) -> None:
    """``interrupted``: the flash jobs the runner found running when it loaded the history."""
    runner = component.runner
    lock = WriterLock(writer_lock_path(component.data_path), kind="moonraker")
    try:
        record = await lock.acquire()
    except WriterBusy as exc:
        for job_id in interrupted:
            await runner.explain_interrupted(job_id, klipper=(
                f"Another flash runs now ({describe_holder(exc.holder)}); it starts Klipper when "
                "it ends if this flash had left it stopped. If Klipper stays stopped afterwards, "
                "start it: sudo systemctl start klipper"))
        return
    try:
        own_job: Optional[str] = record.get("job_id") if record.get("kind") == "moonraker" \
            else None
        note = None
        if record.get("klipper_stopped"):
            running, note = await _start_klipper(component, record)
            await lock.update(klipper_stopped=not running)
            if not running:
                component.warn(f"octoflash: {note}", "klipper_left_stopped")
            component.console.say(("// " if running else "!! ") + f"octoflash: {note}")
        if own_job:
            await runner.explain_interrupted(own_job, recovery=record.get("recovery"),
                                             klipper=note)
    except Exception:
        log.exception("octoflash: could not check what an interrupted flash left behind")
    finally:
        await lock.release()


async def _start_klipper(component: Any, record: Dict[str, Any]) -> Tuple[bool, str]:
    """(Klipper runs now, what to tell the user)."""
    who = f"job {record['job_id']}" if record.get("job_id") else \
        f"{record.get('kind') or 'a process'} pid {record.get('pid')}"
    service, klippy = component.service, component.klipper.klippy
    # Moonraker connects to a Klipper that runs within a moment of starting.
    await service._wait(lambda: klippy.is_connected(), 5.0)
    if klippy.is_connected():
        return True, f"Klipper had been stopped for a flash ({who}) and runs again."
    problem = service.control_problem()
    if problem:
        return False, (f"Klipper was stopped for a flash ({who}) that ended with Moonraker, and "
                       f"is still stopped: {problem.split(', and')[0]}. {START_IT}")
    try:
        await asyncio.wait_for(service.start(), component.settings.reconnect_timeout + 15)
    except (OctoflashError, asyncio.TimeoutError) as exc:
        return False, (f"Klipper was stopped for a flash ({who}) that ended with Moonraker, and "
                       f"could not be started again: {exc or 'no answer'}. {START_IT}")
    return True, (f"Klipper had been stopped for this flash ({who}); octoflash started it again "
                  "when Moonraker restarted.")
