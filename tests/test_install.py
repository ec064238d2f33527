"""install.sh on fake KIAUH homes, each run followed by a real Moonraker start.

A home is laid out as KIAUH lays it out: a Moonraker git checkout
(``~/moonraker``, made from the Moonraker 0.11 package these tests run, with
a ``moonraker/moonraker.py`` start script as a checkout has), a virtualenv
``~/moonraker-env``, one data folder per instance and one systemd unit plus
environment file per instance (in a folder standing in for
``/etc/systemd/system``), ``~/klipper`` and ``~/katapult``.  Moonraker is
started the way KIAUH's unit starts it:
``~/moonraker-env/bin/python ~/moonraker/moonraker/moonraker.py -d DATA``.

The virtualenv has no pip; a ``pip`` module stands in for it and does what
``pip install -e``/``pip uninstall`` do to a virtualenv (a ``.pth`` file
naming the checkout, the ``bin/octoflash`` script), recording each call.
Everything else is real: the link, the git exclude, the config edits, the
backups, the git clone of Katapult, and Moonraker.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fixtures_moonraker import free_port, poll_until
from moonraker_octoflash.discovery.permissions import udev_rule
from moonraker_octoflash.sim.trees import install_tree

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.moonraker

FAKE_PIP = '''\
"""Stands in for pip in the test virtualenv: does to it what pip -e would."""
import os, sys, sysconfig
args = sys.argv[1:]
with open(os.environ.get("FAKE_PIP_LOG", os.devnull), "a") as log:
    log.write(" ".join(args) + "\\n")
site = sysconfig.get_paths()["purelib"]
pth = os.path.join(site, "__editable__.moonraker_octoflash.pth")
script = os.path.join(sys.prefix, "bin", "octoflash")
if "--config-settings" in args and os.environ.get("FAKE_PIP_OLD"):
    sys.stderr.write("no such option: --config-settings\\n")     # pip 20.3, as on Bullseye
    sys.exit(2)
if args[:1] == ["install"] and "-e" in args:
    with open(pth, "w") as f:
        f.write(args[args.index("-e") + 1] + "\\n")
    with open(script, "w") as f:
        f.write("#!" + sys.executable + "\\nimport sys\\nfrom moonraker_octoflash.cli import main\\n"
                "sys.exit(main())\\n")
    os.chmod(script, 0o755)
elif args[:1] == ["uninstall"]:
    for path in (pth, script):
        if os.path.exists(path):
            os.unlink(path)
'''

LAUNCHER = '''\
# Starts Moonraker from this checkout, as KIAUH's unit does (moonraker.py -d DATA).
if __name__ == "__main__":
    import importlib
    import pathlib
    import sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parent.parent)
    importlib.import_module("moonraker.server").main(False)
'''

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=dict(os.environ, **GIT_ENV),
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Made once per module: a Moonraker checkout, a source checkout with an origin, Katapult's origin."""
    base = tmp_path_factory.mktemp("templates")
    import moonraker
    checkout = base / "moonraker"
    shutil.copytree(os.path.dirname(moonraker.__file__), checkout / "moonraker",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "octoflash.py"))
    (checkout / "moonraker" / "moonraker.py").write_text(LAUNCHER)
    (checkout / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    (checkout / "scripts").mkdir()
    (checkout / "scripts" / "moonraker-requirements.txt").write_text("tornado\n")
    (checkout / "scripts" / "system-dependencies.json").write_text('{"debian": []}\n')
    git(checkout, "init", "-q", "-b", "master")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "Moonraker")
    git(checkout, "tag", "-a", "v0.11.0", "-m", "v0.11.0")
    # this checkout as a user clones it: the working tree (with what is not yet
    # committed) in a repository of its own whose origin can be fetched
    source = base / "moonraker-octoflash"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache"))
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "octoflash")
    git(base, "clone", "-q", "--bare", str(source), str(base / "origin.git"))
    git(source, "remote", "add", "origin", str(base / "origin.git"))
    git(source, "fetch", "-q", "origin")
    git(source, "branch", "-q", "-u", "origin/main")
    katapult_origin = install_tree("katapult", base / "katapult-origin")
    # a Katapult checkout is known by its flash tool (the simulated one here)
    (katapult_origin / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "moonraker_octoflash" / "sim" / "bin" / "flashtool.py",
                katapult_origin / "scripts" / "flashtool.py")
    git(katapult_origin, "add", "-A")
    git(katapult_origin, "commit", "-q", "-m", "flash tool")
    klipper = install_tree("klipper", base / "klipper")
    return {"moonraker": checkout, "source": source, "katapult": katapult_origin,
            "klipper": klipper}


