"""The job runner: build and flash jobs, one flash at a time, events, history.

Every request to build or flash (API, macro, command line, update manager)
becomes a ``Job`` run by ``JobRunner`` as its own asyncio task, so a job runs
to its end even if the client that asked for it goes away.  Rules:

* one flash at a time: a second flash request is refused (ConflictError)
  naming the job that holds the flash slot;
* a profile is held by at most one job: a build or flash of a profile that
  another job is working on is refused;
* builds run one after the other (a second build waits, "queued"); builds may
  run while printing, flashes may not (the adapter's ``preflight`` refuses);
* "update all" first builds every stale profile, all together
  (``builder.build_many``: one make jobserver), and only then flashes the
  boards one by one, so Klipper is not stopped while firmware is compiling;
* a flash can be cancelled until the board is asked into its bootloader (DFU:
  until the write); from then until the job ends cancel is refused
  (``NO_CANCEL_STAGES``), since it would leave the board waiting in Katapult;
  across processes, ``CoreFlashPipeline`` holds the machine-wide writer lock
  (``flash/writer_lock.py``) named after the job;
* every step, percentage and output line becomes a ``JobUpdate`` for the
  adapters (notifications, console, terminal);
* the history (profile, artifact, plan, each step's result, duration, log)
  goes through a small ``JobStorage`` (in memory here, Moonraker's database in
  the component), bounded to ``history_size`` jobs; a job that was running
  when the process stopped is loaded back as "interrupted".

The core is reached through two narrow seams so that the runner does not
care where its parts come from: ``builder.build(profile, force, on_progress)``
(``build.Builder``) and a ``FlashPipeline`` (``prepare`` = discovery + plan,
``execute`` = the executor); ``flash.pipeline.CoreFlashPipeline`` wires the
real modules.  The records themselves live in ``job_records``.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, List,
                    Optional, Sequence)

from .errors import (CheckFailed, ConflictError, NotFoundError,
                     OctoflashError, ValidationError, clip_text)
from .discovery.snapshot import profile_is_usb_can_bridge
from .events import Progress
# The runner's records; other modules may read them from here too.
from .job_records import (  # noqa: F401
    QUEUED, RUNNING, DONE, FAILED, CANCELLED, REFUSED, INTERRUPTED, FINAL_STATES, ACTIVE_STATES,
    UNSAFE_STAGES, BOOTLOADER_STAGES, AFTER_WRITE_STAGES, NO_CANCEL_STAGES, CURRENT_JOB_ID,
    DEFAULT_HISTORY_SIZE, DEFAULT_LOG_LINES, MAX_LINE_CHARS, MAX_MESSAGE_CHARS,
    DEFAULT_HISTORY_BYTES, JobStep, Job, JobUpdate, JobListener, JobStorage, MemoryJobStorage,
    _record_size)

if TYPE_CHECKING:
    from .profiles import Profile

log = logging.getLogger("octoflash.jobs")

def _method_write_steps() -> frozenset:
    """Every flash method's write steps (the registry is imported at first use)."""
    from .flash.methods import write_kinds
    return write_kinds()



class FlashPipeline:
    """The two calls a flash job makes into the core."""

    async def prepare(self, profile: Profile, artifact: Any,
                      options: Dict[str, Any]) -> Any:
        """Find the board and return the plan (an object with ``to_json()``)."""
        raise NotImplementedError

    async def execute(self, plan: Any, on_progress: Callable[[Progress], None]) -> Dict[str, Any]:
        """Carry the plan out; return what to keep as the job's result."""
        raise NotImplementedError

    def needs_klipper_stopped(self, plan: Any) -> bool:
        if isinstance(plan, dict):
            return bool(plan.get("needs_klipper_stop", True))
        return bool(getattr(plan, "needs_klipper_stop", True))



Preflight = Callable[["Profile", Optional[Any]], Awaitable[None]]
ArtifactLookup = Callable[["Profile", str], Any]


def _new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + secrets.token_hex(2)


