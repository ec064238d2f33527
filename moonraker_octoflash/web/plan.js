// Flash…: the plan first (each step in words, the exact commands, the build
// when there is no current one), then the question.  A DFU plan shows how to
// put the board into DFU mode as a drawing and, while the job waits for the
// board, a countdown.
import { $, el, clear, show, kb } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) { node.setAttribute(k, v); }
  if (text) { node.textContent = text; }
  return node;
}

// The board with its BOOT0 jumper and reset button, numbered as the steps are.
export function dfuDrawing(boardName) {
  const root = svg("svg", { viewBox: "0 0 360 200", class: "dfu-drawing", role: "img",
    "aria-label": "Where the BOOT0 jumper and the reset button are on the board" });
  root.appendChild(svg("rect", { x: 10, y: 20, width: 250, height: 160, rx: 8, class: "pcb" }));
  root.appendChild(svg("text", { x: 135, y: 110, "text-anchor": "middle", class: "pcb-label" }, boardName || "controller board"));
  // MCU
  root.appendChild(svg("rect", { x: 110, y: 125, width: 50, height: 40, rx: 3, class: "mcu" }));
  root.appendChild(svg("text", { x: 135, y: 150, "text-anchor": "middle", class: "small" }, "MCU"));
  // BOOT0 header: three pins, jumper on BOOT0-3.3V
  for (let i = 0; i < 3; i++) { root.appendChild(svg("circle", { cx: 40 + i * 14, cy: 50, r: 4, class: "pin" })); }
  root.appendChild(svg("rect", { x: 33, y: 42, width: 28, height: 16, rx: 3, class: "jumper" }));
  root.appendChild(svg("text", { x: 54, y: 78, "text-anchor": "middle", class: "small" }, "BOOT0"));
  root.appendChild(svg("circle", { cx: 30, cy: 30, r: 10, class: "step" }));
  root.appendChild(svg("text", { x: 30, y: 34, "text-anchor": "middle", class: "step-n" }, "1"));
  // Reset button
  root.appendChild(svg("rect", { x: 200, y: 40, width: 30, height: 30, rx: 4, class: "button" }));
  root.appendChild(svg("circle", { cx: 215, cy: 55, r: 9, class: "button-cap" }));
  root.appendChild(svg("text", { x: 215, y: 88, "text-anchor": "middle", class: "small" }, "RESET"));
  root.appendChild(svg("circle", { cx: 245, cy: 32, r: 10, class: "step" }));
  root.appendChild(svg("text", { x: 245, y: 36, "text-anchor": "middle", class: "step-n" }, "2"));
  // USB cable to the host
  root.appendChild(svg("rect", { x: 250, y: 120, width: 24, height: 20, rx: 2, class: "usb" }));
  root.appendChild(svg("path", { d: "M274 130 C 310 130, 310 170, 350 170", class: "cable" }));
  root.appendChild(svg("text", { x: 300, y: 120, "text-anchor": "middle", class: "small" }, "USB"));
  root.appendChild(svg("circle", { cx: 330, cy: 150, r: 10, class: "step" }));
  root.appendChild(svg("text", { x: 330, y: 154, "text-anchor": "middle", class: "step-n" }, "3"));
  return root;
}

export function dfuHelp(plan, boardName) {
  const wait = (plan.steps || []).find((s) => s.kind === "wait_dfu");
  if (!wait) { return null; }
  const text = (wait.params && wait.params.instructions) || "";
  return el("div", { className: "dfu-help", "data-part": "dfu" }, [
    el("h4", { text: "Put the board into DFU mode" }),
    dfuDrawing(boardName),
    el("ol", {}, [
      el("li", { text: "Fit the BOOT0 jumper (next to the MCU on the Octopus: it joins BOOT0 to 3.3V), or hold the BOOT button." }),
      el("li", { text: "Press and release RESET. The board now waits in DFU mode (USB 0483:df11) instead of running its firmware." }),
      el("li", { text: "Keep it connected by USB. When octoflash has written it, remove the jumper and press RESET again." })
    ]),
    el("p", { className: "warning", text: "While the board is in DFU mode its outputs are not controlled: heaters and fans may switch on. Keep an eye on the printer, or disconnect the heaters." }),
    text ? el("p", { className: "hint", text }) : null,
    el("p", { className: "hint", text: `octoflash waits up to ${Math.round(wait.timeout || 0)} s for the board, with a countdown.` })
  ]);
}

