// Profiles from the page: create one from a preset or from a detected board
// ("add this board"), edit and delete API profiles; a moonraker.conf profile
// is read-only, with "copy to an editable profile".  Every field is checked
// by the API itself; its error is shown at the field it names.
import { $, el, clear, show, button } from "./dom.js";
import { renderKconfig } from "./kconfig.js";

const FIELDS = [
  { key: "name", label: "Name", help: "Letters, digits, _ and -; how octoflash, macros and the update manager name this board." },
  { key: "description", label: "Description", help: "Shown under the name." },
  { key: "preset", label: "Preset", help: "The board configuration this profile starts from.", type: "preset" },
  { key: "klipper_mcu", label: "Klipper MCU", help: "The printer.cfg section this board is: mcu for [mcu], toolhead for [mcu toolhead]." },
  { key: "canbus_uuid", label: "CAN uuid", help: "12 hexadecimal digits, as Klipper's canbus_uuid (CAN nodes and USB-CAN bridges)." },
  { key: "canbus_interface", label: "CAN interface", help: "can0 unless you have several." },
  { key: "serial", label: "Serial port", help: "The /dev/serial/by-id/… path of a USB board." },
  { key: "dfu_serial", label: "DFU serial", help: "The board's serial number in DFU mode, when several boards may be in DFU mode at once." },
  { key: "flash_method", label: "Flash method", help: "Leave empty to let octoflash choose from the preset's methods.", type: "method" },
  { key: "auto_update", label: "Update all may flash this board", type: "bool" }
];

let presets = null;

async function loadPresets(ctx) {
  if (!presets) { presets = (await ctx.rpc.call("server.octoflash.presets")).presets || []; }
  return presets;
}

// The device as a profile's connection, or null when a profile claims it already.
export function unclaimed(ctx, found) {
  const d = found.device;
  const claim = {};
  if (found.type === "can") { claim.canbus_uuid = d.uuid; claim.canbus_interface = d.interface; }
  else if (found.type === "serial") { claim.serial = d.path; claim.mcu = d.mcu; }
  else if (found.type === "usb") {
    if (d.kind === "dfu") { claim.dfu_serial = d.serial; }
    else if (d.canbus_uuid) { claim.canbus_uuid = d.canbus_uuid; }
    else if (d.serial_paths && d.serial_paths.length) { claim.serial = d.serial_paths[0]; }
    else { return null; }
    claim.mcu = d.mcu;
  } else { return null; }
  // claimed: a profile names it, or the scan matched it to a profile
  // (a match of the last scan counts only while its profile still exists)
  const names = new Set(ctx.state.profiles.map((p) => p.name));
  const seen = Object.entries((ctx.state.devices && ctx.state.devices.profiles) || {})
    .filter(([name]) => names.has(name)).map(([, s]) => s && s.device).filter(Boolean);
  const same = (a) => (a.serial && d.serial && a.serial === d.serial) ||
    (a.uuid && (a.uuid === d.uuid || a.uuid === d.canbus_uuid)) ||
    (a.canbus_uuid && (a.canbus_uuid === d.uuid || a.canbus_uuid === d.canbus_uuid)) ||
    (a.path && a.path === d.path);
  const taken = seen.some(same) || ctx.state.profiles.some((p) =>
    (claim.canbus_uuid && p.canbus_uuid === claim.canbus_uuid) ||
    (claim.serial && p.serial === claim.serial) ||
    (claim.dfu_serial && p.dfu_serial === claim.dfu_serial));
  if (taken) { return null; }
  claim.kind = found.type === "usb" ? d.kind : found.type;
  claim.application = d.application;
  return claim;
}

// Presets that fit what the board reports: its MCU, bootloader and connection.
function suggest(list, device) {
  if (!device) { return []; }
  const mcu = (device.mcu || "").toLowerCase();
  return list.filter((p) => {
    if (p.target !== "klipper") { return false; }
    if (mcu && !p.mcu.toLowerCase().startsWith(mcu.replace(/xx$/, ""))) { return false; }
    const methods = (p.flash_methods || []).map((m) => m.method);
    if (device.canbus_uuid && !/can/i.test(p.id + p.title)) { return false; }
    if (device.kind === "katapult" || device.application === "Katapult") { return methods.includes("katapult"); }
    return true;
  });
}

