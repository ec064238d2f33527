"""``install.sh``: install, update and remove octoflash on a KIAUH-style printer.

Run by ``install.sh`` with the system's ``python3`` before the package is
installed anywhere, so only the standard library and the package's
standard-library modules are used.  Every change goes through
``Session.change``: it is printed, asked for on a terminal (``--yes``
accepts all), skipped by ``--dry-run``, and recorded for the closing
summary.  Files are copied to a timestamped backup folder before they are
edited.  Bad input (an unknown instance, a missing virtualenv) stops before
anything is changed.
"""
from __future__ import annotations

import argparse
import datetime
import filecmp
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TextIO

from .discovery.permissions import UDEV_RULE_NAME, UDEV_RULES_DIR, udev_rule, valid_user
from .moonraker import conffile
from .moonraker.layout import Instance, find_instances, is_checkout, systemd_dir
from .moonraker.link import LINK_NAME, exclude_entry, link_component
from .moonraker.web import PAGE_PATH, add_navi_link, remove_navi_link

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACROS_SOURCE = os.path.join(SOURCE_DIR, "docs", "macros.cfg")
MACROS_FILE = "octoflash-macros.cfg"
KATAPULT_ORIGIN = "https://github.com/Arksine/katapult.git"
PACKAGE = "moonraker-octoflash"

# The programs builds and flashes need, and the Debian packages that bring them.
TOOLS: Dict[str, List[str]] = {
    "make": ["make"],
    "arm-none-eabi-gcc": ["gcc-arm-none-eabi", "binutils-arm-none-eabi",
                          "libnewlib-arm-none-eabi"],
    "dfu-util": ["dfu-util"],
}

PIP_TIMEOUT = 900.0
APT_TIMEOUT = 1800.0
GIT_TIMEOUT = 600.0
SHORT_TIMEOUT = 60.0

DESCRIPTION = """\
Install moonraker-octoflash into Moonraker the way KIAUH installs extensions,
or remove it again (--uninstall).

Every Moonraker instance is found: ~/printer_data, ~/printer_N_data and
~/NAME_data, with their services moonraker, moonraker-N and moonraker-NAME
(read from /etc/systemd/system/moonraker*.service when they exist).  With
one instance it is used; with several, name them with --instance or take
--all (on a terminal you are asked).

Install: checks for make, the ARM toolchain, dfu-util and a Katapult checkout
(offers to install what is missing), installs the package into Moonraker's
virtualenv, links the component into Moonraker (hidden from Moonraker's git
status), makes `octoflash` reachable on PATH (~/.local/bin), adds [octoflash]
and [update_manager octoflash] to moonraker.conf, the Firmware link to
Mainsail's sidebar and the macros to printer.cfg, installs the udev rule
/etc/udev/rules.d/70-octoflash.rules (the Moonraker service's user may open
the STM32 DFU, Katapult, Klipper, USB-CAN bridge and RP2040 boot devices,
which dfu-util and octoflash need without sudo) and reloads udev, and
restarts Moonraker.
Running it again changes nothing that is already in place, and restores the
component link after Moonraker was re-cloned (a hard recovery or a KIAUH
reinstall).

Uninstall: removes all of that again (the udev rule once no instance uses
octoflash); the [octoflash...] sections are saved to
the backup folder first (--keep-config keeps them in moonraker.conf, commented
out).  The build folder is removed only with --remove-builds.

On a terminal every change is asked for first; without one, pass --yes (or
--dry-run to see what would change).  Files are copied to
<data folder>/backup/octoflash-<time>/ before they are changed."""

EPILOG = """\
Run it as the user Moonraker runs as (e.g. pi), not as root: the files it
writes must belong to that user.  It uses sudo itself where it must
(apt-get, systemctl).  --allow-root overrides this, e.g. in a container
where Moonraker runs as root."""


class InstallError(Exception):
    """Bad input or a layout that cannot be used: said before anything changes."""


