// What each state means, and what to do about it, in words.

// The update-manager entry's state of a board (docs/update-manager.md).
export const UPDATE_STATES = {
  up_to_date: { text: "up to date", kind: "good",
    why: "The board runs the firmware a build of your checkout gives now. Nothing to do." },
  behind: { text: "update available", kind: "warn",
    why: "The board runs an older Klipper than your checkout. Flash it (Klipper is stopped while it is written), or use Update all." },
  differs: { text: "update available", kind: "warn",
    why: "The board runs another build than the one the profile now gives. Flash it to bring it in line." },
  ahead: { text: "newer than the build", kind: "warn",
    why: "The board runs a newer Klipper than your checkout would build. Update Klipper in the update manager first: flashing now would put an older version on the board." },
  unknown: { text: "unknown", kind: "",
    why: "octoflash cannot tell which firmware the board runs: Klipper does not report it (Klipper not connected, the board not in printer.cfg, or not answering). Check that Klipper is ready and the board is connected; a flash writes the current build anyway." }
};

// What the last device scan saw of a profile's board (discovery/snapshot.py).
export const BOARD_STATES = {
  running: { text: "found", kind: "good", why: "The last scan saw the board running its firmware." },
  bootloader: { text: "in bootloader", kind: "warn",
    why: "The board waits in its bootloader (Katapult) instead of running Klipper, usually after an interrupted flash. Flash it to put the firmware back; octoflash writes it from there." },
  dfu: { text: "in DFU mode", kind: "warn",
    why: "The board is in DFU mode (BOOT0 jumper fitted). Flash it with DFU, then remove the jumper and press reset." },
  not_found: { text: "not found", kind: "bad",
    why: "The last scan did not see this board where the profile says it is (CAN uuid, serial port or DFU serial). Check its power and cable, that the CAN interface is up, and the profile's connection; then press Scan again." }
};

export function describeUpdate(entry) {
  if (!entry) { return null; }
  const known = UPDATE_STATES[entry.state] || UPDATE_STATES.unknown;
  let text = known.text;
  if (entry.state === "differs" && entry.reason) { text += " (" + entry.reason.replace(/-/g, " ") + ")"; }
  return { text, kind: known.kind, why: known.why };
}

export function describeBoard(found) {
  if (!found) { return null; }
  const known = BOARD_STATES[found.state] || { text: found.state, kind: "", why: "" };
  return { text: known.text, kind: known.kind, why: known.why + (found.detail ? " (" + found.detail + ")" : "") };
}

export const JOB_KIND = { build: "Build", flash: "Flash", update_all: "Update all" };

export const JOB_STATES = {
  queued: "waiting", running: "running", done: "done", failed: "failed",
  refused: "refused", cancelled: "cancelled", interrupted: "interrupted"
};

export function jobTitle(job) {
  const kind = JOB_KIND[job.kind] || job.kind || "Job";
  return job.profile ? `${kind} ${job.profile}` : kind;
}

// A stage in words when the server gave none (its titles come with every update).
export function stageWords(stage) {
  if (!stage) { return ""; }
  return stage.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}
