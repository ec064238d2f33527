// The profile's Kconfig changes on top of its preset.
import { el, clear, button } from "./dom.js";

export function renderKconfig(ctx, box, kc) {
  box.octoflashState = kc;
  clear(box);
  box.appendChild(el("h4", { text: "Firmware options (Kconfig changes on top of the preset)" }));
  const list = el("div", { className: "overrides" });
  for (const [symbol, value] of Object.entries(kc.overrides)) {
    const id = "kc-" + symbol;
    const input = el("input", { id, type: "text", value, disabled: kc.readOnly,
      on: { change: () => { kc.overrides[symbol] = input.value.trim(); } } });
    list.appendChild(el("div", { className: "field", "data-symbol": symbol }, [
      el("label", { for: id, text: symbol }), input,
      el("small", { className: "error field-error", hidden: true })
    ]));
  }
  box.appendChild(list);
  if (!kc.readOnly) {
    box.appendChild(button("Add an option", { on: { click: () => {
      const name = (prompt("Kconfig symbol (CONFIG_…)") || "").trim();
      if (name) { kc.overrides[name] = ""; renderKconfig(ctx, box, kc); }
    } } }, "plus"));
  }
}
