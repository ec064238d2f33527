// The Kconfig configurator: the options `make menuconfig` offers for the
// profile's MCU, read from the user's own checkout (GET
// server.octoflash.get_kconfig), with dependencies applied live: every
// change is resolved by the server with kconfiglib (POST
// server.octoflash.post_kconfig, the profile's own checks), so an option
// appears and disappears as menuconfig would show it.  The changes against
// the preset and the resolved .config are shown before saving.
import { el, clear, show } from "./dom.js";

function configValue(entry, raw) {
  if (entry.type === "string") { return '"' + raw + '"'; }
  return raw;
}

function displayValue(entry, value) {
  if (value === undefined || value === null) { return ""; }
  if (entry.type === "string") { return String(value).replace(/^"|"$/g, ""); }
  return String(value);
}

export async function renderKconfig(ctx, box, kc) {
  box.octoflashState = kc;
  const token = kc.token = (kc.token || 0) + 1;      // the last render wins
  clear(box);
  box.appendChild(el("h3", { text: "Firmware options" }));
  const status = el("p", { className: "hint", text: "Reading the Kconfig of your checkout…" });
  box.appendChild(status);
  const params = kc.profile.name && ctx.state.profiles.some((p) => p.name === kc.profile.name) && !kc.fromPreset ?
    { profile: kc.profile.name } : { preset: kc.profile.preset };
  let data;
  try {
    data = await ctx.rpc.call("server.octoflash.get_kconfig", params);
    if (params.preset && Object.keys(kc.overrides).length) {
      // a draft with changes of its own (a copy, or a preset chosen again)
      Object.assign(data, await ctx.rpc.call("server.octoflash.post_kconfig", request(kc)));
    }
  } catch (err) {
    if (token === kc.token) { status.textContent = "The configurator is not available: " + err.message; }
    return;
  }
  if (token !== kc.token) { return; }
  kc.data = data;
  kc.presetValues = data.preset_values;
  status.textContent = `From ${data.checkout} (${data.version}), for ${data.mcu}. ` +
    "Options the preset sets are the starting point; your changes are marked.";
  const tree = el("div", { className: "kc-tree", role: "group", "aria-label": "Kconfig options" });
  box.appendChild(tree);
  const summary = el("div", { className: "kc-summary" });
  box.appendChild(summary);
  kc.tree = tree;
  kc.summary = summary;
  build(ctx, kc);
  apply(kc, data);
}

function request(kc) {
  const body = { name: kc.profile.name || "new", kconfig: Object.assign({}, kc.overrides) };
  if (kc.profile.preset) { body.preset = kc.profile.preset; }
  else if (kc.profile.mcu) { body.mcu = kc.profile.mcu; body.target = kc.profile.target; }
  return body;
}

// The processor and its architecture come from the preset: not changed here.
function locked(entry, data) {
  const names = entry.kind === "choice" ? entry.options : [entry.name];
  return names.some((n) => /^CONFIG_MACH_/.test(n || ""));
}

function build(ctx, kc) {
  const { data, tree } = kc;
  const holders = new Map();
  kc.nodes = new Map();
  for (const entry of data.entries) {
    if (entry.kind === "symbol" && entry.in_choice) { continue; }     // a choice's option
    const parent = entry.parent === null ? tree : holders.get(entry.parent) || tree;
    const id = "kc-" + entry.id;
    let node;
    if (entry.kind === "menu") {
      const body = el("div", { className: "kc-menu-body" });
      node = el("details", { className: "kc-menu", open: true, "data-entry": entry.id }, [
        el("summary", { text: entry.prompt }), body]);
      holders.set(entry.id, body);
    } else if (entry.kind === "comment") {
      node = el("p", { className: "hint", "data-entry": entry.id, text: "— " + entry.prompt });
    } else {
      let input;
      if (entry.kind === "choice") {
        input = el("select", { id });
        for (const name of entry.options) {
          const member = data.entries.find((e) => e.name === name);
          input.appendChild(el("option", { value: name, text: member ? member.prompt : name, "data-entry": member ? member.id : "" }));
        }
      } else if (entry.type === "bool" || entry.type === "tristate") {
        input = el("input", { id, type: "checkbox" });
      } else {
        input = el("input", { id, type: "text", spellcheck: false, autocomplete: "off",
                              inputMode: entry.type === "int" ? "numeric" : "text" });
      }
      input.disabled = kc.readOnly || locked(entry, data);
      input.addEventListener("change", () => change(ctx, kc, entry, input));
      const help = [entry.help, entry.depends ? "Depends on: " + entry.depends : "",
                    entry.name ? entry.name : ""].filter(Boolean).join("\n");
      node = el("div", { className: "field" + (input.type === "checkbox" ? " check" : ""),
                         "data-entry": entry.id, "data-symbol": entry.name || "" }, [
        el("label", { for: id, text: entry.prompt }), input,
        help ? el("small", { className: "hint kc-help", text: help }) : null,
        el("small", { className: "error field-error", hidden: true })
      ]);
      kc.nodes.set(entry.id, { entry, input, node });
      holders.set(entry.id, parent);        // options under a symbol follow it
    }
    parent.appendChild(node);
  }
}

