"""`octoflash link-component`: placing the component file in Moonraker's components folder."""
from __future__ import annotations

import io
import os

import pytest

from moonraker_octoflash.cli import main
from moonraker_octoflash.errors import NotFoundError, ValidationError
from moonraker_octoflash.moonraker.link import SOURCE_FILE, components_dir, link_component


@pytest.fixture
def checkout(tmp_path):
    """A Moonraker git checkout's layout: <checkout>/moonraker/components/klippy_apis.py."""
    components = tmp_path / "moonraker" / "moonraker" / "components"
    components.mkdir(parents=True)
    (components / "klippy_apis.py").write_text("# Moonraker's own component\n")
    return tmp_path / "moonraker"


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", "/nonexistent/moonraker.conf", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_link_and_remove_through_the_command_line(checkout):
    code, out, err = run("link-component", "--moonraker-path", str(checkout))
    assert code == 0, err
    target = checkout / "moonraker" / "components" / "octoflash.py"
    assert os.path.islink(target) and os.path.realpath(target) == os.path.realpath(SOURCE_FILE)
    assert f"Linked {target}" in out and "Restart Moonraker" in out
    # the linked file is what Moonraker imports: it delegates to the package
    assert "moonraker_octoflash.moonraker.component" in target.read_text()

    code, out, err = run("link-component", "--moonraker-path", str(checkout))   # again: fine
    assert code == 0 and os.path.islink(target)

    code, out, err = run("link-component", "--moonraker-path", str(checkout), "--remove")
    assert code == 0 and not os.path.lexists(target)
    assert "Removed" in out
    code, out, err = run("link-component", "--moonraker-path", str(checkout), "--remove")
    assert code == 0                                     # nothing to remove is not an error


def test_every_way_of_naming_moonraker_finds_the_components_folder(checkout):
    expected = str(checkout / "moonraker" / "components")
    for given in (checkout, checkout / "moonraker", checkout / "moonraker" / "components"):
        assert components_dir(str(given)) == expected


def test_a_foreign_file_is_never_replaced(checkout):
    target = checkout / "moonraker" / "components" / "octoflash.py"
    target.write_text("# someone else's octoflash\n")
    with pytest.raises(ValidationError, match="is not moonraker-octoflash's component"):
        link_component(str(checkout))
    code, _out, err = run("link-component", "--moonraker-path", str(checkout), "--remove")
    assert code == 2 and "move it away first" in err
    assert target.read_text() == "# someone else's octoflash\n"


def test_a_folder_that_is_not_moonraker_is_refused(tmp_path):
    with pytest.raises(NotFoundError, match="does not look like Moonraker"):
        link_component(str(tmp_path))


def test_the_default_is_the_importable_moonraker(linked_component):
    import moonraker
    assert linked_component == os.path.join(os.path.dirname(moonraker.__file__),
                                            "components", "octoflash.py")


# --- a KIAUH install: Moonraker runs from a checkout its virtualenv cannot import ----

def _kiauh(tmp_path):
    """~/moonraker (a git checkout), ~/moonraker-env and a unit naming both, as KIAUH makes them."""
    import subprocess
    home = tmp_path / "home"
    components = home / "moonraker" / "moonraker" / "components"
    components.mkdir(parents=True)
    (components / "klippy_apis.py").write_text("# Moonraker's own component\n")
    subprocess.run(["git", "init", "-q", str(home / "moonraker")], check=True, timeout=30)
    (home / "moonraker-env" / "bin").mkdir(parents=True)
    units = tmp_path / "systemd"
    units.mkdir()
    return home, units


def test_link_component_finds_the_checkout_beside_the_virtualenv(tmp_path, monkeypatch):
    from moonraker_octoflash.moonraker import layout
    home, units = _kiauh(tmp_path)
    checkout, looked = layout.find_checkout(str(home / "moonraker-env"), str(home))
    assert checkout == str(home / "moonraker")
    assert looked == [str(home / "moonraker")]


def test_link_component_finds_the_checkout_named_by_the_service(tmp_path, monkeypatch):
    from moonraker_octoflash.moonraker import layout
    home, units = _kiauh(tmp_path)
    elsewhere = tmp_path / "opt" / "moonraker"
    elsewhere.parent.mkdir(parents=True)
    (home / "moonraker").rename(elsewhere)
    data = home / "printer_data"
    (data / "systemd").mkdir(parents=True)
    (data / "systemd" / "moonraker.env").write_text(
        f'MOONRAKER_ARGS="{elsewhere}/moonraker/moonraker.py -d {data}"\n')
    (units / "moonraker.service").write_text(
        f"[Service]\nEnvironmentFile={data}/systemd/moonraker.env\n"
        f"ExecStart={home}/moonraker-env/bin/python $MOONRAKER_ARGS\n")
    monkeypatch.setenv("OCTOFLASH_SYSTEMD_DIR", str(units))
    checkout, _looked = layout.find_checkout(str(home / "moonraker-env"), str(home))
    assert checkout == str(elsewhere)
    [instance] = layout.find_instances(str(home))
    assert (instance.data_dir, instance.service, instance.venv_dir) == \
        (str(data), "moonraker", str(home / "moonraker-env"))


def test_link_component_says_where_it_looked(tmp_path, monkeypatch):
    from moonraker_octoflash.moonraker import link
    monkeypatch.setenv("OCTOFLASH_SYSTEMD_DIR", str(tmp_path / "no-units"))
    monkeypatch.setattr(link.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(link, "find_checkout", lambda: (None, ["/home/pi/moonraker"]))
    with pytest.raises(NotFoundError, match="no Moonraker checkout is at /home/pi/moonraker"):
        link.components_dir()


def test_the_link_is_hidden_from_moonrakers_git_status(tmp_path):
    import subprocess
    home, _units = _kiauh(tmp_path)
    checkout = home / "moonraker"

    def status():
        return subprocess.run(["git", "-C", str(checkout), "status", "--porcelain"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    untracked_before = status()
    target = link_component(str(checkout))
    assert os.path.islink(target)
    assert status() == untracked_before                    # nothing new for Moonraker to report
    exclude = (checkout / ".git" / "info" / "exclude").read_text()
    assert "/moonraker/components/octoflash.py" in exclude.splitlines()
    link_component(str(checkout))                           # again: listed once
    assert (checkout / ".git" / "info" / "exclude").read_text() == exclude
    link_component(str(checkout), remove=True)
    assert "octoflash" not in (checkout / ".git" / "info" / "exclude").read_text()