class KiauhHome:
    """A home folder laid out by KIAUH, with ``suffixes`` naming the instances ("" = printer_data)."""

    def __init__(self, root: Path, templates: Dict[str, Path], suffixes: List[str]) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.units = root / "systemd"
        self.units.mkdir()
        self.udev = root / "udev-rules.d"      # stands in for /etc/udev/rules.d
        self.udev.mkdir()
        self.tools = root / "tools"
        self.tools.mkdir()
        self.system_bin = root / "bin"
        self.system_bin.mkdir()
        for program in ("bash", "sh", "git", "env", "cat"):
            found = shutil.which(program, path="/usr/bin:/bin")
            assert found, program
            (self.system_bin / program).symlink_to(found)
        (self.system_bin / "python3").symlink_to(
            os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
        self.pip_log = root / "pip.log"
        self.source = templates["source"]
        self.checkout = self.home / "moonraker"
        self.venv = self.home / "moonraker-env"
        shutil.copytree(templates["moonraker"], self.checkout, symlinks=True)
        shutil.copytree(templates["klipper"], self.home / "klipper", symlinks=True)
        git(self.home, "clone", "-q", str(templates["katapult"]), str(self.home / "katapult"))
        self._make_venv()
        for tool in ("arm-none-eabi-gcc", "dfu-util", "make"):
            self.stub(tool)
        self.ports: Dict[str, int] = {}
        self.data: Dict[str, Path] = {}
        for suffix in suffixes:
            self._add_instance(suffix)
        self.original = {path: path.read_bytes() for path in self.config_files()}

    def _make_venv(self) -> None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)],
                       check=True, timeout=120)
        python = self.venv / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                               "['purelib'])"], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()
        import tornado
        # Moonraker's requirements: the packages of the Python running these tests
        deps = os.path.dirname(os.path.dirname(tornado.__file__))
        Path(site, "moonraker-requirements.pth").write_text(deps + "\n")
        Path(site, "pip").mkdir()
        Path(site, "pip", "__init__.py").write_text("")
        Path(site, "pip", "__main__.py").write_text(FAKE_PIP)

    def _add_instance(self, suffix: str) -> None:
        data = self.home / (f"printer_{suffix}_data" if suffix else "printer_data")
        for sub in ("config", "logs", "comms", "gcodes", "systemd"):
            (data / sub).mkdir(parents=True)
        port = free_port()
        (data / "config" / "moonraker.conf").write_text(textwrap.dedent(f"""\
            [server]
            host: 127.0.0.1
            port: {port}
            klippy_uds_address: {data}/comms/klippy.sock

            [machine]
            provider: none
            validate_service: False

            [authorization]
            trusted_clients:
              127.0.0.0/8

            [update_manager]
            enable_auto_refresh: False
            enable_system_updates: False
            """))
        (data / "config" / "printer.cfg").write_text(
            "[printer]\nkinematics: none\nmax_velocity: 1\nmax_accel: 1\n")
        service = f"moonraker-{suffix}" if suffix else "moonraker"
        env_file = data / "systemd" / "moonraker.env"
        env_file.write_text(f'MOONRAKER_ARGS="{self.checkout}/moonraker/moonraker.py -d {data}"')
        (self.units / f"{service}.service").write_text(textwrap.dedent(f"""\
            [Unit]
            Description=API Server for Klipper SV1

            [Service]
            Type=simple
            User=pi
            WorkingDirectory={self.checkout}
            EnvironmentFile={env_file}
            ExecStart={self.venv}/bin/python $MOONRAKER_ARGS
            Restart=always
            """))
        self.ports[suffix] = port
        self.data[suffix] = data

    def stub(self, tool: str, script: str = "exit 0") -> None:
        path = self.tools / tool
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)

    def config_files(self) -> List[Path]:
        return [p for d in self.data.values()
                for p in (d / "config" / "moonraker.conf", d / "config" / "printer.cfg")]

    def env(self) -> Dict[str, str]:
        """The installer's environment: only the programs it needs, and the tool stubs."""
        path = f"{self.tools}:{self.home / '.local' / 'bin'}:{self.system_bin}"
        return dict(os.environ, HOME=str(self.home), PATH=path, FAKE_PIP_LOG=str(self.pip_log),
                    OCTOFLASH_SYSTEMD_DIR=str(self.units),
                    OCTOFLASH_UDEV_RULES_DIR=str(self.udev), **GIT_ENV)

    def install(self, *args: str, stdin: Optional[int] = subprocess.DEVNULL
                ) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.source / "install.sh"), "--allow-root",
                               "--no-restart", *args], capture_output=True, text=True,
                              env=self.env(), timeout=300, stdin=stdin)

    @property
    def link(self) -> Path:
        return self.checkout / "moonraker" / "components" / "octoflash.py"

    def moonraker_pristine(self) -> bool:
        return git(self.checkout, "status", "--porcelain") == ""

    def snapshot(self) -> Dict[str, str]:
        """Every file of the home (and the units) with a digest of its content."""
        files = {}
        for top in (self.home, self.units):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".git")]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if os.path.islink(path):
                        files[path] = "-> " + os.readlink(path)
                    elif name.endswith((".pyc", ".log")) or not os.path.isfile(path):
                        continue
                    else:
                        with open(path, "rb") as f:
                            files[path] = hashlib.sha256(f.read()).hexdigest()
        return files

    def start_moonraker(self, suffix: str) -> RunningMoonraker:
        return RunningMoonraker(self, suffix)