function apply(kc, data) {
  const visible = new Set(data.visible);
  for (const row of kc.tree.querySelectorAll("[data-entry]")) {
    if (row.tagName === "OPTION") { row.hidden = !visible.has(Number(row.dataset.entry)); continue; }
    show(row, visible.has(Number(row.dataset.entry)));
  }
  for (const { entry, input, node } of kc.nodes.values()) {
    if (entry.kind === "choice") {
      input.value = data.values["choice:" + entry.id] || "";
    } else if (input.type === "checkbox") {
      input.checked = data.values[entry.name] === "y";
    } else {
      input.value = displayValue(entry, data.values[entry.name]);
    }
    const names = entry.kind === "choice" ? entry.options : [entry.name];
    node.classList.toggle("changed", names.some((n) => n in kc.overrides));
  }
  renderSummary(kc, data);
}

function renderSummary(kc, data) {
  const box = clear(kc.summary);
  const overrides = Object.entries(kc.overrides);
  box.appendChild(el("h4", { text: "Your changes to the preset" }));
  const list = el("ul", { className: "kc-diff", id: "kc-overrides" });
  for (const [name, value] of overrides) {
    const was = kc.presetValues[name];
    list.appendChild(el("li", { "data-symbol": name, text: `${name}: ${was === undefined ? "(not set by the preset)" : was} → ${value}` }));
  }
  if (!overrides.length) { list.appendChild(el("li", { className: "hint", text: "None: the preset as it is." })); }
  box.appendChild(list);
  const resolved = el("ul", { className: "kc-diff", id: "kc-changes" });
  for (const c of data.changes || []) {
    resolved.appendChild(el("li", { text: `${c.symbol}: ${c.preset === null ? "not set" : c.preset} → ${c.value === null ? "not set" : c.value}` }));
  }
  box.appendChild(el("details", {}, [
    el("summary", { text: `The resolved .config differs from the preset's in ${(data.changes || []).length} line(s)` }), resolved]));
  box.appendChild(el("details", {}, [el("summary", { text: "The resolved .config" }),
    el("pre", { id: "kc-config", tabindex: 0, text: data.config })]));
}

function same(a, b) {
  const norm = (v) => {
    const text = v === undefined || v === null ? "" : String(v).replace(/^"|"$/g, "");
    return text === "" ? "n" : text;
  };
  return norm(a) === norm(b);
}

function followPreset(kc, data) {
  let changed = false;
  for (const [name, value] of Object.entries(kc.presetValues)) {
    if (name in kc.overrides || !(name in data.values)) { continue; }
    const now = data.values[name];
    if (!same(value, now)) {
      const entry = kc.data.entries.find((e) => e.name === name);
      kc.overrides[name] = entry && entry.type === "string" ? '"' + now + '"' : (now === "" ? "n" : now);
      kc.auto.add(name);
      changed = true;
    }
  }
  return changed;
}

async function change(ctx, kc, entry, input) {
  const preset = kc.presetValues;
  // what followed the preset last time is worked out again from this change
  kc.auto = kc.auto || new Set();
  for (const name of kc.auto) { if (name !== entry.name) { delete kc.overrides[name]; } }
  kc.auto.clear();
  const set = (name, value) => {
    if (preset[name] === value || (preset[name] === undefined && value === "n" && !(name in kc.overrides))) { delete kc.overrides[name]; }
    else { kc.overrides[name] = value; }
  };
  if (entry.kind === "choice") {
    for (const name of entry.options) { set(name, name === input.value ? "y" : "n"); }
    // members the preset does not name need no "n"
    for (const name of entry.options) { if (kc.overrides[name] === "n" && preset[name] === undefined) { delete kc.overrides[name]; } }
  } else if (input.type === "checkbox") {
    set(entry.name, input.checked ? "y" : "n");
  } else {
    set(entry.name, configValue(entry, input.value.trim()));
  }
  for (const e of kc.tree.querySelectorAll(".field-error")) { e.hidden = true; }
  try {
    let data = await ctx.rpc.call("server.octoflash.post_kconfig", request(kc));
    // A preset value the change makes impossible (a choice member no longer
    // offered) follows the resolved .config, as menuconfig would save it:
    // the build checks that every requested value holds.
    if (followPreset(kc, data)) { data = await ctx.rpc.call("server.octoflash.post_kconfig", request(kc)); }
    kc.data = Object.assign(kc.data, data);
    apply(kc, data);
  } catch (err) {
    const row = kc.nodes.get(entry.id);
    const node = row && row.node.querySelector(".field-error");
    if (node) { node.textContent = err.message; node.hidden = false; }
  }
}