function stepItem(step) {
  return el("li", { "data-kind": step.kind }, [
    el("span", { text: step.title }),
    step.command ? el("code", { className: "command", text: "$ " + step.command }) : null
  ]);
}

export function planView(result, profile) {
  const plan = result.plan || {};
  const box = el("div", { className: "plan" });
  if (result.needs_build) {
    box.appendChild(el("p", { className: "warning", text: result.build_reason ||
      "There is no current build of this profile: it is built first." }));
  }
  const art = plan.artifact || result.artifact || {};
  const facts = [];
  if (plan.method_label || plan.method) { facts.push("Method: " + (plan.method_label || plan.method)); }
  if (art.version) { facts.push("Firmware: " + art.version + (art.size ? ", " + kb(art.size) : "") + (result.needs_build ? " (to be built)" : "")); }
  if (plan.address) { facts.push("Address: " + plan.address); }
  if (plan.board_status) { facts.push("Board: " + plan.board_status.detail); }
  if (facts.length) { box.appendChild(el("p", { className: "hint", text: facts.join(" · ") })); }
  const list = el("ol", { className: "plan-steps" });
  for (const step of (plan.build_steps || []).concat(plan.steps || [])) { list.appendChild(stepItem(step)); }
  box.appendChild(list);
  for (const w of plan.warnings || []) { box.appendChild(el("p", { className: "warning", text: w })); }
  const help = dfuHelp(plan, profile.board);
  if (help) { box.appendChild(help); }
  return box;
}

export async function openPlan(ctx, profile, options = {}) {
  const params = Object.assign({ profile: profile.name }, options.artifact_id ? { artifact_id: options.artifact_id } : {});
  let result;
  try {
    result = await ctx.rpc.call("server.octoflash.plan", params);
  } catch (err) {
    ctx.actionError(err.message);
    return;
  }
  ctx.state.lastPlan = result.plan;
  const what = options.artifact_id ? `Flash '${profile.name}' with the earlier build ${options.artifact_id}` :
    `Flash '${profile.name}'`;
  ctx.confirm({
    title: what,
    body: planView(result, profile),
    lines: ["Klipper is stopped while the board is written and started again afterwards."],
    yes: result.needs_build ? "Build and flash" : "Flash now",
    run: () => ctx.startJob("server.octoflash.flash", Object.assign({ profile: profile.name },
      options.artifact_id ? { artifact_id: options.artifact_id } : {}))
  });
}

// While the job waits for the board in DFU mode: how long is left.  The
// countdown starts when the job reaches its wait_dfu step and ends with the
// write (or the job).
let timer = null;
const AFTER_WAIT = ["write_dfu", "write", "erase", "mass_erase", "download", "verify",
                    "wait_return", "start_klipper", "check_version", "done"];

function stopWait(box) {
  if (timer) { clearInterval(timer); timer = null; }
  show(box, false);
}

export function followWait(ctx) {
  const job = ctx.state.job;
  const box = $("job-wait");
  const running = job && job.state === "running";
  if (!running) { stopWait(box); ctx.state.waitJob = null; return; }
  if (job.stage === "wait_dfu" && ctx.state.waitJob !== job.job_id) {
    ctx.state.waitJob = job.job_id;
    ctx.state.waitSince = Date.now();
    const plan = job.plan || ctx.state.lastPlan || {};
    const step = (plan.steps || []).find((s) => s.kind === "wait_dfu") || {};
    const total = step.timeout || 0;
    clear(box).appendChild(dfuHelp(plan, "") || el("span"));
    const count = el("p", { className: "countdown", role: "timer", "aria-live": "off" });
    box.appendChild(count);
    const tick = () => {
      const left = Math.max(0, Math.round(total - (Date.now() - ctx.state.waitSince) / 1000));
      count.textContent = `Waiting for the board in DFU mode: ${left} s left`;
    };
    tick();
    if (timer) { clearInterval(timer); }
    timer = setInterval(tick, 1000);
    show(box, true);
  }
  if (ctx.state.waitJob !== job.job_id || AFTER_WAIT.includes(job.stage)) { stopWait(box); }
}