export async function openEditor(ctx, profile, device, asNew = false) {
  const list = await loadPresets(ctx);
  const box = $("editor");
  const readOnly = !!(profile && profile.read_only) && !asNew;
  const draft = profile ? JSON.parse(JSON.stringify(profile)) : { auto_update: false };
  if (device) {
    for (const k of ["canbus_uuid", "canbus_interface", "serial", "dfu_serial"]) { if (device[k]) { draft[k] = device[k]; } }
  }
  const suggestions = suggest(list, device);
  if (device && suggestions.length && !draft.preset) { draft.preset = suggestions[0].id; }
  if (!draft.preset && !draft.mcu && list.length) { draft.preset = list[0].id; }
  if (asNew) { delete draft.read_only; draft.source = "api"; }
  $("editor-title").textContent = readOnly ? `Profile ${profile.name} (moonraker.conf, read-only)` :
    asNew ? `New profile (a copy of ${profile.copied_from})` :
    profile ? `Edit profile ${profile.name}` : device ? "Add this board" : "New profile";
  const form = clear($("editor-form"));
  if (readOnly) {
    form.appendChild(el("p", { className: "hint", text: `This profile comes from [octoflash ${profile.name}] in moonraker.conf: change it there, or copy it to a profile you can edit here.` }));
  }
  if (device) {
    form.appendChild(el("p", { className: "hint", text: "Filled in from the board the scan saw" +
      (device.mcu ? ` (MCU ${device.mcu})` : "") + (device.application ? `, running ${device.application}` : "") +
      (suggestions.length ? `; suggested preset: ${suggestions[0].title}.` : ".") }));
  }
  const inputs = {};
  for (const f of FIELDS) {
    const id = "field-" + f.key;
    let input;
    if (f.type === "preset") {
      input = el("select", { id });
      const ordered = suggestions.concat(list.filter((p) => !suggestions.includes(p)));
      if (draft.mcu) { input.appendChild(el("option", { value: "", text: `(from the MCU ${draft.mcu})` })); }
      for (const p of ordered) { input.appendChild(el("option", { value: p.id, text: p.title + (suggestions.includes(p) ? " — suggested" : "") })); }
      input.value = draft.preset || "";
    } else if (f.type === "method") {
      input = el("select", { id });
      input.appendChild(el("option", { value: "", text: "(octoflash chooses)" }));
      for (const m of (ctx.state.status && ctx.state.status.flash_methods) || []) { input.appendChild(el("option", { value: m.name, text: m.label })); }
      input.value = draft.flash_method || "";
    } else if (f.type === "bool") {
      input = el("input", { id, type: "checkbox", checked: !!draft.auto_update });
    } else {
      input = el("input", { id, type: "text", value: draft[f.key] || "", autocomplete: "off", spellcheck: false });
    }
    input.disabled = readOnly || (f.key === "name" && !!profile && !asNew);
    input.setAttribute("aria-describedby", id + "-help " + id + "-error");
    inputs[f.key] = input;
    form.appendChild(el("div", { className: "field" + (f.type === "bool" ? " check" : ""), "data-field": f.key }, [
      el("label", { for: id, text: f.label }), input,
      f.help ? el("small", { id: id + "-help", className: "hint", text: f.help }) : null,
      el("small", { id: id + "-error", className: "error field-error", hidden: true })
    ]));
  }
  const kconfigBox = el("div", { className: "kconfig", id: "kconfig" });
  form.appendChild(kconfigBox);
  const overrides = Object.assign({}, draft.kconfig || {});
  const kc = { overrides, profile: draft, readOnly };
  inputs.preset.addEventListener("change", () => {
    draft.preset = inputs.preset.value;
    kc.fromPreset = true;
    renderKconfig(ctx, kconfigBox, kc);
  });
  renderKconfig(ctx, kconfigBox, kc);

  const actions = clear($("editor-actions"));
  const err = $("editor-error");
  show(err, false);
  if (readOnly) {
    actions.appendChild(button("Copy to an editable profile", { "data-action": "copy",
      on: { click: () => {
        const copy = JSON.parse(JSON.stringify(profile));
        copy.copied_from = profile.name;
        copy.name = profile.name + "-copy";
        openEditor(ctx, copy, null, true);
      } } }, "copy"));
  } else {
    actions.appendChild(button("Save", { "data-action": "save", className: "primary",
      on: { click: () => save(ctx, profile, inputs, kc) } }, "check"));
    if (profile && profile.source === "api" && !asNew) {
      actions.appendChild(button("Delete", { "data-action": "delete", className: "danger",
        on: { click: () => remove(ctx, profile) } }, "delete"));
    }
  }
  actions.appendChild(button("Close", { "data-action": "close", on: { click: () => show(box, false) } }, "close"));
  show(box, true);
  box.scrollIntoView({ block: "nearest" });
  (readOnly ? actions.querySelector("button") : inputs[profile && !asNew ? "description" : "name"]).focus();
}

