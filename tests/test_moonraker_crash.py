"""What Moonraker shows and does after a flash went wrong around it: a real Moonraker 0.11.

* Moonraker killed (SIGKILL) while a flash writes: after the restart the job is
  ``interrupted`` with the same recovery text as a failed write, and Klipper,
  which the flash had stopped, is started again (or the job says why not and
  what to do, when another writer holds the writer lock).
* The command line and the component never write at the same time: each is
  refused naming the other.
* Klipper not running: a flash needs no stop, and leaves Klipper as it was.

The machine is the page tests' simulated printer (``octopus_printer``): the
component in simulation mode stops and starts the Klipper stand-in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fixtures_moonraker import REPO, octopus_printer
from moonraker_octoflash.flash.writer_lock import WriterLock, probe, writer_lock_path

pytestmark = pytest.mark.moonraker


@pytest.fixture(scope="module")
def printer(tmp_path_factory, linked_component, moonraker_python):
    p = octopus_printer(str(tmp_path_factory.mktemp("crash")), moonraker_python)
    p.update_manager = False
    p.start()
    p.wait_klippy_ready()
    built = p.result("POST", "/server/octoflash/build", body={"profile": "toolhead"})["job"]
    assert p.wait_job(built["job_id"], 120)["state"] == "done"
    yield p
    p.close()


@pytest.fixture(autouse=True)
def ready(printer):
    """Each test starts with every board running its firmware and Klipper ready,
    whatever the test before left (a board in Katapult, Klipper stopped)."""
    printer.set_scene()
    printer.wait_klippy_ready(60)


def _wait_klipper_connected(printer, timeout=60):
    """Klipper runs and Moonraker talks to it (a board left in Katapult keeps it in startup)."""
    def connected():
        status, payload = printer.get("/server/info")
        return status == 200 and payload["result"]["klippy_connected"]
    printer.wait_for(connected, timeout, "Moonraker connected to Klipper")


def _job(printer, job_id):
    return printer.result("GET", "/server/octoflash/job", args={"job_id": job_id})["job"]


def _standin(printer, what):
    return printer.klipper.call(lambda: getattr(printer.standin, what))


def _flash_until_writing(printer):
    """Start a flash of the toolhead whose write hangs; return its job once it writes."""
    printer.board("toolhead").set_fault("katapult_hang")
    job = printer.result("POST", "/server/octoflash/flash",
                         body={"profile": "toolhead", "build": False})["job"]
    printer.wait_for(lambda: _job(printer, job["job_id"])["stage"] == "write", 60,
                     "the write to start")
    assert _standin(printer, "running") is False          # the flash stopped Klipper
    return job


def _kill_moonraker_and_the_hung_writer(printer):
    printer.kill()                                          # power cut: no clean-up
    # flashtool runs in its own session (the tool runner kills its group on a
    # timeout): the hung double outlives Moonraker and is stopped by hand.
    for entry in printer.machine.tool_invocations("flashtool"):
        try:
            os.kill(entry["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    printer.board("toolhead").set_fault("katapult_hang", False)


def test_a_failed_write_and_an_interrupted_one_carry_the_same_recovery(printer):
    board = printer.board("toolhead")
    board.set_fault("katapult_write_error")
    try:
        failed = printer.result("POST", "/server/octoflash/flash",
                                body={"profile": "toolhead", "build": False})["job"]
        failed = printer.wait_job(failed["job_id"], 90)
    finally:
        board.set_fault("katapult_write_error", False)
    assert failed["state"] == "failed" and failed["recovery"]
    _wait_klipper_connected(printer)          # the board waits in Katapult, Klipper runs

    starts = _standin(printer, "starts")
    job = _flash_until_writing(printer)
    _kill_moonraker_and_the_hung_writer(printer)
    assert _standin(printer, "running") is False           # left stopped by the dead flash
    printer.start()
    # The first requests, as soon as Moonraker answers, wait for the history
    # (read after Moonraker's start): the job is already marked, the list whole.
    first = _job(printer, job["job_id"])
    assert first["state"] == "interrupted", first["state"]
    listed = [j["job_id"] for j in printer.result("GET", "/server/octoflash/jobs")["jobs"]]
    assert job["job_id"] in listed and failed["job_id"] in listed
    _wait_klipper_connected(printer)                        # started again by the component
    assert _standin(printer, "starts") == starts + 1
    record = printer.wait_for(
        lambda: (lambda r: r if "started it again" in (r["error"] or "") else None)(
            _job(printer, job["job_id"])), 30, "the job to say Klipper was started again")
    assert record["state"] == "interrupted"
    assert record["recovery"] == failed["recovery"]
    assert "octoflash started it again when Moonraker restarted" in record["error"]
    assert "Flash of toolhead interrupted" in record["message"]
    assert record["steps"][-1]["state"] == "interrupted"
    assert printer.wait_for(lambda: asyncio_run(probe(writer_lock_path(printer.data_dir))) ==
                            (True, {}), 10, "the writer lock released and cleared")


def test_a_flash_asked_for_as_moonraker_starts_klipper_again_waits_for_it(printer):
    """After a crash, the start-up's check holds the writer lock while it starts
    Klipper again: a flash asked for meanwhile waits for it, and is not told that
    another flash runs."""
    interrupted = _flash_until_writing(printer)
    _kill_moonraker_and_the_hung_writer(printer)
    assert _standin(printer, "running") is False           # left stopped by the dead flash
    printer.start()
    status, payload = printer.post("/server/octoflash/flash",
                                   {"profile": "toolhead", "build": False})
    assert status == 200, payload
    assert "started it again" in _job(printer, interrupted["job_id"])["error"]
    job = printer.wait_job(payload["result"]["job"]["job_id"], 90)
    assert job["state"] == "done", job
    _wait_klipper_connected(printer)


def test_after_a_crash_klipper_is_not_started_under_another_writer(printer):
    _wait_klipper_connected(printer)
    starts = _standin(printer, "starts")
    job = _flash_until_writing(printer)
    _kill_moonraker_and_the_hung_writer(printer)
    # the command line starts a flash meanwhile: it holds the lock (and, finding
    # the record of the dead flash, will start Klipper when it ends)
    lock = WriterLock(writer_lock_path(printer.data_dir), kind="cli", profiles=["octopus"])
    previous = asyncio_run(lock.acquire())
    assert previous["klipper_stopped"] is True and previous["job_id"] == job["job_id"]
    assert "Katapult" in (previous["recovery"] or "")
    asyncio_run(lock.update(klipper_stopped=True))
    fd = lock._fd
    try:
        printer.start()
        record = printer.wait_for(
            lambda: (lambda r: r if "Another flash runs now" in (r["error"] or "") else None)(
                _job(printer, job["job_id"])), 30, "the job to say why Klipper stays stopped")
        assert record["state"] == "interrupted"
        assert f"the octoflash command line (pid {os.getpid()}) flashing 'octopus'" in record["error"]
        assert "sudo systemctl start klipper" in record["error"]
        assert _standin(printer, "running") is False        # never started under the other writer
        assert _standin(printer, "starts") == starts
    finally:
        assert lock._fd == fd
        printer.start_klipper()                              # what the other writer does at its end
        asyncio_run(lock.update(klipper_stopped=False))
        asyncio_run(lock.release())
    _wait_klipper_connected(printer)


def test_the_command_line_and_moonraker_refuse_each_other(printer):
    _wait_klipper_connected(printer)
    starts = _standin(printer, "starts")
    # the command line holds the lock: Moonraker refuses at once, Klipper untouched
    lock = WriterLock(writer_lock_path(printer.data_dir), kind="cli", profiles=["toolhead"])
    asyncio_run(lock.acquire())
    try:
        status, payload = printer.post("/server/octoflash/flash",
                                       {"profile": "toolhead", "build": False})
    finally:
        asyncio_run(lock.release())
    assert status == 409, payload
    message = payload["error"]["message"]
    assert (f"Another flash is running on this machine: the octoflash command line "
            f"(pid {os.getpid()}) flashing 'toolhead'") in message
    assert _standin(printer, "running") is True and _standin(printer, "starts") == starts

    # Moonraker flashes (its write held a third of the way): the command line is
    # refused naming the job
    board = printer.board("toolhead")
    board.set_fault("katapult_pause")
    try:
        job = printer.result("POST", "/server/octoflash/flash",
                             body={"profile": "toolhead", "build": False})["job"]
        printer.wait_for(lambda: _job(printer, job["job_id"])["stage"] == "write", 60,
                         "the write to start")
        conf = os.path.join(printer.data_dir, "config", "moonraker.conf")
        cli = subprocess.run([sys.executable, "-m", "moonraker_octoflash.cli", "--config", conf,
                              "flash", "toolhead", "--yes", "--local"], capture_output=True,
                             text=True,
                             env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert (f"Another flash is running on this machine: job {job['job_id']} in Moonraker"
                in cli.stderr), cli.stderr
        assert "flashing 'toolhead'" in cli.stderr
        assert _standin(printer, "running") is False        # still stopped by Moonraker's flash
        assert _job(printer, job["job_id"])["state"] == "running"
    finally:
        board.set_fault("katapult_pause", False)
    record = printer.wait_job(job["job_id"], 120)
    assert record["state"] == "done", record["error"]
    printer.wait_klippy_ready(60)
    assert _standin(printer, "starts") == starts + 1


def test_klipper_not_running_needs_no_stop_and_stays_as_it_was(printer):
    printer.wait_klippy_ready(60)
    printer.stop_klipper()
    printer.wait_for(lambda: printer.get("/server/info")[1]["result"]["klippy_state"]
                     == "disconnected", 20, "Moonraker to see Klipper gone")
    starts = _standin(printer, "starts")
    try:
        job = printer.result("POST", "/server/octoflash/flash",
                             body={"profile": "toolhead", "build": False})["job"]
        record = printer.wait_job(job["job_id"], 90)
        assert record["state"] == "done", record["error"]
        stop = next(s for s in record["result"]["steps"] if s["kind"] == "stop_klipper")
        start = next(s for s in record["result"]["steps"] if s["kind"] == "start_klipper")
        assert stop["status"] == "skipped" and stop["message"] == "not needed: Klipper was not running"
        assert start["status"] == "skipped"
        assert record["result"]["klipper_stopped"] is False
        assert record["result"]["klipper_restarted"] is None
        assert _standin(printer, "running") is False and _standin(printer, "starts") == starts
    finally:
        printer.start_klipper()
    printer.wait_klippy_ready(60)


def asyncio_run(coro):
    import asyncio
    return asyncio.run(coro)


def test_the_command_line_asks_a_running_moonraker_to_flash(printer):
    _wait_klipper_connected(printer)
    starts = _standin(printer, "starts")
    conf = os.path.join(printer.data_dir, "config", "moonraker.conf")
    cli = subprocess.run([sys.executable, "-m", "moonraker_octoflash.cli", "--config", conf,
                          "flash", "toolhead", "--yes"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=180)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    out = cli.stdout
    assert f"Moonraker runs at http://127.0.0.1:{printer.port}: the flash runs there" in out
    assert "Flash plan for 'toolhead'" in out
    job_id = out.split("[job] toolhead: job ")[1].split()[0]
    assert "[stop_klipper]" in out and "[write_katapult]" in out and "[start_klipper]" in out
    assert out.rstrip().splitlines()[-1].startswith("toolhead: done: Flash of toolhead done")
    job = _job(printer, job_id)                  # one history: the job is Moonraker's
    assert job["state"] == "done" and job["kind"] == "flash"
    printer.wait_klippy_ready(60)
    assert _standin(printer, "starts") == starts + 1