@dataclass
class Session:
    """Asks for, makes and records the changes of one run."""

    yes: bool
    dry_run: bool
    out: TextIO
    stdin: TextIO
    stamp: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    done: List[str] = field(default_factory=list)
    declined: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    left: List[str] = field(default_factory=list)
    backups: Dict[str, str] = field(default_factory=dict)
    folders: Dict[str, str] = field(default_factory=dict)   # data folder -> this run's backups

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def ask(self, question: str) -> bool:
        if self.yes or self.dry_run:
            return True
        self.out.write(f"{question} [Y/n] ")
        self.out.flush()
        answer = self.stdin.readline()
        if not answer:
            self.say("")
            return False
        return answer.strip().lower() in ("", "y", "yes")

    def change(self, what: str, action: Callable[[], Optional[str]]) -> bool:
        """Make one change (after asking); True when it was made (or would be, in a dry run)."""
        if self.dry_run:
            self.say(f"would: {what}")
            self.done.append(what)
            return True
        if not self.ask(f"{what[0].upper()}{what[1:]}?"):
            self.say(f"  skipped: {what}")
            self.declined.append(what)
            return False
        try:
            note = action()
        except (OSError, ValueError, InstallError, subprocess.SubprocessError) as exc:
            self.say(f"  failed: {what}: {exc}")
            self.failed.append(f"{what}: {exc}")
            return False
        self.say(f"  done: {what}" + (f" ({note})" if note else ""))
        self.done.append(what)
        return True

    def backup(self, instance: Instance, path: str) -> Optional[str]:
        """Copy ``path`` into this run's backup folder of ``instance``; return the copy."""
        if not os.path.exists(path):
            return None
        folder = self.backup_folder(instance)
        relative = os.path.relpath(path, instance.data_dir)
        if relative.startswith(".."):
            relative = os.path.basename(path)
        copy = os.path.join(folder, relative)
        if copy not in self.backups:
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(path, copy)
            self.backups[copy] = path
        return copy

    def backup_folder(self, instance: Instance) -> str:
        """``<data>/backup/octoflash-<time>``, one per run (never an earlier run's)."""
        folder = self.folders.get(instance.data_dir)
        if folder is None:
            base = os.path.join(instance.data_dir, "backup", f"octoflash-{self.stamp}")
            folder, n = base, 1
            while os.path.exists(folder):
                n += 1
                folder = f"{base}-{n}"
            self.folders[instance.data_dir] = folder
        return folder

    def summary(self, action: str) -> None:
        self.say("")
        if self.dry_run:
            self.say(f"Dry run: nothing was changed. {action} would:")
            for item in self.done:
                self.say(f"  - {item}")
        else:
            self.say(f"{action}: done" if not self.failed else f"{action}: finished with errors")
            if self.done:
                self.say("Done:")
                for item in self.done:
                    self.say(f"  - {item}")
            if not self.done and not self.failed:
                self.say("Nothing to change: everything is in place.")
            if self.backups:
                self.say("Backups (copies made before the changes):")
                for copy in sorted(self.backups):
                    self.say(f"  - {copy}")
            if self.failed:
                self.say("Failed:")
                for item in self.failed:
                    self.say(f"  - {item}")
            if self.declined:
                self.say("Skipped (you said no):")
                for item in self.declined:
                    self.say(f"  - {item}")
        if self.left:
            self.say("Left for you:")
            for item in self.left:
                self.say(f"  - {item}")


# --- reading the machine -------------------------------------------------------

def run(argv: Sequence[str], timeout: float, cwd: Optional[str] = None,
        quiet: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(list(argv), capture_output=quiet, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)


def checked(argv: Sequence[str], timeout: float, cwd: Optional[str] = None) -> None:
    """Run a program; its last lines of output become the error when it fails."""
    proc = run(argv, timeout, cwd)
    if proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-5:])
        raise InstallError(f"{' '.join(argv[:4])} … exited with {proc.returncode}: {tail}")


def runs(argv: Sequence[str], timeout: float) -> Callable[[], None]:
    """A change that runs one program (see ``checked``)."""
    def action() -> None:
        checked(argv, timeout)
    return action


def unlinks(checkout: str) -> Callable[[], None]:
    def action() -> None:
        link_component(checkout, remove=True)
    return action


