// The boards: one card per profile, its state explained, Build / Flash with
// the reason when they cannot be used; Update all and Build all.
import { $, el, clear, show, button, icon } from "./dom.js";
import { describeUpdate, describeBoard } from "./words.js";

function connectionText(p) {
  if (p.canbus_uuid) { return "CAN " + p.canbus_uuid + " on " + (p.canbus_interface || "can0"); }
  if (p.serial) { return p.serial.split("/").pop(); }
  if (p.connection === "dfu") { return "DFU" + (p.dfu_serial ? " " + p.dfu_serial : ""); }
  return "not set";
}

export function isPrinting(state) {
  const k = (state.status && state.status.klipper) || {};
  return k.print_state === "printing" || k.print_state === "paused";
}

function flashBusy(state) {
  if (state.status && state.status.flash_job) { return true; }
  const j = state.job;
  return !!(j && (j.kind === "flash" || j.kind === "update_all") && (j.state === "queued" || j.state === "running"));
}

// Why Build or Flash cannot be used for this profile now ("" when they can).
export function blockers(state, p) {
  const status = p.status || {};
  const found = state.devices && state.devices.profiles && state.devices.profiles[p.name];
  let build = "", flash = "";
  if (status.job_id) { build = flash = "A job is working on this profile; wait for it to end."; }
  if (!build && state.status && state.status.builds_available === false) {
    build = "Builds are unavailable here (see Moonraker's log).";
  }
  if (!flash && isPrinting(state)) {
    flash = "Klipper is printing: flashing would stop Klipper and end the print.";
  } else if (!flash && flashBusy(state)) {
    flash = "Another flash is running; one board is flashed at a time.";
  } else if (!flash && found && found.state === "not_found" && (p.connection === "can" || p.connection === "serial")) {
    flash = "Board not found: check its power and connection, then Scan again.";
  }
  return { build, flash };
}

function pill(text, kind, why, cls) {
  return el("span", { className: "pill " + (kind || "") + (cls ? " " + cls : ""), text, title: why || "" });
}

export function renderBoards(ctx) {
  const { state } = ctx;
  const box = clear($("boards"));
  show($("no-profiles"), state.profiles.length === 0);
  for (const p of state.profiles) {
    const status = p.status || {};
    const entry = state.entries[p.name];
    const found = state.devices && state.devices.profiles && state.devices.profiles[p.name];
    const running = (entry && entry.running_version) || status.mcu_version || "";
    const gives = (entry && entry.pending_version) || "";
    const upd = describeUpdate(entry) || (p.target === "klipper" && !running ?
      describeUpdate({ state: "unknown" }) : null);
    const board = describeBoard(found);
    const build = status.latest_build;
    const block = blockers(state, p);

    const explain = el("ul", { className: "explain" });
    if (upd && upd.why && upd.kind !== "good") { explain.appendChild(el("li", { className: "state-why", text: upd.text + ": " + upd.why })); }
    if (board && board.why && board.kind !== "good") { explain.appendChild(el("li", { className: "board-why", text: board.text + ": " + board.why })); }
    if (!running && p.target === "klipper") {
      explain.appendChild(el("li", { className: "running-why", text: "Runs: not reported. Klipper tells the version of the boards it is connected to; this one is not (Klipper not ready, the board missing from printer.cfg, or not answering)." }));
    }
    if (entry && entry.running_source === "last_flash") {
      explain.appendChild(el("li", { text: "The version shown is what octoflash last wrote; Klipper does not report it now." }));
    }

    const buildBtn = button("Build", { "data-action": "build", disabled: !!block.build, title: block.build,
      on: { click: () => ctx.startJob("server.octoflash.build", { profile: p.name }) } }, "hammer");
    const flashBtn = button("Flash…", { "data-action": "flash", disabled: !!block.flash, title: block.flash,
      className: "danger", on: { click: () => ctx.openPlan(p) } }, "flash");
    const editBtn = button(p.source === "config" ? "View" : "Edit", { "data-action": "edit",
      on: { click: () => ctx.openEditor(p) } }, p.source === "config" ? "info" : "pencil");
    const reasons = [block.build && "Build: " + block.build, block.flash && "Flash: " + block.flash].filter(Boolean);

    const card = el("article", { className: "card board", "data-profile": p.name }, [
      el("header", { className: "card-head" }, [
        icon("chip"),
        el("div", { className: "grow" }, [
          el("h3", { text: p.name }),
          el("div", { className: "hint", text: (p.description || p.preset) + " — " + p.board + (p.target === "katapult" ? " (Katapult)" : "") })
        ]),
        upd ? pill(upd.text, upd.kind, upd.why, "state") : el("span", { className: "state" })
      ]),
      el("dl", { className: "facts" }, [
        el("dt", { text: "Connection" }),
        el("dd", { className: "connection" }, [connectionText(p), board ? " " : "", board ? pill(board.text, board.kind, board.why, "where") : null]),
        el("dt", { text: "Runs" }),
        el("dd", { className: "running", text: running || (p.target === "katapult" ? "—" : "not reported") }),
        el("dt", { text: "A build gives" }),
        el("dd", { className: "pending", text: gives || "—" }),
        el("dt", { text: "Latest build" }),
        el("dd", { className: "build", text: build ? (build.dict_version || build.source_version) : "none yet" })
      ]),
      explain.childNodes.length ? explain : null,
      el("div", { className: "actions" }, [buildBtn, flashBtn, editBtn]),
      reasons.length ? el("p", { className: "reason hint", text: reasons.join(" ") }) : null
    ]);
    box.appendChild(card);
  }
  renderToolbar(ctx);
}

function renderToolbar(ctx) {
  const { state } = ctx;
  const auto = state.profiles.filter((p) => p.auto_update && p.target === "klipper");
  const upd = $("update-all");
  let why = "";
  if (!auto.length) { why = "No profile has auto_update: mark the boards Update all may flash."; }
  else if (isPrinting(state)) { why = "Klipper is printing: flashing would end the print."; }
  else if (flashBusy(state)) { why = "Another flash is running."; }
  upd.disabled = !!why;
  upd.title = why;
  $("update-all-why").textContent = why;
  const buildAll = $("build-all");
  buildAll.disabled = !state.profiles.length || (state.status && state.status.builds_available === false);
}

// Update all: the auto_update boards, CAN nodes before the USB-CAN bridge.
export function askUpdateAll(ctx) {
  const auto = ctx.state.profiles.filter((p) => p.auto_update && p.target === "klipper");
  const order = auto.slice().sort((a, b) => rank(a) - rank(b));
  ctx.confirm({
    title: "Update all",
    lines: ["Builds and flashes the boards marked auto_update whose firmware is not the build's, in this order (CAN nodes first, the USB-CAN bridge last, as it carries the CAN bus):"]
      .concat(order.map((p, i) => `${i + 1}. ${p.name} — ${connectionText(p)}`))
      .concat(["Klipper is stopped once and started again at the end. Boards already up to date are left alone."]),
    yes: "Update all",
    run: () => ctx.startJob("server.octoflash.update_all", {})
  });
}

function rank(p) {
  if (p.canbus_uuid) { return /canbridge|usbcan/i.test(p.preset || "") ? 2 : 0; }
  return 1;
}

export async function buildAll(ctx) {
  for (const p of ctx.state.profiles) {
    if (blockers(ctx.state, p).build) { continue; }
    await ctx.startJob("server.octoflash.build", { profile: p.name });
  }
}
