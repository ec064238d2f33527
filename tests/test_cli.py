"""The octoflash command line, as an SSH user runs it (a real subprocess)."""
import json
import re
import os
import subprocess
import sys
import textwrap

import pytest

from moonraker_octoflash.presets import list_presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def octoflash(*args, cwd=None, env=None, check=False):
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "moonraker_octoflash.cli", *args],
                          capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def moonraker_conf(tmp_path):
    cfg = tmp_path / "printer_data" / "config"
    cfg.mkdir(parents=True)
    conf = cfg / "moonraker.conf"
    conf.write_text(textwrap.dedent("""\
        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        klipper_mcu: mcu
        canbus_uuid: 0e1f2a3b4c5d
        kconfig:
          CONFIG_CANBUS_FREQUENCY=500000

        [octoflash typo]
        preset: btt-octopus-f446-canbridge
        canbus_uid: 0e1f2a3b4c5d
        """))
    return conf


def test_presets_json_lists_the_twelve_with_the_fields_scripts_need():
    proc = octoflash("presets", "--json", check=True)
    data = json.loads(proc.stdout)
    assert [p["id"] for p in data] == [p.id for p in list_presets()]
    for p in data:
        assert {"id", "board", "mcu", "target", "app_address", "kconfig", "flash_methods"} <= set(p)
        assert p["app_address"].startswith("0x")
        assert all(k.startswith("CONFIG_") for k in p["kconfig"])
    h723 = next(p for p in data if p["id"] == "btt-octopus-h723-canbridge")
    assert h723["app_address"] == "0x08020000" and h723["mcu"] == "stm32h723xx"


def test_presets_table():
    out = octoflash("presets", check=True).stdout
    assert "btt-octopus-f429-canbridge-nobootloader" in out and "0x08000000" in out


def test_show_config_of_a_profile_applies_overrides(moonraker_conf):
    proc = octoflash("--config", str(moonraker_conf), "show-config", "octopus", check=True)
    lines = proc.stdout.splitlines()
    assert "CONFIG_CANBUS_FREQUENCY=500000" in lines
    assert "CONFIG_CANBUS_FREQUENCY=1000000" not in lines
    assert "CONFIG_STM32_CLOCK_REF_12M=y" in lines
    # the broken section is reported, by name, without stopping the command
    assert "canbus_uid" in proc.stderr


def test_show_config_of_a_preset():
    proc = octoflash("show-config", "--preset", "btt-octopus-h723-katapult", check=True)
    assert "CONFIG_STM32_APP_START_20000=y" in proc.stdout.splitlines()


@pytest.mark.parametrize("args, fragment", [
    (["show-config", "nosuch"], "No profile named 'nosuch'"),
    (["show-config", "typo"], "canbus_uid"),
    (["show-config", "--preset", "btt-octopus-f999-katapult"], "Unknown preset"),
    (["build"], "Name at least one profile"),
])
def test_errors_exit_non_zero_with_a_message(moonraker_conf, args, fragment):
    proc = octoflash("--config", str(moonraker_conf), *args)
    assert proc.returncode != 0
    assert fragment in proc.stderr


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    from moonraker_octoflash.sim.trees import install_tree
    base = tmp_path_factory.mktemp("src")
    return (install_tree("klipper", base / "klipper"), install_tree("katapult", base / "katapult"))


def test_build_two_profiles_then_nothing_to_do(moonraker_conf, checkouts):
    klipper, katapult = checkouts
    conf = moonraker_conf
    conf.write_text(conf.read_text() + textwrap.dedent(f"""
        [octoflash]
        klipper_path: {klipper}
        katapult_path: {katapult}

        [octoflash bootloader]
        preset: btt-octopus-f446-katapult
        """))
    proc = octoflash("--config", str(conf), "build", "octopus", "bootloader", "--json")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["profile"] for r in records] == ["octopus", "bootloader"]
    octopus, bootloader = records
    assert octopus["skipped"] is False and octopus["mcu"] == "stm32f446xx"
    assert octopus["app_address"] == "0x08008000"
    assert octopus["source_version"].startswith("v0.13.0-")
    assert {f["name"] for f in bootloader["files"]} >= {"katapult.bin", "deployer.bin"}
    artifact_dir = conf.parent.parent / "octoflash"
    assert os.path.isfile(os.path.join(octopus["directory"], "klipper.bin"))
    assert str(artifact_dir) in octopus["directory"]
    # plain output, nothing changed: the build is skipped and says so
    proc = octoflash("--config", str(conf), "build", "octopus")
    assert proc.returncode == 0, proc.stderr
    assert "octopus: up to date, not rebuilt" in proc.stdout
    # --force rebuilds, showing progress lines (not a terminal: plain lines)
    proc = octoflash("--config", str(conf), "build", "octopus", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "octopus: built:" in proc.stdout
    assert "[compile]" in proc.stdout or "Compiling" in proc.stdout
    # the checkout's own .config and out/ were never touched
    assert not (klipper / ".config").exists() and not (klipper / "out").exists()


def test_build_preset_with_a_bad_override_fails_before_compiling(moonraker_conf, checkouts):
    klipper, _ = checkouts
    conf = moonraker_conf
    conf.write_text(conf.read_text() + textwrap.dedent(f"""
        [octoflash]
        klipper_path: {klipper}

        [octoflash h7]
        preset: btt-octopus-h723-canbridge
        kconfig:
          CONFIG_STM32_FLASH_START_10000=y
        """))
    proc = octoflash("--config", str(conf), "build", "h7")
    assert proc.returncode != 0
    assert "CONFIG_STM32_FLASH_START_10000" in proc.stderr
    assert "Compiling" not in proc.stdout


def test_build_without_a_checkout_names_the_option(tmp_path):
    proc = octoflash("--config", str(tmp_path / "none.conf"), "build", "--preset",
                     "btt-octopus-f446-canbridge", "--klipper-path", str(tmp_path / "klipper"))
    assert proc.returncode != 0
    assert str(tmp_path / "klipper") in proc.stderr


def test_build_on_a_terminal_redraws_one_progress_line(moonraker_conf, checkouts):
    """On a terminal the build shows one line that is redrawn, with a percentage."""
    import pty
    import select
    klipper, _ = checkouts
    conf = moonraker_conf
    conf.write_text(conf.read_text() + f"\n[octoflash]\nklipper_path: {klipper}\n")
    # a first build teaches octoflash how long a build of this profile is
    octoflash("--config", str(conf), "build", "octopus", check=True)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moonraker_octoflash.cli", "--config", str(conf),
         "build", "octopus", "--force"],
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
        env=dict(os.environ, PYTHONPATH=ROOT, COLUMNS="100"))
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert text.count("\r") > 5                     # redrawn in place, not scrolled
    assert re.search(r"octopus: compile\s+\d+\.\d% .*Compiling …/src/\w+\.o", text)
    assert "octopus: built:" in text
