"""One writer at a time across processes: the writer lock in the data folder.

The component and the command line take the same ``fcntl.flock`` on
``<data_path>/octoflash-flash.lock`` from before Klipper is stopped until it
was started again.  The tests use real second processes: a Python that
takes the lock, and the ``octoflash`` command line flashing the same
simulated machine while this process flashes.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fixtures_flash import cli_printer, octopus_profile, write_artifact
from fixtures_moonraker import wait_until
from moonraker_octoflash.flash.executor import execute_plan, execute_plans
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.flash.writer_lock import WriterBusy, WriterLock, probe, writer_lock_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)

# A second process that takes the lock as the command line would, says what
# happened, and then waits to be told to go (or is killed).
HOLDER = textwrap.dedent("""\
    import asyncio, sys
    from moonraker_octoflash.flash.writer_lock import WriterBusy, WriterLock

    async def main(path, stopped):
        lock = WriterLock(path, kind="cli", profiles=["toolhead"])
        try:
            await lock.acquire()
        except WriterBusy as exc:
            print("BUSY " + str(exc), flush=True)
            return
        await lock.update(klipper_stopped=stopped == "stopped")
        print("HELD", flush=True)
        sys.stdin.readline()
        await lock.release()
        print("RELEASED", flush=True)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """)


def _holder(path: str, stopped: str = "running") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, path, stopped], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    path = writer_lock_path(str(tmp_path))
    lock = WriterLock(path, kind="moonraker", job_id="20261130-210000-ab12", profiles=["octopus"])
    await lock.acquire()
    other = _holder(path)
    line = await asyncio.to_thread(other.stdout.readline)
    await asyncio.to_thread(other.wait, 30)
    assert line.startswith("BUSY Another flash is running on this machine: job "
                           f"20261130-210000-ab12 in Moonraker (pid {os.getpid()}) flashing "
                           "'octopus' since "), line
    assert "nothing was done" in line
    await lock.release()
    assert await probe(path) == (True, {})        # released cleanly: the record is gone
    # now the other process gets it, and this one is refused naming it
    other = _holder(path)
    assert (await asyncio.to_thread(other.stdout.readline)).strip() == "HELD"
    free, record = await probe(path)
    assert not free and record["kind"] == "cli" and record["pid"] == other.pid
    with pytest.raises(WriterBusy) as refused:
        await WriterLock(path, kind="moonraker").acquire()
    assert f"the octoflash command line (pid {other.pid}) flashing 'toolhead'" in str(refused.value)
    other.stdin.write("\n")
    other.stdin.flush()
    assert (await asyncio.to_thread(other.stdout.readline)).strip() == "RELEASED"
    await asyncio.to_thread(other.wait, 30)


async def test_a_writer_that_died_does_not_block_and_its_record_is_handed_on(tmp_path):
    path = writer_lock_path(str(tmp_path))
    other = _holder(path, "stopped")                # it stopped Klipper, then is killed
    assert (await asyncio.to_thread(other.stdout.readline)).strip() == "HELD"
    other.send_signal(signal.SIGKILL)
    await asyncio.to_thread(other.wait, 30)
    lock = WriterLock(path, kind="moonraker")
    previous = await lock.acquire()                 # the kernel dropped the dead writer's lock
    assert previous["pid"] == other.pid and previous["klipper_stopped"] is True
    await lock.release()


# --- two real writers on one simulated machine ----------------------------------------
async def test_the_command_line_is_refused_while_another_process_flashes(rig, artifact_dir,
                                                                        tmp_path):
    printer = cli_printer(tmp_path, rig.machine)
    conf, data, octo = printer["conf"], printer["data"], printer["octo"]
    profile = octopus_profile(canbus_uuid=octo.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    ctx = rig.context(writer_lock=WriterLock(writer_lock_path(data), kind="moonraker",
                                             job_id="20261130-211500-beef",
                                             profiles=["octopus"]))
    octo.set_fault("katapult_pause")          # the first writer's write waits part way
    first = asyncio.create_task(execute_plan(plan, ctx))
    await wait_until(lambda: any((e.percent or 0) > 0 for e in rig.events), 60,
                     what="the first writer's write under way")
    assert rig.machine.klipper_running is False
    tools_before = len(rig.machine.tool_invocations())

    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moonraker_octoflash.cli", "--config", conf, "flash", "toolhead",
        "--yes", env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 1, (out, err)
    assert (f"Another flash is running on this machine: job 20261130-211500-beef in Moonraker "
            f"(pid {os.getpid()}) flashing 'octopus'") in err.decode()
    # the command line touched nothing: Klipper still stopped, no tool started
    assert rig.machine.klipper_running is False
    assert len(rig.machine.tool_invocations()) == tools_before
    assert not first.done()

    octo.set_fault("katapult_pause", False)
    result = await asyncio.wait_for(first, 120)
    assert result.ok, result.summary()
    assert rig.machine.klipper_running is True and rig.service.calls == ["stop", "start"]
    assert await probe(writer_lock_path(data)) == (True, {})

    # and with the first writer gone, the command line flashes
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moonraker_octoflash.cli", "--config", conf, "flash", "toolhead",
        "--yes", "--json", env=ENV, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    results = json.loads(out)["results"]
    assert cli.returncode == 0, (err, [r["message"] for r in results])
    assert rig.machine.klipper_running is True


async def test_a_second_writer_in_the_flash_itself_is_refused_before_klipper_is_touched(
        rig, artifact_dir, tmp_path):
    """The race the early check cannot close: the refusal inside the executor."""
    octo = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                 firmware={"version": "v0.12.0", "bridge": True})
    profile = octopus_profile(canbus_uuid=octo.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    path = writer_lock_path(str(tmp_path))
    other = _holder(path)
    assert (await asyncio.to_thread(other.stdout.readline)).strip() == "HELD"
    try:
        ctx = rig.context(writer_lock=WriterLock(path, kind="moonraker", job_id="j2"))
        result = await execute_plan(plan, ctx)
        assert result.state == "refused" and result.check == "writer_lock"
        assert f"the octoflash command line (pid {other.pid}) flashing 'toolhead'" in result.message
        assert not result.written and result.klipper_restarted is None
        results = await execute_plans([plan], rig.context(writer_lock=WriterLock(path, kind="cli")))
        assert [r.state for r in results] == ["refused"]
        assert rig.service.calls == [] and rig.machine.tool_invocations() == []
        assert rig.machine.klipper_running is True
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        await asyncio.to_thread(other.wait, 30)


async def test_klipper_left_stopped_by_a_dead_writer_is_started_by_the_next(rig, artifact_dir,
                                                                           tmp_path):
    octo = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                 firmware={"version": "v0.12.0", "bridge": True})
    path = writer_lock_path(str(tmp_path))
    other = _holder(path, "stopped")
    assert (await asyncio.to_thread(other.stdout.readline)).strip() == "HELD"
    rig.machine.set_klipper_running(False)          # it had stopped Klipper, then died
    other.send_signal(signal.SIGKILL)
    await asyncio.to_thread(other.wait, 30)
    profile = octopus_profile(canbus_uuid=octo.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context(writer_lock=WriterLock(path, kind="cli")))
    assert result.ok, result.summary()
    stop = result.steps[0]
    assert stop.kind == "stop_klipper" and stop.status == "skipped"
    assert "left stopped by an interrupted flash" in stop.message and str(other.pid) in stop.message
    assert rig.service.calls == ["start"] and rig.machine.klipper_running is True
    assert result.klipper_restarted is True
    assert await probe(path) == (True, {})