class RunningMoonraker:
    """Moonraker started as KIAUH's unit starts it; a context manager that stops it."""

    def __init__(self, home: KiauhHome, suffix: str) -> None:
        self.port = home.ports[suffix]
        data = home.data[suffix]
        self.output = data / "logs" / "moonraker-test-output.txt"
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [str(home.venv / "bin" / "python"), str(home.checkout / "moonraker" / "moonraker.py"),
                 "-d", str(data), "-n"],
                stdout=out, stderr=subprocess.STDOUT, cwd=str(home.checkout),
                env=dict(home.env(), PATH="/usr/bin:/bin"), start_new_session=True)

    def __enter__(self) -> RunningMoonraker:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return json.loads(resp.read())["result"]

    def post(self, path: str, body: Dict[str, Any]) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["result"]

    def info(self, timeout: float = 60.0) -> Dict[str, Any]:
        """/server/info once Moonraker answers and has loaded its components."""
        def answer() -> Optional[Dict[str, Any]]:
            if self.proc.poll() is not None:
                raise AssertionError(f"Moonraker exited:\n{self.output.read_text()[-3000:]}")
            try:
                return self.get("/server/info")
            except OSError:
                return None
        try:
            return poll_until(answer, timeout, "Moonraker's answer")
        except AssertionError:
            if self.proc.poll() is not None:
                raise
            raise AssertionError(
                f"Moonraker did not answer:\n{self.output.read_text()[-3000:]}") from None


def octoflash_warnings(info: Dict[str, Any]) -> List[str]:
    return [w for w in info["warnings"] if "octoflash" in w.lower()]


def assert_loaded(home: KiauhHome, suffix: str) -> None:
    with home.start_moonraker(suffix) as moonraker:
        info = moonraker.info()
        assert "octoflash" in info["components"], info
        assert info["failed_components"] == [], info
        assert octoflash_warnings(info) == [], info["warnings"]


def assert_gone(home: KiauhHome, suffix: str) -> None:
    with home.start_moonraker(suffix) as moonraker:
        info = moonraker.info()
        assert "octoflash" not in info["components"]
        assert info["failed_components"] == [], info
        assert octoflash_warnings(info) == [], info["warnings"]
        assert not [w for w in info["warnings"] if "Unparsed config section" in w], info["warnings"]


@pytest.fixture
def one(tmp_path, templates):
    return KiauhHome(tmp_path, templates, [""])


@pytest.fixture
def three(tmp_path, templates):
    return KiauhHome(tmp_path, templates, ["1", "2", "3"])


# --- the command line ------------------------------------------------------------