def update_order(profiles: Sequence[Profile]) -> List[Profile]:
    """CAN nodes first, then USB boards, the USB-CAN bridge last (it carries the bus)."""
    def key(p: Profile) -> int:
        if profile_is_usb_can_bridge(p):
            return 2
        return 0 if p.connection == "can" else 1
    return sorted(profiles, key=key)


class JobRunner:
    """Runs build and flash jobs; see the module text for the rules."""

    def __init__(self, builder: Any, *,
                 pipeline: Optional[FlashPipeline] = None,
                 storage: Optional[JobStorage] = None,
                 preflight: Optional[Preflight] = None,
                 find_artifact: Optional[ArtifactLookup] = None,
                 history_size: int = DEFAULT_HISTORY_SIZE,
                 log_lines: int = DEFAULT_LOG_LINES,
                 history_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        self.builder = builder
        self.pipeline = pipeline
        self.storage = storage or MemoryJobStorage()
        self.preflight = preflight
        self.find_artifact = find_artifact
        self.history_size = max(1, history_size)
        self.log_lines = max(10, log_lines)
        self.history_bytes = max(64 * 1024, history_bytes)
        self._sizes: Dict[str, int] = {}          # id -> stored size of a finished job
        self._jobs: Dict[str, Job] = {}           # id -> job, oldest first
        self._tasks: Dict[str, asyncio.Task] = {}
        self._listeners: List[JobListener] = []
        self._flash_job: Optional[Job] = None
        self._build_lock = asyncio.Lock()
        self._closing = False
        # the job records on disk (_store_soon): one write per job at a time
        self._writers: Dict[str, asyncio.Future] = {}
        self._dirty: set = set()            # jobs whose record changed since its last write
        self.interrupted_on_load: List[str] = []  # jobs load() found running: the process had died

    # --- listeners and history ------------------------------------------

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: JobListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def load(self) -> List[Job]:
        """Read the history; jobs that were running when the process ended become interrupted."""
        records = await self.storage.load_all()
        loaded: List[Job] = []
        for record in records:
            try:
                job = Job.from_json(record)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("octoflash: dropping an unreadable job record: %s", exc)
                continue
            # Records from before the size limits may carry huge texts.
            if job.error:
                job.error = clip_text(job.error, MAX_MESSAGE_CHARS)
            job.log = [clip_text(str(line), MAX_LINE_CHARS) for line in job.log[-self.log_lines:]]
            if job.state in ACTIVE_STATES:
                self.interrupted_on_load.append(job.id)
                job.state = INTERRUPTED
                job.finished = job.finished or time.time()
                job.error = ("Moonraker (or octoflash) stopped while this job was running; "
                             "check the board and run the job again")
                for step in job.steps:
                    if step.state == RUNNING:
                        step.state = INTERRUPTED
                        step.finished = job.finished
                await self._save(job)
            else:
                self._sizes[job.id] = _record_size(record)
            loaded.append(job)
        loaded.sort(key=lambda j: (j.created, j.id))
        for job in loaded:
            self._jobs.setdefault(job.id, job)
        await self._prune()
        return loaded

    async def explain_interrupted(self, job_id: str, *, recovery: Optional[str] = None,
                                  klipper: Optional[str] = None) -> Optional[Job]:
        """Add what a dead writer left behind to its interrupted job: recovery and Klipper's fate."""
        job = self._jobs.get(job_id)
        if job is None or job.state != INTERRUPTED:
            return None
        if recovery and not job.recovery:
            job.recovery = recovery
        if klipper and klipper not in (job.error or ""):
            job.error = f"{(job.error or 'Interrupted').rstrip('.')}. {klipper}"
            job.result["klipper"] = klipper
        job.message = self._final_message(job)
        await self._save(job)
        self._emit(job, "state", job.message)
        return job

    def jobs(self, profile: Optional[str] = None, limit: Optional[int] = None) -> List[Job]:
        """Newest first."""
        found = [j for j in reversed(list(self._jobs.values()))
                 if profile is None or j.profile == profile]
        return found[:limit] if limit else found

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"No job with id '{job_id}'; list jobs with "
                                "GET /server/octoflash/jobs") from None

    def active_jobs(self) -> List[Job]:
        return [j for j in self._jobs.values() if j.active]

    @property
    def flash_job(self) -> Optional[Job]:
        return self._flash_job if self._flash_job and self._flash_job.active else None

    def job_holding(self, profile_name: str) -> Optional[Job]:
        for job in self._jobs.values():
            if job.active and (job.profile == profile_name
                               or profile_name in job.options.get("profiles", [])):
                return job
        return None

    # --- starting jobs -----------------------------------------------------

    async def start_build(self, profile: Profile, *, force: bool = False,
                          origin: str = "api") -> Job:
        self._check_open()
        self._check_profile_free(profile.name)
        job = self._new_job("build", profile.name, {"force": bool(force)}, origin)
        await self._launch(job, self._run_build(job, profile, force))
        return job

    async def start_flash(self, profile: Profile, *, build: bool = True,
                          force: bool = False, method: Optional[str] = None,
                          artifact_id: Optional[str] = None,
                          origin: str = "api") -> Job:
        self._check_open()
        self._check_flash_free()
        self._check_profile_free(profile.name)
        if self.pipeline is None:
            raise OctoflashError("Flashing is not available here (no flash pipeline configured)")
        if artifact_id and self.find_artifact is None:
            raise ValidationError("This runner cannot look up earlier builds by id")
        if self.preflight is not None:
            await self.preflight(profile, None)
        # preflight awaited: check again, another request may have won meanwhile
        self._check_flash_free()
        self._check_profile_free(profile.name)
        options = {"build": bool(build), "force": bool(force), "method": method,
                   "artifact_id": artifact_id}
        job = self._new_job("flash", profile.name, options, origin)
        self._flash_job = job
        await self._launch(job, self._run_flash(job, profile))
        return job

    async def start_update_all(self, profiles: Sequence[Profile], *,
                               origin: str = "api") -> Job:
        """Build and flash several profiles in one job, the USB-CAN bridge last."""
        self._check_open()
        if not profiles:
            raise ValidationError("No profiles to update: mark profiles with "
                                  "'auto_update: True' to include them")
        self._check_flash_free()
        for p in profiles:
            self._check_profile_free(p.name)
        if self.pipeline is None:
            raise OctoflashError("Flashing is not available here (no flash pipeline configured)")
        ordered = update_order(profiles)
        if self.preflight is not None:
            for p in ordered:
                await self.preflight(p, None)
        self._check_flash_free()
        job = self._new_job("update_all", "", {"profiles": [p.name for p in ordered]}, origin)
        self._flash_job = job
        await self._launch(job, self._run_update_all(job, ordered))
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.active:
            raise ConflictError(f"Job {job_id} has already ended ({job.state})")
        current = self._current_flash_stage(job)
        if current in UNSAFE_STAGES or current in _method_write_steps():
            raise ConflictError(
                f"Job {job_id} is writing the board ({current}); stopping now could leave "
                "it without firmware. It will finish on its own in a moment.")
        if current in BOOTLOADER_STAGES:
            raise ConflictError(
                f"Job {job_id} has asked the board into its bootloader ({current}); stopping "
                "now would leave it waiting there, not running Klipper. The job goes on to the "
                "write and ends on its own (every step has a time limit).")
        if current in AFTER_WRITE_STAGES:
            raise ConflictError(
                f"Job {job_id} has written the board and is finishing ({current}: the board "
                "coming back, Klipper starting); it ends on its own in a moment.")
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 30)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        return job

    async def wait(self, job_id: str, timeout: Optional[float] = None) -> Job:
        job = self.get(job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return job

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting jobs; cancel running ones and record them as interrupted."""
        self._closing = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for job in self._jobs.values():
            if job.active:
                job.state = INTERRUPTED
                job.finished = time.time()
                job.error = "Moonraker stopped while this job was running"
                self._store_soon(job)
        writers = list(self._writers.values())
        if writers:         # every record as it is now, before the loop ends
            await asyncio.wait(writers, timeout=timeout)

    # --- checks ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise ConflictError("Shutting down; no new jobs are started")

    def _check_flash_free(self) -> None:
        holder = self.flash_job
        if holder is not None:
            what = f"flashing '{holder.profile}'" if holder.profile else \
                f"updating {', '.join(holder.options.get('profiles', []))}"
            raise ConflictError(
                f"Another flash is running (job {holder.id}, {what}, {holder.stage or 'starting'}); "
                "only one board is flashed at a time. Try again when it has finished.")

    def _check_profile_free(self, name: str) -> None:
        holder = self.job_holding(name)
        if holder is not None:
            raise ConflictError(
                f"Profile '{name}' is in use by job {holder.id} ({holder.kind}, "
                f"{holder.stage or holder.state}); try again when it has finished.")

    def _current_flash_stage(self, job: Job) -> str:
        if job.kind == "update_all":
            for child_id in job.children:
                child = self._jobs.get(child_id)
                if child is not None and child.active:
                    return child.stage
        return job.stage

    # --- running -----------------------------------------------------------

    def _new_job(self, kind: str, profile: str, options: Dict[str, Any], origin: str,
                 parent: Optional[str] = None) -> Job:
        job_id = _new_job_id()
        while job_id in self._jobs:
            job_id = _new_job_id()
        job = Job(id=job_id, kind=kind, profile=profile, options=options, origin=origin,
                  parent=parent)
        self._jobs[job.id] = job
        return job

    async def _launch(self, job: Job, body: Awaitable[None]) -> None:
        self._emit(job, "state", "queued")
        task = asyncio.get_running_loop().create_task(self._guard(job, body))
        self._tasks[job.id] = task
        job_id = job.id
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))
        await self._prune()

    async def _guard(self, job: Job, body: Awaitable[None]) -> None:
        """Run a job's body and record how it ended, whatever happens."""
        try:
            await body
        except asyncio.CancelledError as exc:
            # The flash result (what was written, how to recover) comes along
            # with the cancellation when the executor had started.
            details = getattr(exc, "details", None) or {}
            job.result.update(details)
            if self._closing:
                error = "Moonraker stopped while this job was running"
            else:
                error = str(details.get("message") or "Cancelled")
            await self._finish(job, CANCELLED if not self._closing else INTERRUPTED,
                               error=error, recovery=details.get("recovery"))
            if self._closing:
                raise
        except CheckFailed as exc:
            job.result.update(getattr(exc, "details", None) or {})
            await self._finish(job, REFUSED, error=str(exc))
        except OctoflashError as exc:
            job.result.update(getattr(exc, "details", None) or {})
            state = REFUSED if exc.status in (409, 503) else FAILED
            await self._finish(job, state, error=str(exc),
                               recovery=getattr(exc, "recovery", None))
        except Exception as exc:   # a bug must not leave a job "running" forever
            log.exception("octoflash: job %s failed unexpectedly", job.id)
            await self._finish(job, FAILED, error=f"Internal error: {exc!r}")
        else:
            if job.active:
                await self._finish(job, DONE)
        finally:
            if self._flash_job is job:
                self._flash_job = None

    async def _finish(self, job: Job, state: str, error: Optional[str] = None,
                      recovery: Optional[str] = None) -> None:
        if not job.active:
            return
        job.state = state
        job.finished = time.time()
        if error:
            job.error = clip_text(error, MAX_MESSAGE_CHARS)
            self._add_log(job, ("error: " if state != CANCELLED else "") + job.error)
        if recovery:
            job.recovery = clip_text(recovery, MAX_MESSAGE_CHARS)
        step_state = {DONE: DONE, CANCELLED: CANCELLED, INTERRUPTED: INTERRUPTED}.get(state, FAILED)
        for step in job.steps:
            if step.state == RUNNING:
                step.state = step_state
                step.finished = job.finished
        job.message = self._final_message(job)
        self._store_soon(job)
        await self._stored(job)
        self._emit(job, "state", job.message)

    @staticmethod
    def _final_message(job: Job) -> str:
        what = {"build": "Build", "flash": "Flash", "update_all": "Update"}.get(job.kind, job.kind)
        target = f" of {job.profile}" if job.profile else ""
        if job.state == DONE:
            if job.kind == "build" and job.result.get("skipped"):
                return f"{what}{target}: up to date, nothing rebuilt"
            if job.kind == "update_all":
                return f"{what}: {job.result.get('summary', 'done')}"
            return f"{what}{target} done in {job.duration or 0:.1f} s"
        first_line = (job.error or job.state).split("\n")[0]
        return f"{what}{target} {job.state}: {first_line}"

    async def _start(self, job: Job) -> None:
        job.state = RUNNING
        job.started = time.time()
        # Queued and started are in memory (the API and the notifications say
        # them); the record is first written at a build's first step, and a
        # flash writes it with its plan before it touches Klipper or a board.
        self._emit(job, "state", "started")

    # --- the job records on disk --------------------------------------------
    #
    # A record write is a database commit, which waits for the disk: a few ms
    # on this machine, tens of ms on an SD card, and Moonraker's database does
    # its writes one after another for every component.  So a job has at most
    # one write under way; the changes made meanwhile are written by the next
    # one (the record is taken when it is written, so it is always the latest),
    # instead of a queue of writes that each one after it waits behind.  The
    # moments that matter are waited for: a flash's record with its plan
    # before Klipper or a board is touched (so a Moonraker that dies in the
    # middle shows it as interrupted), the final state before it is announced.
    # Nothing is written before then: with an SD card's commit of 60-70 ms, a
    # record written at the start was still being written when the plan was
    # ready, and the flash waited for two writes instead of one.

    def _store_soon(self, job: Job) -> None:
        """Have the job's record written (now, or after the write under way); no waiting."""
        self._dirty.add(job.id)
        if job.id not in self._writers:
            self._writers[job.id] = asyncio.ensure_future(self._write_records(job))

    async def _write_records(self, job: Job) -> None:
        try:
            while job.id in self._dirty:
                self._dirty.discard(job.id)
                await self._save(job)
        finally:
            self._writers.pop(job.id, None)

    async def _stored(self, job: Job) -> None:
        """Until the job's record as it is now is written."""
        writer = self._writers.get(job.id)
        if writer is not None:     # a cancelled flash stops waiting; the write still ends
            await asyncio.shield(writer)

    def _progress_handler(self, job: Job) -> Callable[[Progress], None]:
        def on_progress(event: Progress) -> None:
            try:
                self._on_progress(job, event)
            except Exception:   # never let a display problem break a build or a flash
                log.exception("octoflash: progress handling failed")
        return on_progress

    def _on_progress(self, job: Job, event: Progress) -> None:
        if event.kind == "output":
            self._add_log(job, event.message)
            if event.percent is not None:
                job.percent = event.percent
            self._emit(job, "output", event.message)
            return
        if event.kind == "step" or event.stage != job.stage:
            step = self._begin_step(job, event.stage, event.message)
            job.percent = event.percent
            step.percent = event.percent
            self._emit(job, "step", event.message)
            self._store_soon(job)
            self._to_parent(job)
            return
        # a percentage change within the current step: the step's record
        # carries the latest percentage and message, not its first ("2%")
        job.percent = event.percent
        if job.steps:
            job.steps[-1].percent = event.percent
            if event.message:
                job.steps[-1].message = clip_text(event.message, MAX_MESSAGE_CHARS)
        if event.message:
            job.message = clip_text(event.message, MAX_MESSAGE_CHARS)
        self._emit(job, "progress", event.message)
        self._to_parent(job)

    def _to_parent(self, child: Job) -> None:
        """An update-all job's percentage follows the board being flashed."""
        parent = self._jobs.get(child.parent) if child.parent else None
        if parent is None or not parent.active:
            return
        names = list(parent.options.get("profiles") or [])
        if child.profile not in names or not names:
            return
        index = names.index(child.profile)
        percent = round(100.0 * (index + flash_fraction(child)) / len(names), 1)
        if parent.percent is not None and percent <= parent.percent:
            return
        parent.percent = percent
        if parent.steps:
            parent.steps[-1].percent = round(100.0 * flash_fraction(child), 1)
        self._emit(parent, "progress", f"{child.profile}: {child.message}")

    def _begin_step(self, job: Job, stage: str, message: str = "") -> JobStep:
        now = time.time()
        for step in job.steps:
            if step.state == RUNNING:
                step.state = DONE
                step.finished = now
        step = JobStep(stage=stage, message=message, started=now)
        job.steps.append(step)
        job.stage = stage
        job.message = clip_text(message or stage, MAX_MESSAGE_CHARS)
        self._add_log(job, f"[{stage}] {message}".rstrip())
        return step

    def _end_step(self, job: Job, state: str = DONE, message: Optional[str] = None,
                  result: Optional[Dict[str, Any]] = None) -> None:
        if not job.steps:
            return
        step = job.steps[-1]
        step.state = state
        step.finished = time.time()
        if message is not None:
            step.message = message
        if result:
            step.result.update(result)

    def _add_log(self, job: Job, line: str) -> None:
        job.log.append(clip_text(line, MAX_LINE_CHARS))
        excess = len(job.log) - self.log_lines
        if excess > 0:
            # Keep the first lines (what was run) and the last (how it ended).
            head = self.log_lines // 5
            del job.log[head:head + excess]
            job.log_dropped += excess

    def _emit(self, job: Job, event: str, message: str = "") -> None:
        update = JobUpdate(job, event, message)
        for listener in list(self._listeners):
            try:
                result = listener(update)
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
            except Exception:
                log.exception("octoflash: job listener failed")

    async def _save(self, job: Job) -> None:
        record = job.to_json()
        if not job.active:
            self._sizes[job.id] = _record_size(record)
        try:
            await self.storage.save(record)
        except Exception:
            log.exception("octoflash: could not save job %s", job.id)
        if not job.active and sum(self._sizes.values()) > self.history_bytes:
            await self._prune()

    async def _prune(self) -> None:
        """Keep at most ``history_size`` jobs and ``history_bytes`` of finished
        records, oldest dropped first; running ones are never dropped."""
        excess = len(self._jobs) - self.history_size
        size = sum(self._sizes.values())
        for job in list(self._jobs.values()):
            if excess <= 0 and size <= self.history_bytes:
                break
            if job.active or (job.parent and self._jobs.get(job.parent, job).active):
                continue
            del self._jobs[job.id]
            excess -= 1
            size -= self._sizes.pop(job.id, 0)
            try:
                await self.storage.delete(job.id)
            except Exception:
                log.exception("octoflash: could not delete job %s", job.id)

    # --- job bodies --------------------------------------------------------

    async def _build_step(self, job: Job, profile: Profile, force: bool) -> Any:
        if self._build_lock.locked():
            job.message = "waiting for another build to finish"
            self._emit(job, "progress", job.message)
        async with self._build_lock:
            self._begin_step(job, "build", f"building {profile.name}")
            self._emit(job, "step", job.message)
            result = await self.builder.build(profile, force=force,
                                              on_progress=self._progress_handler(job))
        artifact = result.artifact
        job.artifact = artifact.to_json() if hasattr(artifact, "to_json") else dict(artifact)
        job.log_path = getattr(result, "log_path", None) or job.log_path
        skipped = bool(getattr(result, "skipped", False))
        # the builder's own steps (configure, compile...) follow "build"; close them
        for step in job.steps:
            if step.state == RUNNING:
                step.state = DONE
                step.finished = time.time()
        summary = {"artifact_id": job.artifact.get("id"), "skipped": skipped,
                   "version": job.artifact.get("dict_version") or job.artifact.get("source_version")}
        build_step = next(s for s in reversed(job.steps) if s.stage == "build")
        build_step.result.update(summary)
        build_step.message = ("up to date, not rebuilt" if skipped
                              else f"built {summary['version']}")
        self._add_log(job, f"[build] {build_step.message}")
        return artifact, skipped

    async def _run_build(self, job: Job, profile: Profile, force: bool) -> None:
        await self._start(job)
        _artifact, skipped = await self._build_step(job, profile, force)
        job.result.update(skipped=skipped, artifact_id=(job.artifact or {}).get("id"))
        job.percent = 100.0

    async def _obtain_artifact(self, job: Job, profile: Profile) -> Any:
        options = job.options
        if options.get("artifact_id"):
            assert self.find_artifact is not None
            self._begin_step(job, "artifact", f"using earlier build {options['artifact_id']}")
            self._emit(job, "step", job.message)
            artifact = self.find_artifact(profile, options["artifact_id"])
            if asyncio.iscoroutine(artifact):
                artifact = await artifact
            job.artifact = artifact.to_json()
            self._end_step(job, result={"artifact_id": options["artifact_id"]})
            return artifact
        if not options.get("build", True):
            if self.find_artifact is None:
                raise ValidationError("This runner cannot look up earlier builds; flash with build on")
            self._begin_step(job, "artifact", "using the latest build")
            self._emit(job, "step", job.message)
            artifact = self.find_artifact(profile, "latest")
            if asyncio.iscoroutine(artifact):
                artifact = await artifact
            job.artifact = artifact.to_json()
            self._end_step(job, result={"artifact_id": job.artifact.get("id")})
            return artifact
        artifact, _skipped = await self._build_step(job, profile, bool(options.get("force")))
        return artifact

    async def _flash_body(self, job: Job, profile: Profile) -> None:
        """Build (or pick) the firmware, plan, check, write.  Raises on failure."""
        assert self.pipeline is not None
        artifact = await self._obtain_artifact(job, profile)
        self._begin_step(job, "plan", "finding the board and planning the flash")
        self._emit(job, "step", job.message)
        plan = await self.pipeline.prepare(profile, artifact, job.options)
        job.plan = plan.to_json() if hasattr(plan, "to_json") else dict(plan)
        self._end_step(job, message=_plan_summary(job.plan))
        self._store_soon(job)
        # The print may have started while we were building: ask again.
        if self.preflight is not None:
            await self.preflight(profile, plan)
        # the job and its plan are on disk before Klipper or a board is touched
        await self._stored(job)
        CURRENT_JOB_ID.set(job.id)
        result = await self.pipeline.execute(plan, self._progress_handler(job))
        for step in job.steps:
            if step.state == RUNNING:
                step.state = DONE
                step.finished = time.time()
        job.result.update(result or {})
        job.percent = 100.0

    async def _run_flash(self, job: Job, profile: Profile) -> None:
        await self._start(job)
        await self._flash_body(job, profile)

    def _prebuild_progress(self, job: Job, name: str) -> Callable[[Progress], None]:
        """One profile's build progress, as lines of the update's log (no steps of its own)."""
        def on_progress(event: Progress) -> None:
            try:
                if event.kind == "step":
                    job.message = clip_text(f"{name}: {event.message}", MAX_MESSAGE_CHARS)
                    self._add_log(job, f"{name}: [{event.stage}] {event.message}")
                    self._emit(job, "progress", job.message)
                else:
                    self._add_log(job, f"{name}: {event.message}")
                    self._emit(job, "output", f"{name}: {event.message}")
            except Exception:   # never let a display problem break a build
                log.exception("octoflash: progress handling failed")
        return on_progress

    async def _build_first(self, job: Job, profiles: Sequence[Profile]
                           ) -> Dict[str, BaseException]:
        """Build every stale profile of an update, all at once, before any board is touched.

        So Klipper is stopped only when the firmware of every board is ready,
        and the builds share the CPU (one make jobserver) instead of taking
        turns.  Returns the profiles whose build failed, with the error.
        """
        build_many = getattr(self.builder, "build_many", None)
        if build_many is None:
            return {}
        step = self._begin_step(job, "build", f"building the firmware of {len(profiles)} "
                                f"board{'s' if len(profiles) != 1 else ''}")
        self._emit(job, "step", job.message)
        async with self._build_lock:
            outcomes = await build_many(
                list(profiles), force=False,
                on_progress=lambda name: self._prebuild_progress(job, name))
        failed: Dict[str, BaseException] = {}
        built, current = [], []
        for profile, outcome in zip(profiles, outcomes):
            if isinstance(outcome, BaseException):
                failed[profile.name] = outcome
            elif getattr(outcome, "skipped", False):
                current.append(profile.name)
            else:
                built.append(profile.name)
        step.state = FAILED if failed else DONE
        step.finished = time.time()
        step.result.update(built=built, up_to_date=current, failed=sorted(failed))
        step.message = "; ".join(part for part in (
            f"built {', '.join(built)}" if built else "",
            f"up to date: {', '.join(current)}" if current else "",
            f"failed: {', '.join(sorted(failed))}" if failed else "") if part)
        self._add_log(job, f"[build] {step.message}")
        return failed

    async def _run_update_all(self, job: Job, profiles: Sequence[Profile]) -> None:
        await self._start(job)
        self._store_soon(job)       # its children's records name it
        build_failed = await self._build_first(job, profiles)
        results: Dict[str, str] = {}
        for index, profile in enumerate(profiles):
            child = self._new_job("flash", profile.name, {"build": True, "force": False},
                                  job.origin, parent=job.id)
            job.children.append(child.id)
            step = self._begin_step(job, profile.name, f"updating {profile.name} "
                                    f"({index + 1} of {len(profiles)})")
            job.percent = round(100.0 * index / len(profiles), 1)
            self._emit(job, "step", job.message)
            self._store_soon(child)
            self._emit(child, "state", "queued")
            await self._start(child)
            if profile.name in build_failed:
                body: Awaitable[None] = _raise(build_failed[profile.name])
            else:
                # its build is done: the flash's own build step finds it up to date
                body = self._flash_body(child, profile)
            child_task = asyncio.get_running_loop().create_task(self._guard(child, body))
            self._tasks[child.id] = child_task
            try:
                await asyncio.shield(child_task)
            except asyncio.CancelledError:
                # cancelling the update cancels the board being worked on
                child_task.cancel()
                await asyncio.wait([child_task], timeout=30)
                raise
            finally:
                self._tasks.pop(child.id, None)
            results[profile.name] = child.state
            step.state = DONE if child.state == DONE else FAILED
            step.finished = time.time()
            step.result.update(job_id=child.id, state=child.state, error=child.error,
                               version=(child.artifact or {}).get("dict_version"))
            self._add_log(job, f"{profile.name}: {child.message}")
        ok = sum(1 for s in results.values() if s == DONE)
        job.result.update(profiles=results, succeeded=ok, total=len(results),
                          summary=f"{ok} of {len(results)} boards updated")
        job.percent = 100.0
        if ok != len(results):
            failed = ", ".join(n for n, s in results.items() if s != DONE)
            raise OctoflashError(f"{ok} of {len(results)} boards updated; failed: {failed}")


# How far a flash job is, from its stage: the build and the plan first, then
# the write and the verification (their own percentages), then the board
# coming back.  What an update-all job shows across its boards.
_FLASH_PHASES = (("build", 0.0), ("artifact", 0.25), ("plan", 0.25), ("check", 0.3),
                 ("flash", 0.3), ("stop_klipper", 0.32))


def flash_fraction(job: Job) -> float:
    if not job.active:
        return 1.0
    stages = [s.stage for s in job.steps]
    pct = (job.percent or 0.0) / 100.0
    writes = UNSAFE_STAGES | _method_write_steps()
    # the build has a "done" of its own: only what follows the plan counts here
    after = stages[stages.index("plan"):] if "plan" in stages else []
    if any(s in AFTER_WRITE_STAGES for s in after):
        return 0.9
    if "verify" in after:
        return 0.75 + 0.15 * pct
    if any(s in writes for s in after):
        return 0.4 + 0.35 * pct if job.stage in writes else 0.4
    if any(s in BOOTLOADER_STAGES for s in after):
        return 0.35
    reached = 0.0
    for stage, at in _FLASH_PHASES:
        if stage in stages:
            reached = max(reached, at)
    if job.stage in ("build", "configure", "compile", "link") and reached < 0.25:
        return 0.05 + 0.2 * pct
    return reached


async def _raise(error: BaseException) -> None:
    raise error


def _plan_summary(plan: Dict[str, Any]) -> str:
    for key in ("summary", "description", "title"):
        if plan.get(key):
            return str(plan[key])
    steps = plan.get("steps") or []
    names = [str(s.get("stage") or s.get("name") or s.get("kind") or "?")
             for s in steps if isinstance(s, dict)]
    return f"{len(names)} steps: " + ", ".join(names) if names else "planned"
