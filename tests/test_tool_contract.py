"""The tool doubles held to the real programs (tests/fixtures/tool_contract.json).

The contract records, per flashtool.py version and for dfu-util 0.11, the
exact lines and exit codes octoflash relies on, with where each was read.
Here: the contract against the real dfu-util binary (its strings, and runs
that need no board, side by side with the double), the doubles against the
contract (every line they print is one the real program prints), and the
current flashtool's lines against a Katapult checkout when one is at hand.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from moonraker_octoflash.sim.board import SimulatedMachine, make_klipper_image

CONTRACT = json.loads((Path(__file__).parent / "fixtures" / "tool_contract.json").read_text())
DFU = CONTRACT["dfu_util"]["0.11"]
REAL_DFU_UTIL = shutil.which("dfu-util")
# A Katapult checkout to read the current flashtool.py from (the user's, or the one given).
KATAPULT_CHECKOUTS = [os.environ.get("OCTOFLASH_KATAPULT_CHECKOUT", ""),
                      os.path.expanduser("~/katapult"), "/work/presets-upstream/katapult"]


def _real_dfu_util_version() -> str:
    if not REAL_DFU_UTIL:
        return ""
    out = subprocess.run([REAL_DFU_UTIL, "-V"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else ""


needs_dfu_util_011 = pytest.mark.skipif(_real_dfu_util_version() != "dfu-util 0.11",
                                        reason="dfu-util 0.11 (Debian package) not installed")


def _printf_regex(fmt: str) -> re.Pattern[str]:
    """A C format string as a regex for what it prints."""
    out, pos = "", 0
    for m in re.finditer(r"%[-0-9.]*(?:ll|l)?[diuxXs%c]", fmt):
        out += re.escape(fmt[pos:m.start()])
        out += "%" if m.group() == "%%" else ".*?"
        pos = m.end()
    return re.compile(out + re.escape(fmt[pos:]) + "$")


def _template_regex(text: str) -> re.Pattern[str]:
    """A contract line with ``{name}`` placeholders as a regex."""
    parts = re.split(r"\{[a-z_]+\}", text)
    return re.compile(".+?".join(re.escape(p) for p in parts) + "$", re.S)


def _binary_strings(path: str) -> List[str]:
    data = Path(path).read_bytes()
    return [m.group().decode() for m in re.finditer(rb"[\x20-\x7e\t]{4,}", data)]


# --- the contract against the real dfu-util -----------------------------------------------

@needs_dfu_util_011
def test_every_dfu_util_text_of_the_contract_is_in_the_real_binary():
    blob = "\n".join(_binary_strings(str(REAL_DFU_UTIL)))
    missing = []
    for key, fmt in DFU["formats"].items():
        # "%s DFU version %04x" is printed from " DFU version %04x" and a word: each
        # literal piece between the conversions must be in the binary
        pieces = [p for p in re.split(r"%[-0-9.]*(?:ll|l)?[diuxXsc]", fmt) if len(p.strip()) >= 3]
        if not all(p in blob for p in pieces):
            missing.append(key)
    assert missing == []
    # ...and the texts the doubles once had are not
    for invented in ("Invalid DfuSe modifier", "No such Alternate Setting"):
        assert invented not in blob


def _run(argv: List[str], env: Dict[str, str],
         executable: str | None = None) -> Tuple[int, List[str], List[str]]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          executable=executable)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines()


@needs_dfu_util_011
@pytest.mark.parametrize("args", [
    [], ["-l"], ["-V"], ["-x"], ["--bogus"], ["-a"],
    ["-D", "/nonexistent/klipper.bin"],
    ["-a", "0", "-d", "0483:df11", "-s", "0x08000000:leave", "-D", "{image}"],
], ids=["no-action", "list", "version", "short-option", "long-option", "missing-argument",
        "missing-file", "no-board"])
def test_the_dfu_util_double_answers_like_the_real_one_without_a_board(args, tmp_path):
    image = tmp_path / "klipper.bin"
    image.write_bytes(make_klipper_image("stm32f446xx", "v0.12.0"))
    argv = [a.replace("{image}", str(image)) for a in args]
    machine = SimulatedMachine(str(tmp_path / "sim"))       # no board in DFU mode
    double = machine.tool_paths()["dfu_util"]
    # as a user types it (getopt names the program by argv[0])
    real_code, real_out, real_err = _run(["dfu-util", *argv], dict(os.environ),
                                         executable=str(REAL_DFU_UTIL))
    sim_code, sim_out, sim_err = _run([double, *argv], dict(os.environ))
    assert sim_code == real_code
    assert [line for line in sim_out if line] == [line for line in real_out if line]
    # the double prints the first line of the usage text, not all of it
    assert sim_err == real_err[:len(sim_err)] and len(sim_err) >= min(1, len(real_err))


# --- the dfu-util double against the contract ---------------------------------------------

def _dfu_lines_are_real(lines: List[str]) -> List[str]:
    patterns = [_printf_regex(f) for f in DFU["formats"].values()]
    prefix = DFU["stderr_prefix"]
    unknown = []
    for line in lines:
        text = line[len(prefix):] if line.startswith(prefix) else line
        text = text.replace("Warning: ", "", 1)
        if not text.strip() or text.startswith(("Copyright", "This program", "Please report",
                                                "dfu-util 0.11", "Usage: dfu-util")):
            continue
        if re.match(r"^(Erase|Download)\s*\[[= ]*\]", text.strip()):
            continue      # the progress bar
        if text.startswith("Erase    done.") or text.strip() == "Download done.":
            continue      # printed by dfu_progress_bar's callers (see the notes)
        if not any(p.match(text) for p in patterns):
            unknown.append(line)
    return unknown


@pytest.mark.parametrize("fault, spec, expect_code", [
    (None, "0x08008000:leave", 74),                   # a good write, then the leave error
    (None, "0x08000000:mass-erase:force:leave", 74),
    (None, "0x08000000:mass-erase:leave", 64),       # dfu-util wants force for mass-erase
    (None, "0x08008000:leve", 64),                    # a misspelt modifier
    ("dfu_download_error", "0x08008000:leave", 74),
    ("dfu_mass_erase_unsupported", "0x08000000:mass-erase:force", 74),
    ("usb_access_denied", "0x08008000:leave", 74),
])
def test_the_dfu_util_double_prints_only_real_lines(fault, spec, expect_code, tmp_path):
    machine = SimulatedMachine(str(tmp_path / "sim"))
    machine.tool_delay = 0.01
    board = machine.add_board("octopus", "stm32f446xx", bootloader=None, mode="dfu")
    if fault:
        board.set_fault(fault)
    image = tmp_path / "klipper.bin"
    image.write_bytes(make_klipper_image("stm32f446xx", "v0.12.0"))
    code, out, err = _run([machine.tool_paths()["dfu_util"], "-a", "0", "-d", "0483:df11",
                           "-s", spec, "-D", str(image)], dict(os.environ))
    assert code == expect_code and code in DFU["exit"].values()
    lines = [part for line in out + err for part in line.split("\r")]
    assert _dfu_lines_are_real(lines) == []
    if fault == "usb_access_denied":
        assert err[-2:] == [
            f"dfu-util: Cannot open DFU device 0483:df11 found on devnum {board.usb_address} "
            "(LIBUSB_ERROR_ACCESS)", "dfu-util: No DFU capable USB device available"]


def test_a_missing_alt_setting_is_no_device_as_in_dfu_util(tmp_path):
    machine = SimulatedMachine(str(tmp_path / "sim"))
    machine.add_board("octopus", "stm32f446xx", bootloader=None, mode="dfu")
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"\0" * 64)
    code, _out, err = _run([machine.tool_paths()["dfu_util"], "-a", "7", "-s", "0x08008000",
                            "-D", str(image)], dict(os.environ))
    assert code == 74 and err[-1] == "dfu-util: No DFU capable USB device available"


# --- the flashtool double against the contract --------------------------------------------

def _flashtool_unknown(version: str, out: List[str], err: List[str]) -> List[str]:
    facts = CONTRACT["flashtool"][version]
    patterns = [_template_regex(t) for t in list(facts["stdout"].values())
                + list(facts["errors"].values())]
    unknown = []
    for line in out:
        if not line.strip() or set(line.strip()) <= set("[#]"):
            continue          # the progress bars
        if not any(p.match(line) for p in patterns):
            unknown.append(line)
    errors = [line.split(": ", 1)[1] for line in err if re.match(r"^\w*Error: ", line)]
    unknown += [f"(error) {e}" for e in errors if not any(p.match(e) for p in patterns)]
    marks = [line for line in err if line.startswith("ERROR:root:")]
    unknown += [m for m in marks if m != facts["stderr"]["error_mark"]]
    return unknown


def _flashtool_scenarios(tmp_path: Path, version: str):
    """(argv, fault, expected exit) runs over serial and CAN, each on a fresh machine."""
    return [
        ("serial-request", ["-d", "{serial}", "-f", "{image}", "-r"], None, 0),
        ("serial-status", ["-d", "{katapult}", "-s"], None, 2 if version == "legacy" else 0),
        ("serial-write", ["-d", "{katapult}", "-f", "{image}"], None, 0),
        ("serial-in-use", ["-d", "{katapult}", "-f", "{image}"], "serial_in_use", 1),
        ("write-error", ["-d", "{katapult}", "-f", "{image}"], "katapult_write_error", 1),
        ("verify-error", ["-d", "{katapult}", "-f", "{image}"], "katapult_verify_error", 1),
        ("link-lost", ["-d", "{katapult}", "-f", "{image}"], "katapult_link_lost", 1),
        ("no-katapult", ["-d", "{katapult}", "-f", "{image}"], "katapult_connect_error", 1),
        ("can-query", ["-i", "can0", "-q"], None, 0),
        ("can-request", ["-i", "can0", "-u", "{uuid}", "-r"], None, 0),
        ("can-write", ["-i", "can0", "-u", "{uuid}", "-f", "{node_image}"], None, 0),
        ("can-down", ["-i", "can1", "-u", "{uuid}", "-f", "{node_image}"], None, 1),
        ("bridge-request", ["-i", "can0", "-u", "{bridge}", "-r"], None, 0),
        ("bridge-not-katapult", ["-i", "can0", "-u", "{bridge}", "-r"], "bare", 0),
    ]


@pytest.mark.parametrize("version", ["current", "legacy"])
def test_the_flashtool_double_prints_only_real_lines(version, tmp_path):
    failures = {}
    for name, args, fault, expect in _flashtool_scenarios(tmp_path, version):
        machine = SimulatedMachine(str(tmp_path / name))
        machine.tool_delay = 0.01
        machine.flashtool_version = version
        usb = machine.add_board("usb", "stm32f446xx", firmware={"version": "v0.12.0"},
                                bootloader=None if fault == "bare" else "katapult")
        if fault == "bare":
            usb.set_mode("klipper-canbridge", delay=0.0)
            usb.update(lambda s: s.__setitem__("transport", "usb"))
        kat = machine.add_board("kat", "stm32f446xx", mode="katapult")
        node = machine.add_board("node", "stm32g0b1xx", transport="can",
                                 firmware={"version": "v0.12.0"})
        bridge = machine.add_board("bridge", "stm32f446xx",
                                   firmware={"version": "v0.12.0", "bridge": True})
        if fault and fault != "bare":
            kat.set_fault(fault)
        image = tmp_path / "klipper.bin"
        image.write_bytes(make_klipper_image("stm32f446xx", "v0.12.0"))
        node_image = tmp_path / "node" / "klipper.bin"
        node_image.parent.mkdir(exist_ok=True)
        node_image.write_bytes(make_klipper_image("stm32g0b1xx", "v0.12.0", canbus=True))
        values = {"{serial}": usb.by_id_path() or usb.tty_path,
                  "{katapult}": kat.by_id_path(), "{image}": str(image),
                  "{node_image}": str(node_image),
                  "{uuid}": node.canbus_uuid,
                  "{bridge}": (usb if fault == "bare" else bridge).canbus_uuid}
        argv = [values.get(a, a) for a in args]
        code, out, err = _run([sys.executable, machine.tool_paths()["flashtool"], *argv],
                              dict(os.environ))
        facts = CONTRACT["flashtool"][version]
        unknown = _flashtool_unknown(version, out, err)
        if code != expect or code not in facts["exit"].values() or unknown:
            failures[name] = (code, unknown, out[-3:], err[-2:])
        if name == "bridge-not-katapult" and version == "current":
            assert facts["stdout"]["not_katapult"] in out and \
                out[-1] == facts["stdout"]["request_done"]
    assert failures == {}, json.dumps(failures, indent=1)


def test_katapult_node_ids_are_modelled_as_katapult_does(tmp_path):
    """-s leaves the node assigned (it ignores the query); -q clears every id first."""
    machine = SimulatedMachine(str(tmp_path / "sim"))
    machine.tool_delay = 0.01
    machine.add_can_adapter("can0")
    node = machine.add_board("node", "stm32g0b1xx", transport="can", mode="katapult")
    tool = machine.tool_paths()["flashtool"]
    code, out, _ = _run([sys.executable, tool, "-i", "can0", "-u", node.canbus_uuid, "-s"],
                        dict(os.environ))
    assert code == 0 and out[-1] == "Status Request Complete" and node.node_assigned
    code, out, _ = _run([sys.executable, tool, "-i", "can0", "-q"], dict(os.environ))
    assert code == 0 and "Resetting all bootloader node IDs..." in out
    assert f"Detected UUID: {node.canbus_uuid}, Application: Katapult" in out
    assert not node.node_assigned


# --- the contract against a Katapult checkout ---------------------------------------------

def _katapult_flashtool() -> str:
    for base in KATAPULT_CHECKOUTS:
        path = os.path.join(base, "scripts", "flashtool.py") if base else ""
        if path and os.path.isfile(path):
            text = Path(path).read_text()
            if "Device is not Katapult" in text:       # the current generation
                return text
    return ""


@pytest.mark.skipif(not _katapult_flashtool(), reason="no current Katapult checkout here")
def test_the_current_flashtool_lines_are_in_katapults_flashtool():
    source = _katapult_flashtool()
    facts = CONTRACT["flashtool"]["current"]
    missing = []
    for key, text in list(facts["stdout"].items()) + list(facts["errors"].items()):
        for fragment in re.split(r"\{[a-z_]+\}", text):
            fragment = fragment.strip(" .")
            # "Error sending command [CONNECT]" is printed from "[%s]" % cmdname
            printf = re.sub(r"\[[A-Z_]+\]", "[%s]", fragment)
            if len(fragment) >= 4 and fragment not in source and printf not in source:
                missing.append((key, fragment))
    # flashtool builds a few of its lines from two string literals
    assert [m for m in missing if m[0] not in ("mcu_mismatch",)] == []
    assert "logging.exception(\"Flash Tool Error\")" in source


def test_the_tool_doubles_start_without_the_products_tables():
    """A test run starts the flashtool.py and dfu-util doubles several hundred times:
    they read a board's MCU facts from its state (written when the board was made)
    instead of importing the product's MCU tables, device readers and typing."""
    heavy = ("typing", "dataclasses", "hashlib", "random", "moonraker_octoflash.mcus",
             "moonraker_octoflash.presets", "moonraker_octoflash.discovery.serial",
             "moonraker_octoflash.discovery.usb")
    probe = ("import sys\n"
             "import moonraker_octoflash.sim.dfu_util, moonraker_octoflash.sim.flashtool\n"
             f"print(' '.join(m for m in {heavy!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_a_board_folder_from_before_the_kept_facts_still_flashes(tmp_path):
    """A demo's data folder (``--data-dir``) made by an earlier version has boards whose
    state lacks the facts kept at creation: they are worked out again when read."""
    machine = SimulatedMachine(str(tmp_path / "machine"))
    machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                      firmware={"version": "v0.12.0-1-gabc"})
    board = machine.board("octopus")
    by_id = board.by_id_name()
    assert [r["address"] for r in board.regions()] == [0x08000000, 0x08008000]
    state_path = Path(board.state_path)
    state = json.loads(state_path.read_text())
    for key in ("flash_base", "sector_runs", "by_id_names"):
        del state[key]
    state_path.write_text(json.dumps(state))

    assert board.flash_base == 0x08000000
    assert board.by_id_name() == by_id and by_id.startswith("usb-Klipper_stm32f446xx_")
    board.erase(0x08008000, 1)          # the F446's 16 KiB sector at 0x08008000
    assert [r["address"] for r in board.regions()] == [0x08000000]
    assert board.read_flash(0x08008000, 0x4000) == b"\xff" * 0x4000
