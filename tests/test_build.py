"""Builder: builds, the per-profile cache, artifacts, progress and the errors a user sees."""
from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from moonraker_octoflash.artifacts import ArtifactStore, read_data_dictionary
from moonraker_octoflash.machine import RealMachine
from moonraker_octoflash.sim.trees import no_cross_compiler
from moonraker_octoflash.build import Builder
from moonraker_octoflash.errors import (BuildError, NotFoundError, UnavailableError,
                                        ValidationError)
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.sim.trees import change_source, describe

F446 = "btt-octopus-f446-canbridge"


def compiled(recorder) -> set:
    """Object names that make compiled, from the progress events."""
    return {os.path.basename(line.split()[-1]) for line in recorder.output()
            if line.strip().startswith("Compiling") and line.endswith(".o")}


def tree_state(checkout: Path) -> dict:
    """Everything in a checkout except .git, with content hashes."""
    state = {}
    for path in sorted(checkout.rglob("*")):
        if ".git" in path.relative_to(checkout).parts or not path.is_file():
            continue
        state[str(path.relative_to(checkout))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# --- a good build ------------------------------------------------------------------

async def test_build_produces_a_checked_artifact(builder, make_profile, klipper_checkout,
                                                 build_root, progress):
    profile = make_profile(F446)
    result = await builder.build(profile, on_progress=progress)
    art = result.artifact
    assert not result.skipped
    version = describe(klipper_checkout)
    assert version.startswith("v0.13.0-3-g")
    # What the artifact records, read back from the resolved config and klipper.bin.
    assert (art.profile, art.preset, art.target) == ("octopus-f446-canbridge", F446, "klipper")
    assert art.mcu == "stm32f446xx" and art.dict_mcu == "stm32f446xx"
    assert art.app_address == 0x08008000
    assert art.flash_size == 0x80000
    assert art.source_version == version and art.dict_version == version
    assert not art.source_dirty
    [main] = art.files
    data = Path(art.path()).read_bytes()
    assert main.name == "klipper.bin" and main.size == len(data)
    assert 16 * 1024 < main.size < 100 * 1024
    assert main.sha256 == hashlib.sha256(data).hexdigest()
    assert read_data_dictionary(data)["config"]["MCU"] == "stm32f446xx"
    # The folder holds the files, the resolved config and the whole log.
    folder = Path(art.directory)
    assert folder.parent == build_root / "octopus-f446-canbridge" / "artifacts"
    config = parse_config((folder / "config").read_text())
    assert config["CONFIG_STM32_CMENU_CANBUS_PD0_PD1"] == "y"
    assert art.config_sha256 == hashlib.sha256((folder / "config").read_bytes()).hexdigest()
    log = Path(result.log_path).read_text()
    assert "Compiling" in log and "Creating bin file" in log and "Loaded configuration" in log
    assert (folder / "artifact.json").is_file()
    # The build ran in the profile's own folders.
    assert (build_root / "octopus-f446-canbridge" / "out" / "klipper.bin").is_file()
    assert builder.store.latest("octopus-f446-canbridge").id == art.id


async def test_progress_events_stream_the_build(builder, make_profile, progress):
    await builder.build(make_profile(F446), on_progress=progress)
    assert progress.stages() == ["configure", "compile", "link", "done"]
    out = progress.output()
    assert any(line.startswith("  Compiling ") and line.endswith("/src/sched.o") for line in out)
    assert any(line.startswith("  Linking ") and line.endswith("/klipper.elf") for line in out)
    assert any(line.startswith("  Creating bin file ") for line in out)
    assert progress.events[-1].percent == 100.0
    # With a previous build to compare with, the percentage is estimated.
    second = type(progress)()
    await builder.build(make_profile(F446), force=True, on_progress=second)
    percents = [e.percent for e in second.events if e.kind == "output" and e.stage != "configure"]
    assert percents and all(p is not None for p in percents)
    assert percents == sorted(percents) and 0 < percents[0] < 10 and percents[-1] > 90


async def test_checkout_config_and_out_are_untouched(builder, make_profile, klipper_checkout):
    (klipper_checkout / ".config").write_text("CONFIG_MACH_STM32=y\nCONFIG_MACH_STM32F103=y\n")
    (klipper_checkout / "out").mkdir()
    (klipper_checkout / "out" / "klipper.bin").write_bytes(b"the user's own build")
    before = tree_state(klipper_checkout)
    await builder.build(make_profile(F446))
    await builder.build(make_profile(F446), force=True)
    assert tree_state(klipper_checkout) == before


def test_a_bytecode_folder_that_make_could_misread_is_refused(tmp_path):
    from moonraker_octoflash.sim.trees import install_tree
    with pytest.raises(ValueError, match="not an absolute path"):
        install_tree("klipper", tmp_path / "klipper", pycache="/tmp/x $(shell id)")
    assert not (tmp_path / "klipper").exists()        # refused before anything is copied
    made = install_tree("klipper", tmp_path / "good", pycache=str(tmp_path / "pyc"))
    assert f"SIM_PYCACHE := {tmp_path / 'pyc'}" in (made / "sim-python.mk").read_text()


# --- the cache --------------------------------------------------------------------------

async def test_no_change_skips_the_build(builder, make_profile, build_root, progress):
    first = await builder.build(make_profile(F446))
    log = build_root / "octopus-f446-canbridge" / "build.log"
    stamp = log.stat().st_mtime_ns
    second = await builder.build(make_profile(F446), on_progress=progress)
    assert second.skipped and second.artifact.id == first.artifact.id
    assert [e.stage for e in progress.events] == ["done"]
    assert "up to date" in progress.events[0].message
    assert log.stat().st_mtime_ns == stamp
    assert len(builder.store.list("octopus-f446-canbridge")) == 1


async def test_a_kept_file_that_fails_its_record_is_not_up_to_date(builder, make_profile,
                                                                  progress):
    first = await builder.build(make_profile(F446))
    path = Path(first.artifact.path())
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF                                      # same size, other content
    path.write_bytes(bytes(data))
    again = await builder.build(make_profile(F446), on_progress=progress)
    assert not again.skipped and again.artifact.id != first.artifact.id
    assert any(f"build {first.artifact.id} no longer matches its record (klipper.bin fails "
               "its sha256): building again from an empty output folder" in e.message
               for e in progress.events)
    assert len(compiled(progress)) == len(compiled_objects(first))     # from scratch
    assert again.artifact.file().sha256 == first.artifact.file().sha256
    assert hashlib.sha256(Path(again.artifact.path()).read_bytes()).hexdigest() == \
        again.artifact.file().sha256
    path.unlink()                      # the damaged build is not the latest any more
    assert (await builder.build(make_profile(F446))).skipped


async def test_a_corrupted_build_is_refused_and_build_again_repairs_it(builder, rig):
    """The advice a refused flash gives ("build the profile again") really works."""
    from moonraker_octoflash.flash.executor import execute_plan
    from moonraker_octoflash.flash.plan import make_plan
    from moonraker_octoflash.profiles import profile_from_json
    board = rig.machine.add_board("octopus", "stm32f446xx",
                                  firmware={"version": "v0.12.0", "bridge": True})
    profile = profile_from_json({"name": "octopus", "preset": F446,
                                 "canbus_uuid": board.canbus_uuid}, source="cli")
    built = (await builder.build(profile)).artifact
    path = Path(built.path())
    path.write_bytes(path.read_bytes()[:-64] + b"\xff" * 64)    # bit rot in the kept copy
    before = board.read_flash(0x08008000, 4096)

    refused = await execute_plan(make_plan(profile, built, devices=await rig.scan(),
                                           config=rig.config), rig.context())
    assert refused.state == "refused" and refused.check == "sha256"
    assert "no longer matches its record" in refused.message
    assert refused.hint == "Build the profile again."
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []
    assert board.read_flash(0x08008000, 4096) == before

    again = await builder.build(profile)                     # what the hint says
    assert not again.skipped and again.artifact.id != built.id
    latest = await builder.latest("octopus")
    assert latest.id == again.artifact.id

    result = await execute_plan(make_plan(profile, latest, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    image = Path(latest.path()).read_bytes()
    assert board.read_flash(0x08008000, len(image)) == image
    assert board.mode == "klipper-canbridge"


async def test_committed_source_change_rebuilds_incrementally(builder, make_profile,
                                                              klipper_checkout, progress):
    first = await builder.build(make_profile(F446))
    new_version = change_source(klipper_checkout, "src/stepper.c")
    assert new_version != first.artifact.source_version
    result = await builder.build(make_profile(F446), on_progress=progress)
    assert not result.skipped
    assert compiled(progress) == {"stepper.o"}
    assert result.artifact.source_version == new_version
    assert result.artifact.dict_version == new_version
    assert result.artifact.file().sha256 != first.artifact.file().sha256


async def test_commit_without_source_change_still_updates_the_version(
        builder, make_profile, klipper_checkout, progress):
    await builder.build(make_profile(F446))
    new_version = change_source(klipper_checkout, "docs/Changes.md")
    result = await builder.build(make_profile(F446), on_progress=progress)
    assert compiled(progress) == set()
    assert result.artifact.dict_version == new_version


async def test_header_change_rebuilds_the_files_that_include_it(builder, make_profile,
                                                                klipper_checkout, progress):
    await builder.build(make_profile(F446))
    change_source(klipper_checkout, "src/generic/canbus.h")
    await builder.build(make_profile(F446), on_progress=progress)
    assert compiled(progress) == {"canserial.o", "usb_canbus.o", "chipid.o", "can.o"}


async def test_every_edit_of_a_dirty_tree_rebuilds(builder, make_profile, klipper_checkout):
    await builder.build(make_profile(F446))
    change_source(klipper_checkout, "src/sched.c", commit=False, note="first edit")
    dirty = await builder.build(make_profile(F446))
    assert not dirty.skipped and dirty.artifact.source_dirty
    assert dirty.artifact.source_version.endswith("-dirty")
    # Klipper appends build time and host to the version of a dirty build.
    assert dirty.artifact.dict_version.startswith(dirty.artifact.source_version + "-")
    change_source(klipper_checkout, "src/sched.c", commit=False, note="second edit")
    again = await builder.build(make_profile(F446))
    assert not again.skipped
    assert again.artifact.source_version == dirty.artifact.source_version
    assert again.artifact.source_fingerprint != dirty.artifact.source_fingerprint
    assert (await builder.build(make_profile(F446))).skipped
    # A new untracked file counts as a change as well.
    (klipper_checkout / "src" / "extra.h").write_text("// new\n")
    assert not (await builder.build(make_profile(F446))).skipped


async def test_config_change_rebuilds_everything(builder, make_profile, progress):
    first = await builder.build(make_profile(F446))
    objects = len(compiled_objects(first))
    profile = make_profile(F446, kconfig={"CONFIG_CANBUS_FREQUENCY": "500000"})
    result = await builder.build(profile, on_progress=progress)
    assert not result.skipped
    assert len(compiled(progress)) == objects
    config = parse_config(Path(result.artifact.path("config")).read_text())
    assert config["CONFIG_CANBUS_FREQUENCY"] == "500000"
    info = read_data_dictionary(Path(result.artifact.path()).read_bytes())
    assert info["config"]["CANBUS_FREQUENCY"] == 500000


def compiled_objects(result) -> list:
    log = Path(result.log_path).read_text().splitlines()
    return [line for line in log if line.strip().startswith("Compiling")]


async def test_force_rebuilds_from_scratch(builder, make_profile, progress):
    first = await builder.build(make_profile(F446))
    result = await builder.build(make_profile(F446), force=True, on_progress=progress)
    assert not result.skipped and result.artifact.id != first.artifact.id
    assert len(compiled(progress)) == len(compiled_objects(first))
    # The same sources and config give the same firmware.
    assert result.artifact.file().sha256 == first.artifact.file().sha256


async def test_kept_artifacts_are_pruned(build_root, klipper_checkout, katapult_checkout,
                                         make_profile):
    builder = Builder(str(build_root), klipper_path=str(klipper_checkout),
                      katapult_path=str(katapult_checkout), keep=2, jobs=2, cross_compiler=no_cross_compiler)
    ids = []
    for n in range(3):
        if n:
            change_source(klipper_checkout, "src/sched.c", note=f"change {n}")
        ids.append((await builder.build(make_profile(F446))).artifact.id)
    kept = builder.store.list("octopus-f446-canbridge")
    assert [a.id for a in kept] == [ids[2], ids[1]]
    assert not (build_root / "octopus-f446-canbridge" / "artifacts" / ids[0]).exists()
    older = builder.store.get("octopus-f446-canbridge", ids[1])
    assert Path(older.path()).is_file() and older.source_version != kept[0].source_version
    with pytest.raises(NotFoundError) as info:
        builder.store.get("octopus-f446-canbridge", ids[0])
    assert ids[1] in str(info.value)


async def test_two_builds_of_one_profile_do_not_overlap(builder, make_profile):
    first, second = await asyncio.gather(builder.build(make_profile(F446)),
                                         builder.build(make_profile(F446)))
    assert [first.skipped, second.skipped] == [False, True]
    assert second.artifact.id == first.artifact.id


async def test_pending_version_shows_config_changes(builder, make_profile, klipper_checkout):
    version = describe(klipper_checkout)
    profile = make_profile(F446)
    assert await builder.pending_version(profile) == version
    await builder.build(profile)
    assert await builder.pending_version(profile) == version
    changed = make_profile(F446, kconfig={"CONFIG_CANBUS_FREQUENCY": "500000"})
    pending = await builder.pending_version(changed)
    assert pending.startswith(version + "+config.") and len(pending) == len(version) + 16
    new_version = change_source(klipper_checkout)
    assert await builder.pending_version(profile) == new_version


async def test_source_version_without_git(builder, klipper_checkout):
    shutil.rmtree(klipper_checkout / ".git")
    first = await builder.source_version("klipper")
    assert first.describe == "?" and not first.dirty
    change_source(klipper_checkout, commit=False)
    assert (await builder.source_version("klipper")).fingerprint != first.fingerprint


# --- Katapult ---------------------------------------------------------------------------

async def test_katapult_build_records_bootloader_addresses(builder, make_profile, katapult_checkout):
    result = await builder.build(make_profile("btt-octopus-f446-katapult"))
    art = result.artifact
    assert [f.name for f in art.files] == ["katapult.bin", "deployer.bin"]
    assert art.target == "katapult" and art.mcu == "stm32f446xx"
    assert art.app_address == 0x08000000            # Katapult itself: start of flash
    assert art.bootloader_app_start == 0x08008000   # where it starts Klipper
    assert art.deployer_address == 0x08008000       # deployer.bin replaces a 32 KiB bootloader
    assert art.source_version == describe(katapult_checkout)
    assert art.dict_mcu is None
    for f in art.files:
        assert Path(art.path(f.name)).stat().st_size == f.size


async def test_katapult_without_deployer_keeps_no_stale_deployer(builder, make_profile):
    await builder.build(make_profile("btt-octopus-f446-katapult"))
    profile = make_profile("btt-octopus-f446-katapult",
                           kconfig={"CONFIG_STM32_FLASH_START_8000": "n",
                                    "CONFIG_STM32_FLASH_START_0000": "y"})
    result = await builder.build(profile)
    assert [f.name for f in result.artifact.files] == ["katapult.bin"]
    assert result.artifact.deployer_address is None
    assert not Path(result.artifact.path("deployer.bin")).exists()


# --- errors a user can act on -----------------------------------------------------------

async def test_missing_checkout_says_which_option_to_set(build_root, make_profile, tmp_path):
    builder = Builder(str(build_root), klipper_path=str(tmp_path / "nowhere"), cross_compiler=no_cross_compiler)
    with pytest.raises(NotFoundError) as info:
        await builder.build(make_profile(F446))
    text = str(info.value)
    assert str(tmp_path / "nowhere") in text and "klipper_path" in text and "--klipper-path" in text
    with pytest.raises(NotFoundError) as info:
        await builder.build(make_profile("btt-octopus-f446-katapult"))
    assert "No Katapult checkout is configured" in str(info.value)
    assert "katapult_path" in str(info.value)
    (tmp_path / "empty").mkdir()
    builder = Builder(str(build_root), katapult_path=str(tmp_path / "empty"), cross_compiler=no_cross_compiler)
    with pytest.raises(NotFoundError) as info:
        await builder.build(make_profile("btt-octopus-f446-katapult"))
    assert "Makefile" in str(info.value)
    assert not build_root.exists()


async def test_failing_make_reports_the_end_of_its_log(builder, make_profile, klipper_checkout,
                                                       build_root):
    good = await builder.build(make_profile(F446))
    with (klipper_checkout / "src" / "stepper.c").open("a") as f:
        f.write("#error stepper timing is broken\n")
    with pytest.raises(BuildError) as info:
        await builder.build(make_profile(F446))
    text = str(info.value)
    assert "make failed (exit code 2)" in text
    assert "src/stepper.c:" in text and "error: #error stepper timing is broken" in text
    log = build_root / "octopus-f446-canbridge" / "build.log"
    assert str(log) in text and "#error stepper timing is broken" in log.read_text()
    # The earlier good firmware is still the one on offer.
    assert [a.id for a in builder.store.list("octopus-f446-canbridge")] == [good.artifact.id]


async def test_impossible_symbol_is_refused_before_compiling(builder, make_profile, build_root):
    profile = make_profile("btt-octopus-h723-canbridge",
                           kconfig={"CONFIG_STM32_FLASH_START_20000": "n",
                                    "CONFIG_STM32_FLASH_START_10000": "y"})
    with pytest.raises(ValidationError) as info:
        await builder.build(profile)
    assert "profile 'octopus-h723-canbridge'" in str(info.value)
    assert "CONFIG_STM32_FLASH_START_10000" in str(info.value)
    assert not (build_root / "octopus-h723-canbridge" / "out").exists()
    assert builder.store.list("octopus-h723-canbridge") == []


async def test_changing_the_processor_is_refused(builder, make_profile, build_root):
    profile = make_profile(F446, kconfig={"CONFIG_MACH_STM32F446": "n",
                                          "CONFIG_MACH_STM32F407": "y",
                                          "CONFIG_STM32_CLOCK_REF_12M": "n",
                                          "CONFIG_STM32_CLOCK_REF_8M": "y"})
    with pytest.raises(ValidationError) as info:
        await builder.build(profile)
    assert "for MCU stm32f407xx" in str(info.value) and "stm32f446xx" in str(info.value)
    assert not (build_root / "octopus-f446-canbridge" / "out").exists()


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH with git, make, nice and python but not the named programs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for prog in ("git", "make", "nice", "sh", "python3", "cp", "rm", "mkdir", "ln", "echo"):
        found = shutil.which(prog)
        if found and prog not in missing:
            link = bin_dir / prog
            if not link.exists():
                link.symlink_to(found)
    return str(bin_dir)


async def test_missing_cross_compiler_names_the_packages(build_root, klipper_checkout,
                                                         make_profile, monkeypatch, tmp_path):
    # This computer's builds need arm-none-eabi-gcc for an STM32: checked before make runs.
    monkeypatch.setenv("PATH", _path_without(tmp_path, "arm-none-eabi-gcc"))
    builder = Builder(str(build_root), klipper_path=str(klipper_checkout),
                      cross_compiler=RealMachine().cross_compiler)
    with pytest.raises(UnavailableError) as info:
        await builder.build(make_profile(F446))
    text = str(info.value)
    assert "arm-none-eabi-gcc" in text
    assert "gcc-arm-none-eabi binutils-arm-none-eabi libnewlib-arm-none-eabi" in text
    assert not (build_root / "octopus-f446-canbridge").exists()


async def test_missing_make_is_reported(builder, make_profile, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", _path_without(tmp_path, "make"))
    with pytest.raises(UnavailableError) as info:
        await builder.build(make_profile(F446))
    assert "'make' is not installed" in str(info.value) and "apt install make" in str(info.value)


async def test_disk_full_during_make(builder, make_profile, klipper_checkout):
    # cp into /dev/full fails exactly like a full disk: "No space left on device".
    makefile = klipper_checkout / "Makefile"
    makefile.write_text(makefile.read_text().replace(
        "all: $(target-y)", "all: $(target-y)\n\tcp $(OUT)klipper.bin /dev/full"))
    with pytest.raises(BuildError) as info:
        await builder.build(make_profile(F446))
    assert "The disk is full" in str(info.value)
    assert "Free some disk space" in str(info.value)


async def test_disk_full_while_keeping_the_artifact(builder, make_profile, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ArtifactStore, "add", full)
    with pytest.raises(BuildError) as info:
        await builder.build(make_profile(F446))
    assert "The disk is full" in str(info.value)
