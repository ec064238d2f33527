// What discovery sees; a board not in any profile can be added from here.
import { $, el, clear, when, button } from "./dom.js";

function methodText(ctx, key) {
  for (const m of (ctx.state.status && ctx.state.status.flash_methods) || []) {
    if (m.device_labels && m.device_labels[key]) { return m.device_labels[key]; }
  }
  return key || "";
}

export function renderDevices(ctx) {
  const box = clear($("devices"));
  const d = ctx.state.devices;
  if (!d) { box.appendChild(el("p", { className: "hint", text: "Not scanned yet." })); return; }
  const list = el("ul", { id: "device-list", className: "devices" });
  const add = (text, device) => {
    list.appendChild(el("li", {}, [el("span", { text }),
      device ? button("Add this board…", { "data-action": "add-device", on: { click: () => ctx.openEditor(null, device) } }, "plus") : null]));
  };
  for (const m of d.klipper_mcus || []) {
    add("Klipper [" + m.object_name + "]: " + (m.mcu_version || "not connected") + (m.mcu_type ? " (" + m.mcu_type + ")" : ""), null);
  }
  for (const u of d.usb || []) {
    add("USB " + methodText(ctx, u.kind) + " " + (u.usb_id || u.vid_pid || u.id || "") + (u.serial ? " serial " + u.serial : "") +
        (u.port_path ? " at " + u.port_path : ""), ctx.unclaimed({ type: "usb", device: u }));
  }
  for (const s of d.serial_ports || []) {
    add("Serial " + (s.name || s.path) + (s.kind ? " (" + s.kind + ")" : ""), ctx.unclaimed({ type: "serial", device: s }));
  }
  for (const c of d.can_interfaces || []) { add("CAN interface " + c.name + (c.up ? " up" : " down"), null); }
  for (const n of d.can_nodes || []) {
    add("CAN node " + n.uuid + " on " + n.interface + ": " + (n.application || "?"), ctx.unclaimed({ type: "can", device: n }));
  }
  if (!list.childNodes.length) { list.appendChild(el("li", { className: "hint", text: "No boards seen." })); }
  box.appendChild(list);
  for (const w of d.warnings || []) { box.appendChild(el("p", { className: "warning", text: w })); }
  box.appendChild(el("p", { className: "hint", text: "Scanned " + when(d.taken_at) }));
}