function body(inputs, kc) {
  const data = {};
  for (const f of FIELDS) {
    const input = inputs[f.key];
    if (f.type === "bool") { data[f.key] = input.checked; continue; }
    const value = input.value.trim();
    if (value) { data[f.key] = value; }
  }
  if (!data.preset && kc.profile.mcu) { data.mcu = kc.profile.mcu; data.target = kc.profile.target; }
  const kconfig = {};
  for (const [k, v] of Object.entries(kc.overrides)) { if (v !== undefined && v !== null) { kconfig[k] = v; } }
  if (Object.keys(kconfig).length) { data.kconfig = kconfig; }
  return data;
}

// Which field the API's message is about: "profile 'x'.canbus_uuid: …", "….kconfig.CONFIG_X: …".
export function fieldOf(message) {
  const m = /'\.([a-z_]+)(?:\.([A-Z0-9_]+))?:/.exec(message || "");
  if (m) { return { field: m[1], symbol: m[2] || null }; }
  for (const f of FIELDS) { if (new RegExp("\\b" + f.key + "\\b").test(message)) { return { field: f.key, symbol: null }; } }
  if (/preset/i.test(message)) { return { field: "preset", symbol: null }; }
  const sym = /\b(CONFIG_[A-Z0-9_]+)\b/.exec(message || "");
  if (sym) { return { field: "kconfig", symbol: sym[1] }; }
  return null;
}

function clearErrors() {
  for (const node of document.querySelectorAll("#editor .field-error")) { node.hidden = true; node.textContent = ""; }
  for (const node of document.querySelectorAll("#editor [aria-invalid]")) { node.removeAttribute("aria-invalid"); }
  show($("editor-error"), false);
}

function showError(message) {
  const where = fieldOf(message);
  let node = null;
  if (where && where.field === "kconfig" && where.symbol) {
    node = document.querySelector(`#kconfig [data-symbol="${where.symbol}"] .field-error`);
  } else if (where) {
    node = $("field-" + where.field + "-error");
  }
  if (node) {
    node.textContent = message;
    node.hidden = false;
    const input = node.parentElement.querySelector("input, select");
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  } else {
    $("editor-error").textContent = message;
    show($("editor-error"), true);
  }
}

async function save(ctx, profile, inputs, kc) {
  clearErrors();
  try {
    const result = await ctx.rpc.call("server.octoflash.post_profile", body(inputs, kc));
    show($("editor"), false);
    ctx.state.notice = `Profile ${result.profile.name} ${result.action}.`;
    await ctx.reload();
  } catch (err) {
    showError(err.message);
  }
}

async function remove(ctx, profile) {
  ctx.confirm({
    title: `Delete profile ${profile.name}?`,
    lines: ["Its builds stay on disk; the board itself is not touched."],
    yes: "Delete",
    run: async () => {
      try {
        await ctx.rpc.call("server.octoflash.delete_profile", { name: profile.name });
        show($("editor"), false);
        await ctx.reload();
      } catch (err) { showError(err.message); }
    }
  });
}
