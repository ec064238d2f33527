#!/usr/bin/env bash
# moonraker-octoflash installer, in the manner of KIAUH's extensions.
#
#   ./install.sh                 install into Moonraker's virtualenv and restart Moonraker
#   ./install.sh --uninstall     unlink the component and remove the package
#
# Options (defaults fit a KIAUH install):
#   --moonraker DIR   Moonraker checkout               (~/moonraker)
#   --venv DIR        Moonraker's virtualenv           (~/moonraker-env)
#   --data DIR        Moonraker's data folder          (~/printer_data)
#   --no-restart      do not restart Moonraker
#   --dry-run         print what would be done, change nothing
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MOONRAKER_DIR="$HOME/moonraker"
VENV_DIR="$HOME/moonraker-env"
DATA_DIR="$HOME/printer_data"
RESTART=1
DRY_RUN=0
UNINSTALL=0

say()  { printf '%s\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
run()  { if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else "$@"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --moonraker) MOONRAKER_DIR=$2; shift 2 ;;
    --venv) VENV_DIR=$2; shift 2 ;;
    --data) DATA_DIR=$2; shift 2 ;;
    --no-restart) RESTART=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option '$1' (see --help)" ;;
  esac
done

if [ "$(id -u)" = 0 ] && [ "${OCTOFLASH_ALLOW_ROOT:-0}" != 1 ]; then
  fail "run this as the user Moonraker runs as, not as root (it uses sudo where it must)"
fi

PY="$VENV_DIR/bin/python"
[ -x "$PY" ] || fail "no Python at $PY: is Moonraker's virtualenv elsewhere? Use --venv DIR"
COMPONENTS="$MOONRAKER_DIR/moonraker/components"
[ -d "$COMPONENTS" ] || fail "no Moonraker components folder at $COMPONENTS: use --moonraker DIR"
CONFIG="$DATA_DIR/config/moonraker.conf"

restart_moonraker() {
  [ "$RESTART" = 1 ] || { say "Restart Moonraker to load the change."; return; }
  if command -v systemctl >/dev/null && systemctl list-unit-files moonraker.service >/dev/null 2>&1; then
    run sudo systemctl restart moonraker
  else
    say "Moonraker is not a systemd service here: restart it yourself."
  fi
}

if [ "$UNINSTALL" = 1 ]; then
  if [ -x "$VENV_DIR/bin/octoflash" ]; then
    run "$VENV_DIR/bin/octoflash" link-component --moonraker-path "$MOONRAKER_DIR/moonraker" --remove
  fi
  run "$PY" -m pip uninstall -y -q moonraker-octoflash
  say "Removed. The [octoflash] sections in $CONFIG are left for you to delete."
  restart_moonraker
  exit 0
fi

"$PY" - <<'PYCHECK' || fail "Moonraker's Python is older than 3.9"
import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)
PYCHECK

say "Installing moonraker-octoflash into $VENV_DIR"
run "$PY" -m pip install -q -e "$SRC_DIR"
say "Linking the component into $COMPONENTS"
run "$VENV_DIR/bin/octoflash" link-component --moonraker-path "$MOONRAKER_DIR/moonraker"

if [ -f "$CONFIG" ]; then
  if ! grep -q '^\[octoflash\]' "$CONFIG"; then
    say "Adding [octoflash] to $CONFIG"
    [ "$DRY_RUN" = 1 ] || cat >> "$CONFIG" <<CONF

[octoflash]
# Options: see $SRC_DIR/docs/moonraker.md
klipper_path: ~/klipper
katapult_path: ~/katapult
CONF
  fi
  origin=$(git -C "$SRC_DIR" remote get-url origin 2>/dev/null || true)
  if [ -z "$origin" ]; then
    say "This checkout has no git remote: add [update_manager octoflash] yourself (docs/update-manager.md)."
  elif ! grep -q '^\[update_manager octoflash\]' "$CONFIG"; then
    say "Adding [update_manager octoflash] to $CONFIG"
    [ "$DRY_RUN" = 1 ] || cat >> "$CONFIG" <<CONF

[update_manager octoflash]
type: git_repo
path: $SRC_DIR
origin: $origin
primary_branch: main
virtualenv: $VENV_DIR
requirements: scripts/octoflash-requirements.txt
system_dependencies: scripts/system-dependencies.json
managed_services: moonraker
CONF
  fi
  say "Adding the Firmware link to Mainsail's sidebar ($DATA_DIR/config/.theme/navi.json)"
  [ "$DRY_RUN" = 1 ] || "$PY" -c 'import sys; from moonraker_octoflash.moonraker.web import add_navi_link; add_navi_link(sys.argv[1])' "$DATA_DIR/config" \
    || say "Could not update navi.json; see docs/web.md to add the link by hand."
else
  say "No $CONFIG: add an [octoflash] section to your Moonraker config (docs/moonraker.md)."
fi

say "Done. Add one [octoflash NAME] section per MCU (docs/moonraker.md), then check with: octoflash presets"
restart_moonraker