def test_help_is_clean_and_states_the_root_rule(one):
    proc = subprocess.run(["bash", str(ROOT / "install.sh"), "--help"], capture_output=True,
                          text=True, timeout=60, env=one.env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: install.sh")
    for option in ("--instance NAME", "--all", "--yes", "--dry-run", "--uninstall",
                   "--keep-config", "--remove-builds", "--allow-root"):
        assert option in proc.stdout
    assert "not as root" in proc.stdout
    assert "set -e" not in proc.stdout


def test_root_is_refused_without_allow_root(one):
    if os.geteuid() != 0:
        pytest.skip("needs root to see the refusal")
    proc = subprocess.run(["bash", str(one.source / "install.sh"), "--yes"], capture_output=True,
                          text=True, timeout=60, env=one.env())
    assert proc.returncode == 2
    assert "not as root" in proc.stderr and "--allow-root" in proc.stderr
    assert not one.link.exists()


def test_bad_input_changes_nothing(three):
    before = three.snapshot()
    proc = three.install("--yes")                     # three instances, none named
    assert proc.returncode == 2
    assert "3 Moonraker instances found" in proc.stderr
    for name in ("printer_1_data (service moonraker-1)", "printer_3_data (service moonraker-3)"):
        assert name in proc.stderr
    proc = three.install("--yes", "--instance", "7")
    assert proc.returncode == 2 and "no Moonraker instance '7'" in proc.stderr
    proc = three.install("--instance", "2")           # no terminal to ask on, no --yes
    assert proc.returncode == 2 and "--yes" in proc.stderr
    proc = three.install("--yes", "--all", "--venv", str(three.root / "nowhere"))
    assert proc.returncode == 2 and "--venv" in proc.stderr
    assert three.snapshot() == before


def test_dry_run_says_what_and_changes_nothing(one):
    shutil.rmtree(one.home / "katapult")
    before = one.snapshot()
    proc = one.install("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would: install moonraker-octoflash into" in proc.stdout
    assert "would: link the component into Moonraker" in proc.stdout
    assert "would: clone Katapult from https://github.com/Arksine/katapult.git" in proc.stdout
    assert "Dry run: nothing was changed" in proc.stdout
    assert one.snapshot() == before
    assert not one.pip_log.exists()


# --- one instance ----------------------------------------------------------------

def test_an_old_pip_gets_the_default_editable_install(one, monkeypatch):
    """Bullseye's pip 20.3 knows no --config-settings: the plain ``pip install -e`` follows."""
    monkeypatch.setenv("FAKE_PIP_OLD", "1")
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    calls = [line for line in one.pip_log.read_text().splitlines() if line.startswith("install")]
    assert calls == [f"install -q -e {one.source} --config-settings editable_mode=compat",
                     f"install -q -e {one.source}"]
    assert one.link.is_symlink()


def test_one_instance_install_again_and_uninstall(one):
    data = one.data[""]
    conf = data / "config" / "moonraker.conf"
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    assert "Installing moonraker-octoflash" in out and "printer_data (moonraker)" in out
    # the component, hidden from Moonraker's git status
    assert one.link.is_symlink()
    assert one.moonraker_pristine()
    assert "/moonraker/components/octoflash.py" in (one.checkout / ".git" / "info" / "exclude").read_text()
    # one path line on sys.path (pip's "compat" editable mode), not an import finder
    assert f"install -q -e {one.source} --config-settings editable_mode=compat" in \
        one.pip_log.read_text()
    # moonraker.conf: backed up, then both sections
    text = conf.read_text()
    assert text.count("[octoflash]") == 1 and "[update_manager octoflash]" in text
    assert "managed_services: moonraker\n" in text
    backups = list((data / "backup").glob("octoflash-*/config/moonraker.conf"))
    assert len(backups) == 1 and backups[0].read_bytes() == one.original[conf]
    assert str(backups[0]) in out
    # the sidebar link, the macros, the command
    navi = json.loads((data / "config" / ".theme" / "navi.json").read_text())
    assert [e["href"] for e in navi] == ["/server/octoflash/web"]
    macros = (data / "config" / "octoflash-macros.cfg").read_text()
    assert macros == (ROOT / "docs" / "macros.cfg").read_text()
    assert (data / "config" / "printer.cfg").read_text().startswith("[include octoflash-macros.cfg]\n")
    command = one.home / ".local" / "bin" / "octoflash"
    assert os.readlink(command) == str(one.venv / "bin" / "octoflash")
    presets = subprocess.run(["octoflash", "presets"], capture_output=True, text=True,
                             timeout=60, env=one.env())
    assert presets.returncode == 0 and "btt-octopus" in presets.stdout, presets.stderr
    # one summary: what was done, what is left, said once
    assert out.count("Install: done") == 1
    assert "Left for you:" in out and "restart Moonraker to load the change" in out
    assert "sudo systemctl restart moonraker" in out
    assert "not a systemd service" not in out
    assert_loaded(one, "")
    # the udev rule: Moonraker's user (the unit's User=) may open the boards' USB devices
    rule = one.udev / "70-octoflash.rules"
    assert 'ATTR{idVendor}=="0483", ATTR{idProduct}=="df11", OWNER="pi", MODE="0660"' in \
        rule.read_text()
    assert f"install the udev rule {rule}: pi (the Moonraker service's user)" in out
    assert "udevadm not found" in out            # none in this home: said, not failed on

    # again: nothing changes
    before = one.snapshot()
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to change: everything is in place." in proc.stdout
    assert one.snapshot() == before
    assert one.pip_log.read_text().count("install -q -e") == 1

    # uninstall: everything as it was before, the sections saved and shown
    proc = one.install("--yes", "--uninstall")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert not os.path.lexists(one.link)
    assert one.moonraker_pristine()
    assert "octoflash" not in (one.checkout / ".git" / "info" / "exclude").read_text()
    assert conf.read_bytes() == one.original[conf]
    printer_cfg = data / "config" / "printer.cfg"
    assert printer_cfg.read_bytes() == one.original[printer_cfg]
    assert not (data / "config" / ".theme" / "navi.json").exists()
    assert not (data / "config" / "octoflash-macros.cfg").exists()
    assert not os.path.lexists(command)
    assert "uninstall -y -q moonraker-octoflash" in one.pip_log.read_text()
    saved = list((data / "backup").glob("octoflash-*/octoflash-sections.conf"))
    assert len(saved) == 1 and saved[0].read_text().startswith("[octoflash]")
    assert str(saved[0]) in proc.stdout
    assert "profiles made through the API stay in Moonraker's database" in proc.stdout
    assert not rule.exists() and f"remove the udev rule {rule}" in proc.stdout
    assert [p.read_text() for p in (data / "backup").glob("octoflash-*/70-octoflash.rules")] \
        == [udev_rule("pi")]
    assert_gone(one, "")


def test_the_udev_rule_is_reloaded_and_an_old_one_backed_up(one):
    log = one.root / "udevadm.log"
    one.stub("udevadm", f'echo "$@" >> {log}')
    rule = one.udev / "70-octoflash.rules"
    rule.write_text("# an older rule\n")
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert rule.read_text() == udev_rule("pi")
    assert f"update the udev rule {rule}" in proc.stdout and "udev reloaded" in proc.stdout
    backups = list((one.data[""] / "backup").glob("octoflash-*/70-octoflash.rules"))
    assert [b.read_text() for b in backups] == ["# an older rule\n"]
    assert log.read_text().splitlines() == ["control --reload-rules",
                                            "trigger --subsystem-match=usb --action=add"]


def test_keep_config_comments_the_sections_out_and_a_reinstall_restores_them(one):
    conf = one.data[""] / "config" / "moonraker.conf"
    assert one.install("--yes").returncode == 0
    with open(conf, "a") as f:
        f.write("\n[octoflash octopus]\npreset: btt-octopus-f446-katapult\n")
    installed = conf.read_text()
    proc = one.install("--yes", "--uninstall", "--keep-config")
    assert proc.returncode == 0, proc.stderr
    text = conf.read_text()
    assert "#~ [octoflash octopus]" in text and "\n[octoflash" not in text
    assert "[update_manager octoflash]" not in text
    assert_gone(one, "")
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr
    assert "restore the [octoflash…] sections kept at uninstall" in proc.stdout
    text = conf.read_text()
    assert "#~" not in text and "[octoflash octopus]\npreset: btt-octopus-f446-katapult" in text
    assert sorted(p.strip() for p in text.split("\n\n")) == \
        sorted(p.strip() for p in installed.split("\n\n"))


def test_missing_tools_and_katapult_are_offered(one, templates):
    (one.tools / "arm-none-eabi-gcc").unlink()
    (one.tools / "dfu-util").unlink()
    apt_log = one.root / "apt.log"
    one.stub("apt-get", f'echo "$@" >> {apt_log}')
    shutil.rmtree(one.home / "katapult")
    env_origin = str(templates["katapult"])
    proc = one.install("--yes", "--katapult-origin", env_origin, "--no-macros")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert apt_log.read_text().split() == [
        "install", "-y", "gcc-arm-none-eabi", "binutils-arm-none-eabi",
        "libnewlib-arm-none-eabi", "dfu-util"]
    assert (one.home / "katapult" / "scripts" / "flashtool.py").is_file(), proc.stdout
    assert f"clone Katapult from {env_origin}" in proc.stdout
    assert not (one.data[""] / "config" / "octoflash-macros.cfg").exists()


def run_on_terminal(home: KiauhHome, answers: bytes, *args: str) -> subprocess.CompletedProcess:
    """install.sh with a terminal for its questions, answered with ``answers``."""
    import pty
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            ["bash", str(home.source / "install.sh"), "--allow-root", "--no-restart", *args],
            stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=home.env())
        os.write(leader, answers)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_on_a_terminal_the_instance_is_asked_for(three):
    proc = run_on_terminal(three, b"2\n" + b"y\n" * 12, "--skip-dependencies")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "3 Moonraker instances found" in proc.stdout and "Which ones?" in proc.stdout
    assert "[octoflash]" in (three.data["2"] / "config" / "moonraker.conf").read_text()
    for other in ("1", "3"):
        conf = three.data[other] / "config" / "moonraker.conf"
        assert conf.read_bytes() == three.original[conf]


def test_a_declined_change_is_not_made(one):
    """On a terminal each change is asked for; 'n' leaves it undone and says so."""
    before = one.snapshot()
    proc = run_on_terminal(one, b"n\n" * 12)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert "[Y/n]" in out
    assert "Skipped (you said no):" in out
    assert "install moonraker-octoflash into" in out.split("Skipped (you said no):")[1]
    assert one.snapshot() == before


# --- three instances ---------------------------------------------------------------

def test_three_instances_one_then_all_then_removed(three):
    proc = three.install("--yes", "--instance", "moonraker-2")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    conf2 = (three.data["2"] / "config" / "moonraker.conf").read_text()
    assert "[octoflash]" in conf2 and "managed_services: moonraker\n" in conf2
    for other in ("1", "3"):
        conf = three.data[other] / "config" / "moonraker.conf"
        assert conf.read_bytes() == three.original[conf]
    assert "sudo systemctl restart moonraker-2" in proc.stdout

    proc = three.install("--yes", "--all")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for suffix in ("1", "2", "3"):
        conf = (three.data[suffix] / "config" / "moonraker.conf").read_text()
        assert conf.count("[octoflash]") == 1
        assert "managed_services: moonraker\n" in conf     # Moonraker's name for its own unit
    assert three.pip_log.read_text().count("install -q -e") == 1   # one shared virtualenv
    for suffix in ("1", "2", "3"):
        assert_loaded(three, suffix)

    # removing one instance keeps what the others use
    proc = three.install("--yes", "--uninstall", "--instance", "printer_1_data")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert three.link.is_symlink()
    assert "still use octoflash" in proc.stdout
    assert "uninstall" not in three.pip_log.read_text().replace("install -q -e", "")
    assert_gone(three, "1")

    proc = three.install("--yes", "--uninstall", "--all")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert not os.path.lexists(three.link) and three.moonraker_pristine()
    for path, content in three.original.items():
        assert path.read_bytes() == content, path
    for suffix in ("1", "2", "3"):
        assert_gone(three, suffix)


# --- Moonraker's own life cycle -----------------------------------------------------

def test_after_moonraker_is_recloned_a_rerun_restores_the_link_and_profiles_survive(one, templates):
    assert one.install("--yes").returncode == 0
    profile = {"name": "octopus", "preset": "btt-octopus-f446-katapult"}
    with one.start_moonraker("") as moonraker:
        moonraker.info()
        moonraker.post("/server/octoflash/profile", profile)
    # a hard recovery (or a KIAUH reinstall) clones Moonraker afresh
    shutil.rmtree(one.checkout)
    shutil.copytree(templates["moonraker"], one.checkout, symlinks=True)
    with one.start_moonraker("") as moonraker:
        assert moonraker.info()["failed_components"] == ["octoflash"]
    proc = one.install("--yes")
    assert proc.returncode == 0, proc.stderr
    assert "link the component into Moonraker" in proc.stdout
    assert "[octoflash]" not in proc.stdout.split("Done:")[1]      # the config was kept
    assert one.link.is_symlink() and one.moonraker_pristine()
    with one.start_moonraker("") as moonraker:
        info = moonraker.info()
        assert "octoflash" in info["components"] and info["failed_components"] == []
        names = [p["name"] for p in moonraker.get("/server/octoflash/profiles")["profiles"]]
        assert "octopus" in names