def removes(path: str) -> Callable[[], None]:
    def action() -> None:
        os.unlink(path)
    return action


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def python_version_ok(python: str) -> bool:
    try:
        proc = run([python, "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)"],
                   SHORT_TIMEOUT, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def installed_from(python: str) -> Optional[str]:
    """The folder ``moonraker_octoflash`` is imported from by ``python``, or None."""
    try:
        code = ("import os, moonraker_octoflash as m; "
                "print(os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))))")
        proc = run([python, "-c", code], SHORT_TIMEOUT, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_origin(path: str) -> Optional[str]:
    try:
        proc = run(["git", "-C", path, "remote", "get-url", "origin"], SHORT_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def sudo_prefix() -> List[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(path: str, text: str) -> None:
    """Replace a file's text in one step, keeping its permissions."""
    tmp = path + ".octoflash-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    if os.path.exists(path):
        shutil.copymode(path, tmp)
    os.replace(tmp, path)


def octoflash_configured(instance: Instance) -> bool:
    try:
        text = read(instance.moonraker_conf)
    except OSError:
        return False
    return any(conffile.is_octoflash_section(n) for n in conffile.section_names(text))


# --- choosing instances --------------------------------------------------------

def select_instances(found: List[Instance], wanted: List[str], take_all: bool,
                     session: Session, interactive: bool) -> List[Instance]:
    if not found:
        raise InstallError(
            "no Moonraker instance found: looked for ~/printer_data, ~/printer_N_data and "
            f"~/NAME_data holding config/moonraker.conf, and for moonraker*.service in "
            f"{systemd_dir()}. Install Moonraker first (e.g. with KIAUH), or pass --instance "
            "with its data folder")
    if take_all:
        return found
    if wanted:
        chosen: List[Instance] = []
        for name in wanted:
            matches = [i for i in found if i.matches(name)]
            if not matches and os.path.isdir(name):
                path = os.path.abspath(name)
                matches = [i for i in found if i.data_dir == path]
            if not matches:
                raise InstallError(
                    f"no Moonraker instance '{name}'; found: "
                    + ", ".join(f"{i.name} ({i.service})" for i in found))
            chosen.extend(m for m in matches if m not in chosen)
        return chosen
    if len(found) == 1:
        return found
    listing = "\n".join(f"  {n}) {i.name} (service {i.service})" for n, i in enumerate(found, 1))
    if not interactive:
        raise InstallError(
            f"{len(found)} Moonraker instances found:\n{listing}\n"
            "name the ones to use with --instance NAME (repeatable) or take --all")
    session.say(f"{len(found)} Moonraker instances found:\n{listing}")
    session.out.write("Which ones? (numbers separated by spaces, or 'all') ")
    session.out.flush()
    answer = session.stdin.readline().strip().lower()
    if answer in ("all", "a"):
        return found
    chosen = []
    for word in answer.replace(",", " ").split():
        if not word.isdigit() or not 1 <= int(word) <= len(found):
            raise InstallError(f"'{word}' is not one of the numbers 1 to {len(found)}")
        if found[int(word) - 1] not in chosen:
            chosen.append(found[int(word) - 1])
    if not chosen:
        raise InstallError("no instance chosen: nothing changed")
    return chosen


# --- install -------------------------------------------------------------------

def section_octoflash(source: str) -> str:
    return (f"[octoflash]\n"
            f"# Options: see {source}/docs/moonraker.md\n"
            f"klipper_path: ~/klipper\n"
            f"katapult_path: ~/katapult\n")


def section_update_manager(source: str, origin: str, venv: str) -> str:
    # managed_services takes Moonraker's own names ("moonraker" is the unit of the
    # instance reading it, moonraker-2 for the second one), not unit names.
    return (f"[update_manager octoflash]\n"
            f"type: git_repo\n"
            f"path: {source}\n"
            f"origin: {origin}\n"
            f"primary_branch: main\n"
            f"virtualenv: {venv}\n"
            f"requirements: scripts/octoflash-requirements.txt\n"
            f"system_dependencies: scripts/system-dependencies.json\n"
            f"managed_services: moonraker\n")


def check_dependencies(session: Session, home: str, katapult_origin: str) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = [p for tool in missing for p in TOOLS[tool]]
        what = (f"install {', '.join(missing)} (apt-get install {' '.join(packages)}), "
                "needed to build and flash")
        if shutil.which("apt-get") is None:
            session.left.append(f"{', '.join(missing)} missing and no apt-get here: install "
                                f"{' '.join(packages)} yourself")
        elif not session.change(what, runs([*sudo_prefix(), "apt-get", "install", "-y",
                                            *packages], APT_TIMEOUT)):
            session.left.append(f"install {' '.join(packages)} (builds and flashes need "
                                f"{', '.join(missing)})")
    katapult = os.path.join(home, "katapult")
    if not os.path.isfile(os.path.join(katapult, "scripts", "flashtool.py")):
        if os.path.exists(katapult):
            session.left.append(f"{katapult} is not a Katapult checkout (no scripts/flashtool.py):"
                                " Katapult builds and flashes need one")
        elif not session.change(
                f"clone Katapult from {katapult_origin} into {katapult} (Katapult builds and "
                "flashes need it)",
                runs(["git", "clone", "--", katapult_origin, katapult], GIT_TIMEOUT)):
            session.left.append(f"clone Katapult into {katapult} (git clone {katapult_origin})")
    klipper = os.path.join(home, "klipper")
    if not os.path.isdir(klipper):
        session.left.append(f"no Klipper checkout at {klipper}: install Klipper (KIAUH) or set "
                            "klipper_path in [octoflash]")


def install_package(session: Session, venv: str, source: str) -> bool:
    python = venv_python(venv)
    if installed_from(python) == source:
        return False
    return session.change(
        f"install {PACKAGE} into {venv} (pip install -e {source})",
        installs_editable(python, source))


def installs_editable(python: str, source: str) -> Callable[[], None]:
    """``pip install -e source``, as one path line where pip and setuptools offer it.

    setuptools' default editable install of this project adds an import
    finder that every Python start in the virtualenv loads, Moonraker's own
    and each Kconfig child's: 20 ms on a PC, several times that on a Pi.
    Its "compat" mode is a plain path line.  An older pip (Bullseye's 20.3
    has no ``--config-settings``) or a setuptools without that mode gets the
    default install.
    """
    argv = [python, "-m", "pip", "install", "-q", "-e", source]

    def action() -> None:
        try:
            checked(argv + ["--config-settings", "editable_mode=compat"], PIP_TIMEOUT)
        except InstallError:
            checked(argv, PIP_TIMEOUT)
    return action


def link_into(session: Session, checkout: str) -> bool:
    components = os.path.join(checkout, "moonraker", "components")
    target = os.path.join(components, LINK_NAME)
    entry = exclude_entry(components)
    hidden = entry is None or (os.path.exists(entry[0]) and entry[1] in read(entry[0]).splitlines())
    if os.path.exists(target) and os.path.realpath(target) != target and hidden:
        return False
    note = " and list it in .git/info/exclude so Moonraker stays pristine" if entry else ""
    def link() -> None:
        link_component(checkout)
    return session.change(f"link the component into Moonraker: {target}{note}", link)


def put_on_path(session: Session, home: str, venv: str) -> None:
    command = os.path.join(venv, "bin", "octoflash")
    bin_dir = os.path.join(home, ".local", "bin")
    launcher = os.path.join(bin_dir, "octoflash")
    on_path = shutil.which("octoflash")
    if on_path and os.path.realpath(on_path) == os.path.realpath(command):
        return
    if not (os.path.islink(launcher) and os.readlink(launcher) == command):
        if os.path.lexists(launcher) and not os.path.islink(launcher):
            session.left.append(f"{launcher} exists and is not octoflash's: run {command}")
            return

        def make_link() -> None:
            os.makedirs(bin_dir, exist_ok=True)
            if os.path.lexists(launcher):
                os.unlink(launcher)
            os.symlink(command, launcher)
        if not session.change(f"make `octoflash` a command: {launcher} -> {command}", make_link):
            session.left.append(f"run octoflash as {command}")
            return
    path_dirs = [os.path.realpath(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    if os.path.realpath(bin_dir) not in path_dirs:
        session.left.append(f"{bin_dir} is not on your PATH yet: log in again (Debian's "
                            f"~/.profile adds it) or run {command}")


def edit(session: Session, instance: Instance, path: str, what: str,
         new_text: Callable[[str], str]) -> bool:
    """One change of a config file: backed up, then replaced in one step."""
    before = read(path) if os.path.exists(path) else ""
    if new_text(before) == before:
        return False

    def apply() -> str:
        copy = session.backup(instance, path)
        write(path, new_text(read(path) if os.path.exists(path) else ""))
        return f"backup: {copy}" if copy else ""
    return session.change(what, apply)


def install_instance(session: Session, instance: Instance, source: str,
                     origin: Optional[str], macros: bool) -> bool:
    changed = False
    conf = instance.moonraker_conf
    if not os.path.isfile(conf):
        session.left.append(f"no {conf}: add an [octoflash] section to your Moonraker config "
                            "(docs/moonraker.md)")
        return False
    text = read(conf)
    if not any(conffile.is_octoflash_section(n) for n in conffile.section_names(text)):
        kept = conffile.take_kept(text)[1]
        if kept.strip():
            changed |= edit(session, instance, conf,
                            f"restore the [octoflash…] sections kept at uninstall in {conf}",
                            lambda t: conffile.append_section(conffile.take_kept(t)[0],
                                                              conffile.take_kept(t)[1]))
        else:
            changed |= edit(session, instance, conf, f"add [octoflash] to {conf}",
                            lambda t: conffile.append_section(t, section_octoflash(source)))
    if origin is None:
        session.left.append(f"this checkout has no git remote: add [update_manager octoflash] "
                            f"to {conf} yourself (docs/update-manager.md)")
    elif not conffile.has_section(read(conf), "update_manager octoflash"):
        body = section_update_manager(source, origin, instance.venv_dir)
        changed |= edit(session, instance, conf,
                        f"add [update_manager octoflash] to {conf} (octoflash in the update panel)",
                        lambda t: conffile.append_section(t, body))
    navi = os.path.join(instance.config_dir, ".theme", "navi.json")
    if not _navi_has_link(navi):
        def add_link() -> str:
            copy = session.backup(instance, navi)
            add_navi_link(instance.config_dir)
            return f"backup: {copy}" if copy else ""
        changed |= session.change(f"add the Firmware link to Mainsail's sidebar ({navi})", add_link)
    if macros:
        changed |= install_macros(session, instance)
    return changed


def _navi_has_link(path: str) -> bool:
    import json
    try:
        entries = json.loads(read(path))
    except (OSError, ValueError):
        return False
    return isinstance(entries, list) and any(
        isinstance(e, dict) and e.get("href") == PAGE_PATH for e in entries)


def install_macros(session: Session, instance: Instance) -> bool:
    printer_cfg = instance.printer_cfg
    target = os.path.join(instance.config_dir, MACROS_FILE)
    if not os.path.isfile(printer_cfg):
        session.left.append(f"no {printer_cfg}: to use the macros, copy {MACROS_SOURCE} to "
                            f"{target} and add [include {MACROS_FILE}] to your printer.cfg")
        return False
    changed = False
    if not (os.path.isfile(target) and filecmp.cmp(MACROS_SOURCE, target, shallow=False)):
        def copy_macros() -> str:
            copy = session.backup(instance, target)
            shutil.copyfile(MACROS_SOURCE, target)
            return f"backup of the old file: {copy}" if copy else ""
        changed |= session.change(
            f"copy the macros (OCTOFLASH_BUILD, OCTOFLASH_FLASH, OCTOFLASH_UPDATE_ALL) to {target}",
            copy_macros)
    if os.path.isfile(target) or session.dry_run:
        changed |= edit(session, instance, printer_cfg,
                        f"add [include {MACROS_FILE}] to {printer_cfg}",
                        lambda t: conffile.add_include(t, MACROS_FILE))
    return changed


def restart(session: Session, instances: List[Instance], allowed: bool) -> None:
    for instance in instances:
        how = f"sudo systemctl restart {instance.service}"
        if not allowed:
            session.left.append(f"restart Moonraker to load the change ({how})")
            continue
        if instance.unit_file is None or shutil.which("systemctl") is None:
            session.left.append(f"restart Moonraker of {instance.name} yourself: it is not a "
                                f"systemd service here (no {instance.service}.service)")
            continue
        if not session.change(f"restart {instance.service}", runs(
                [*sudo_prefix(), "systemctl", "restart", instance.service], SHORT_TIMEOUT)):
            session.left.append(f"restart Moonraker to load the change ({how})")


def install(session: Session, home: str, instances: List[Instance], args: argparse.Namespace,
            source: str) -> None:
    if not args.skip_dependencies:
        check_dependencies(session, home, args.katapult_origin)
    changed: List[Instance] = []
    code_changed = False
    for venv in unique(i.venv_dir for i in instances):
        code_changed |= install_package(session, venv, source)
    for checkout in unique(i.moonraker_dir for i in instances):
        code_changed |= link_into(session, checkout)
    put_on_path(session, home, instances[0].venv_dir)
    install_udev_rule(session, instances)
    origin = git_origin(source)
    for instance in instances:
        if install_instance(session, instance, source, origin, not args.no_macros) or code_changed:
            changed.append(instance)
    restart(session, changed, not args.no_restart)
    if changed or session.dry_run:
        session.left.append("add one [octoflash NAME] section per MCU (docs/moonraker.md); "
                            "`octoflash presets` lists the board configurations")


# --- USB permissions: the udev rule ----------------------------------------------

def udev_rules_dir() -> str:
    """Where udev rules go (``OCTOFLASH_UDEV_RULES_DIR`` moves it, for tests)."""
    return os.environ.get("OCTOFLASH_UDEV_RULES_DIR") or UDEV_RULES_DIR


def service_user(instances: List[Instance]) -> str:
    """The user Moonraker's service runs as (its unit's ``User=``), else this user."""
    for instance in instances:
        if not instance.unit_file:
            continue
        try:
            text = read(instance.unit_file)
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "User" and value.strip():
                return value.strip()
    import getpass
    return getpass.getuser()


def _privileged(path: str) -> List[str]:
    """``sudo`` when this user may not write ``path``'s folder."""
    return [] if os.access(os.path.dirname(path), os.W_OK) else sudo_prefix()


def reload_udev(session: Session) -> None:
    """udev reads the rules again and applies them to the boards plugged in now."""
    if shutil.which("udevadm") is None:
        session.left.append("udevadm not found: the udev rule applies once the boards are "
                            "plugged in again (or after a reboot)")
        return
    for argv in (["udevadm", "control", "--reload-rules"],
                 ["udevadm", "trigger", "--subsystem-match=usb", "--action=add"]):
        try:
            proc = run([*sudo_prefix(), *argv], SHORT_TIMEOUT)
            failed = proc.returncode != 0
            why = (proc.stderr or proc.stdout or "").strip() or f"exit {proc.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            failed, why = True, str(exc)
        if failed:
            session.left.append(f"`sudo {' '.join(argv)}` failed ({why}): unplug and plug in "
                                "the boards (or reboot) for the udev rule to apply")
            return


def install_udev_rule(session: Session, instances: List[Instance]) -> None:
    user = service_user(instances)
    if not valid_user(user):
        session.left.append(f"no udev rule: {user!r} is not a user name it can name")
        return
    path = os.path.join(udev_rules_dir(), UDEV_RULE_NAME)
    text = udev_rule(user)
    try:
        if read(path) == text:
            return
        existed = True
    except OSError:
        existed = False

    def put() -> str:
        note = ""
        if existed:
            copy = session.backup(instances[0], path)
            note = f"backup: {copy}; " if copy else ""
        if not _privileged(path):
            write(path, text)
        else:
            folder = session.backup_folder(instances[0])
            os.makedirs(folder, exist_ok=True)
            staged = os.path.join(folder, UDEV_RULE_NAME + ".new")
            with open(staged, "w", encoding="utf-8") as f:
                f.write(text)
            checked([*sudo_prefix(), "install", "-m", "0644", staged, path], SHORT_TIMEOUT)
        reload_udev(session)
        return note + "udev reloaded" if shutil.which("udevadm") else note + "no udevadm here"
    session.change(f"{'update' if existed else 'install'} the udev rule {path}: {user} (the "
                   "Moonraker service's user) may open the STM32 DFU, Katapult, Klipper, "
                   "USB-CAN bridge and RP2040 boot devices without sudo", put)


def remove_udev_rule(session: Session, instances: List[Instance]) -> None:
    path = os.path.join(udev_rules_dir(), UDEV_RULE_NAME)
    if not os.path.exists(path):
        return

    def take() -> str:
        copy = session.backup(instances[0], path)
        if not _privileged(path):
            os.unlink(path)
        else:
            checked([*sudo_prefix(), "rm", "-f", "--", path], SHORT_TIMEOUT)
        reload_udev(session)
        return f"backup: {copy}" if copy else ""
    session.change(f"remove the udev rule {path}", take)


# --- uninstall -----------------------------------------------------------------

def uninstall_instance(session: Session, instance: Instance, keep_config: bool,
                       remove_builds: bool) -> bool:
    changed = False
    conf = instance.moonraker_conf
    if os.path.isfile(conf):
        text = read(conf)
        build_path = _build_path(text, instance)

        def strip_update_manager(t: str) -> str:
            return conffile.take_sections(t, lambda n: conffile.same_section(
                n, "update_manager octoflash"))[0]
        changed |= edit(session, instance, conf, f"remove [update_manager octoflash] from {conf}",
                        strip_update_manager)
        _rest, sections = conffile.take_sections(read(conf) if not session.dry_run else text,
                                                 conffile.is_octoflash_section)
        if sections:
            if keep_config:
                changed |= edit(
                    session, instance, conf,
                    f"comment out the [octoflash…] sections in {conf} (a later install "
                    "restores them)",
                    lambda t: conffile.append_section(
                        conffile.take_sections(t, conffile.is_octoflash_section)[0],
                        conffile.comment_out(
                            conffile.take_sections(t, conffile.is_octoflash_section)[1])))
            else:
                saved = os.path.join(session.backup_folder(instance), "octoflash-sections.conf")

                def take() -> str:
                    os.makedirs(os.path.dirname(saved), exist_ok=True)
                    copy = session.backup(instance, conf)
                    rest, taken = conffile.take_sections(read(conf), conffile.is_octoflash_section)
                    with open(saved, "w", encoding="utf-8") as f:
                        f.write(taken)
                    session.backups[saved] = conf
                    write(conf, rest)
                    return f"backup: {copy}"
                changed |= session.change(
                    f"remove the [octoflash…] sections from {conf} (saved to {saved} first)", take)
        if remove_builds:
            default = os.path.join(instance.data_dir, "octoflash")
            if build_path and os.path.realpath(build_path) != os.path.realpath(default):
                session.left.append(f"the builds in {build_path} (a build_path of your own): "
                                    "remove them yourself")
            elif os.path.isdir(default):
                changed |= session.change(f"delete the build folder {default}",
                                          lambda: shutil.rmtree(default))
        elif os.path.isdir(build_path or os.path.join(instance.data_dir, "octoflash")):
            session.left.append(f"the build folder {build_path or instance.data_dir + '/octoflash'}"
                                " is kept (--remove-builds deletes it)")
    navi = os.path.join(instance.config_dir, ".theme", "navi.json")
    if _navi_has_link(navi):
        def take_link() -> str:
            copy = session.backup(instance, navi)
            remove_navi_link(instance.config_dir)
            return f"backup: {copy}" if copy else ""
        changed |= session.change(f"remove the Firmware link from Mainsail's sidebar ({navi})",
                                  take_link)
    if os.path.isfile(instance.printer_cfg):
        changed |= edit(session, instance, instance.printer_cfg,
                        f"remove [include {MACROS_FILE}] from {instance.printer_cfg}",
                        lambda t: conffile.remove_include(t, MACROS_FILE))
    macros = os.path.join(instance.config_dir, MACROS_FILE)
    if os.path.isfile(macros):
        def take_macros() -> str:
            copy = session.backup(instance, macros)
            os.unlink(macros)
            return f"backup: {copy}"
        changed |= session.change(f"delete {macros}", take_macros)
    return changed


def _build_path(text: str, instance: Instance) -> Optional[str]:
    _rest, section = conffile.take_sections(text, lambda n: conffile.same_section(n, "octoflash"))
    for line in section.splitlines()[1:]:
        key, sep, value = line.replace("=", ":", 1).partition(":")
        if sep and key.strip() == "build_path" and value.strip():
            path = value.strip().replace("{data_path}", instance.data_dir)
            return os.path.abspath(os.path.expanduser(path))
    return None


def uninstall(session: Session, home: str, instances: List[Instance], others: List[Instance],
              args: argparse.Namespace) -> None:
    changed: List[Instance] = []
    for instance in instances:
        if uninstall_instance(session, instance, args.keep_config, args.remove_builds):
            changed.append(instance)
    still_used = [i for i in others if octoflash_configured(i)]
    code_changed = False
    for checkout in unique(i.moonraker_dir for i in instances):
        users = [i.name for i in still_used if i.moonraker_dir == checkout]
        target = os.path.join(checkout, "moonraker", "components", LINK_NAME)
        if users:
            session.left.append(f"the component link {target} stays: {', '.join(users)} still "
                                "use octoflash")
        elif os.path.lexists(target):
            code_changed |= session.change(
                f"remove the component link {target} (and its .git/info/exclude line)",
                unlinks(checkout))
    for venv in unique(i.venv_dir for i in instances):
        users = [i.name for i in still_used if i.venv_dir == venv]
        if users:
            session.left.append(f"{PACKAGE} stays installed in {venv}: {', '.join(users)} still "
                                "use it")
            continue
        if installed_from(venv_python(venv)) is not None:
            code_changed |= session.change(
                f"uninstall {PACKAGE} from {venv} (pip uninstall)",
                runs([venv_python(venv), "-m", "pip", "uninstall", "-y", "-q", PACKAGE],
                     PIP_TIMEOUT))
        launcher = os.path.join(home, ".local", "bin", "octoflash")
        if os.path.islink(launcher) and os.readlink(launcher) == os.path.join(venv, "bin",
                                                                              "octoflash"):
            session.change(f"remove the `octoflash` command {launcher}", removes(launcher))
    if still_used:
        session.left.append(f"the udev rule stays: {', '.join(i.name for i in still_used)} "
                            "still use octoflash")
    else:
        remove_udev_rule(session, instances)
    if code_changed:
        changed.extend(i for i in instances if i not in changed)
    restart(session, changed, not args.no_restart)
    if changed or session.dry_run:
        session.left.append("profiles made through the API stay in Moonraker's database "
                            "(namespace 'octoflash'); a later install finds them again")


def unique(items: Iterable[str]) -> List[str]:
    seen: List[str] = []
    for item in items:
        path = os.path.abspath(item)
        if path not in seen:
            seen.append(path)
    return seen


# --- command line --------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.sh", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uninstall", action="store_true", help="remove octoflash again")
    p.add_argument("--instance", action="append", default=[], metavar="NAME",
                   help="the Moonraker instance: its data folder (printer_1_data), service "
                        "(moonraker-1) or suffix (1); repeatable")
    p.add_argument("--all", action="store_true", help="every Moonraker instance found")
    p.add_argument("--yes", "-y", action="store_true", help="make every change without asking")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--no-restart", action="store_true", help="do not restart Moonraker")
    p.add_argument("--no-macros", action="store_true",
                   help="do not install the macros into printer.cfg")
    p.add_argument("--skip-dependencies", action="store_true",
                   help="do not check for make, the ARM toolchain, dfu-util and Katapult")
    p.add_argument("--katapult-origin", metavar="URL",
                   default=os.environ.get("OCTOFLASH_KATAPULT_ORIGIN") or KATAPULT_ORIGIN,
                   help=f"where a missing Katapult is cloned from (default {KATAPULT_ORIGIN})")
    p.add_argument("--moonraker", metavar="DIR",
                   help="Moonraker's checkout (default: from the service, else ~/moonraker)")
    p.add_argument("--venv", metavar="DIR",
                   help="Moonraker's virtualenv (default: from the service, else ~/moonraker-env)")
    p.add_argument("--keep-config", action="store_true",
                   help="uninstall: keep the [octoflash…] sections, commented out")
    p.add_argument("--remove-builds", action="store_true",
                   help="uninstall: also delete the build folder (<data folder>/octoflash)")
    p.add_argument("--allow-root", action="store_true",
                   help="run although the user is root (see below)")
    p.add_argument("--source", default=SOURCE_DIR, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         stdin: TextIO = sys.stdin) -> int:
    args = parser().parse_args(argv)
    err = sys.stderr
    try:
        if os.geteuid() == 0 and not args.allow_root:
            raise InstallError("run this as the user Moonraker runs as, not as root: it uses "
                               "sudo where it must (--allow-root overrides, see --help)")
        interactive = stdin.isatty()
        session = Session(yes=args.yes, dry_run=args.dry_run, out=out, stdin=stdin)
        if not (interactive or args.yes or args.dry_run):
            raise InstallError("there is no terminal to ask on: pass --yes to make the changes "
                               "or --dry-run to see them first")
        home = os.path.expanduser("~")
        found = find_instances(home)
        if args.moonraker or args.venv:
            found = [Instance(i.suffix, i.data_dir,
                              os.path.abspath(os.path.expanduser(args.moonraker or i.moonraker_dir)),
                              os.path.abspath(os.path.expanduser(args.venv or i.venv_dir)),
                              i.unit_file) for i in found]
        instances = select_instances(found, args.instance, args.all, session, interactive)
        others = [i for i in found if i not in instances]
        source = os.path.abspath(args.source)
        for instance in instances:
            python = venv_python(instance.venv_dir)
            if not os.access(python, os.X_OK):
                raise InstallError(f"no Python at {python}: is Moonraker's virtualenv elsewhere? "
                                   "Give it with --venv DIR")
            if not is_checkout(instance.moonraker_dir):
                raise InstallError(
                    f"no Moonraker checkout at {instance.moonraker_dir} (no "
                    "moonraker/components/klippy_apis.py): give it with --moonraker DIR")
            if not args.uninstall and not python_version_ok(python):
                raise InstallError(f"Moonraker's Python {python} is older than 3.9, which "
                                   "octoflash needs")
        names = ", ".join(f"{i.name} ({i.service})" for i in instances)
        if args.uninstall:
            session.say(f"Removing moonraker-octoflash from {names}")
            uninstall(session, home, instances, others, args)
            session.summary("Uninstall")
        else:
            session.say(f"Installing moonraker-octoflash from {source} for {names}")
            install(session, home, instances, args, source)
            session.summary("Install")
    except InstallError as exc:
        err.write(f"install.sh: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\ninstall.sh: interrupted\n")
        return 130
    return 1 if session.failed else 0


if __name__ == "__main__":
    sys.exit(main())
