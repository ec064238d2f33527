// octoflash's page: the firmware workbench.  ES modules, one per view, no
// build step; everything comes over Moonraker's JSON-RPC websocket (the
// calls of docs/api.md), under Moonraker's own authorization.
import { Rpc, socketUrl, isUnauthorized } from "./rpc.js";
import { $, el, clear, show } from "./dom.js";
import { renderBoards, askUpdateAll, buildAll } from "./boards.js";
import { renderJob, appendLog, showResult, dismissResult, isFinal, isActive, LOG_LINES } from "./job.js";
import { openPlan, followWait } from "./plan.js";
import { renderHistory } from "./history.js";
import { renderDevices } from "./devices.js";
import { openEditor, unclaimed } from "./profiles.js";

const HISTORY = 20;
const KEY_STORE = "octoflash.api_key";

const state = {
  profiles: [], entries: {}, devices: null, status: null, jobs: [],
  job: null, jobLog: [], children: {}, lastPlan: null, waitSince: null
};

let rpc = null;

const ctx = {
  state,
  get rpc() { return rpc; },
  startJob, confirm, actionError,
  openPlan: (p, options) => openPlan(ctx, p, options),
  openEditor: (p, device) => openEditor(ctx, p, device),
  unclaimed: (device) => unclaimed(ctx, device),
  reload: () => Promise.all([loadProfiles(), loadStatus()]),
  render: renderAll
};
window.octoflash = ctx;          // for the curious, and for the tests

function renderAll() {
  renderStatus();
  renderBoards(ctx);
  renderJob(ctx);
  followWait(ctx);
}

// --- connecting ----------------------------------------------------------------

function connect() {
  setConnection("connecting…", "");
  rpc = new Rpc(socketUrl());
  rpc.onclose = () => {
    setConnection("disconnected: retrying", "bad");
    setTimeout(connect, 3000);
  };
  subscribe(rpc);
  rpc.open().then(identify).then(loadAll).catch((err) => {
    if (isUnauthorized(err)) { askForKey(err); return; }
    setConnection(String((err && err.message) || err), "bad");
  });
}

let keyRefused = "";

function askForKey(err) {
  if (sessionStorage.getItem(KEY_STORE)) {
    // Refused: forget it and try once more without (a trusted computer needs none).
    sessionStorage.removeItem(KEY_STORE);
    keyRefused = "Moonraker did not accept that API key (" + (err.message || "refused") + ").";
    reconnect();
    return;
  }
  setConnection("not authorized", "bad");
  $("login-refused").textContent = keyRefused;
  show($("login-refused"), !!keyRefused);
  show($("login"), true);
  $("api-key").value = "";
  $("api-key").focus();
}

function reconnect() {
  if (rpc) { rpc.close(); }
  connect();
}

async function identify() {
  const params = { client_name: "octoflash", version: "1", type: "web", url: "https://github.com/" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) { params.api_key = key; }
  await rpc.call("server.connection.identify", params);
  // A trusted client passes; otherwise the first call says 401.
  state.status = await rpc.call("server.octoflash.status");
  keyRefused = "";
  show($("login"), false);
  setConnection("connected", "good");
}

function setConnection(text, kind) {
  const node = $("connection");
  node.textContent = text;
  node.className = "pill " + (kind || "");
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value);
  reconnect();
});

// --- loading -------------------------------------------------------------------------

async function loadAll() {
  renderStatus();
  watchPrint();
  const [, , flashJob] = await Promise.all([loadProfiles(), loadEntries(), loadJobs(), loadDevices(false)]);
  const active = state.jobs.find((j) => isActive(j.state) && !j.parent);
  if (active) { await followJob(active.job_id); }
  else if (flashJob) { await followJob(flashJob); }
}

// Klipper's print state, as Mainsail follows it: Flash is disabled while printing.
async function watchPrint() {
  try {
    const result = await rpc.call("printer.objects.subscribe", { objects: { print_stats: ["state", "filename"] } });
    onStatus((result && result.status) || {});
  } catch (err) { /* Klipper not connected: the status call says so */ }
}

function onStatus(status) {
  const ps = status.print_stats;
  if (!ps || !state.status) { return; }
  const k = state.status.klipper = state.status.klipper || {};
  if (ps.state !== undefined) { k.print_state = ps.state; }
  if (ps.filename !== undefined) { k.print_filename = ps.filename; }
  renderStatus();
  renderBoards(ctx);
}

async function loadStatus() {
  state.status = await rpc.call("server.octoflash.status");
  renderStatus();
  renderBoards(ctx);
}

async function loadProfiles() {
  const result = await rpc.call("server.octoflash.profiles");
  state.profiles = result.profiles || [];
  renderWarnings((result.warnings || []).concat((state.status && state.status.warnings) || []));
  renderBoards(ctx);
  // which detected boards can be added depends on the profiles
  if (state.devices) { renderDevices(ctx); }
}

async function loadEntries() {
  // The update manager's view; absent when [update_manager] is not configured.
  try { readEntries(await rpc.call("machine.update.status", { refresh: false })); }
  catch (err) { state.entries = {}; }
}

function readEntries(result) {
  const entries = {};
  const info = (result && result.version_info) || {};
  for (const name of Object.keys(info)) {
    const part = info[name] && info[name].octoflash;
    if (part && part.profile) { entries[part.profile] = part; }
  }
  state.entries = entries;
  renderBoards(ctx);
}

async function loadJobs() {
  const result = await rpc.call("server.octoflash.jobs", { limit: HISTORY });
  state.jobs = result.jobs || [];
  renderHistory(ctx);
  return result.flash_job;
}

async function loadDevices(refresh) {
  $("scan").disabled = true;
  try {
    const result = await rpc.call("server.octoflash.devices", { refresh: !!refresh });
    state.devices = result.devices;
    renderDevices(ctx);
    await loadStatus();
  } catch (err) {
    $("devices").textContent = "Scan failed: " + err.message;
  } finally {
    $("scan").disabled = false;
  }
}

// --- notifications -------------------------------------------------------------------

function subscribe(client) {
  client.on("notify_octoflash_job_update", onJobUpdate);
  client.on("notify_octoflash_devices", (devices) => {
    state.devices = devices;
    renderDevices(ctx);
    renderBoards(ctx);
  });
  client.on("notify_update_refreshed", readEntries);
  client.on("notify_status_update", onStatus);
  for (const name of ["notify_klippy_ready", "notify_klippy_disconnected", "notify_klippy_shutdown"]) {
    client.on(name, () => { loadStatus(); loadProfiles(); if (name === "notify_klippy_ready") { watchPrint(); } });
  }
}

const LIVE = ["state", "stage", "percent", "message", "error", "recovery", "title"];

function onJobUpdate(update) {
  const job = state.job;
  if (!job || job.job_id !== update.job_id) {
    if (update.parent && job && job.job_id === update.parent) {
      // A board of the update-all job being followed.
      state.children[update.profile] = update;
      if (update.event === "step" || update.event === "output") {
        appendLog(ctx, "[" + update.profile + "] " + (update.event === "step" ? update.title + ": " : "") + (update.message || ""));
      }
      renderJob(ctx);
    } else if (update.event === "state" && update.state === "running" && !update.parent) {
      // A job started elsewhere (macro, update manager, another browser): follow it.
      followJob(update.job_id, update);
    }
    if (update.final) { loadJobs(); loadProfiles(); loadStatus(); }
    return;
  }
  for (const k of LIVE) { if (k in update) { job[k] = update[k]; } }
  if (update.event === "output") { appendLog(ctx, update.message); }
  else if (update.event === "step") { appendLog(ctx, "[" + (update.title || update.stage) + "] " + (update.message || "")); }
  if (update.event === "step" && update.stage === "wait_dfu" && !job.plan) { refreshRecord(job); }
  renderJob(ctx);
  followWait(ctx);
  if (update.final) {
    refreshRecord(job).then(() => { showResult(job); renderJob(ctx); });
    loadJobs(); loadProfiles(); loadEntries(); loadStatus();
  }
}

// The record has every line (output is sent at most every 0.2 s) and the plan.
async function refreshRecord(job) {
  try {
    const { job: record } = await rpc.call("server.octoflash.job", { job_id: job.job_id });
    if (state.job !== job) { return; }
    mergeRecord(job, record);
    state.jobLog = (record.log || []).slice(-LOG_LINES);
    renderJob(ctx);
  } catch (err) { /* the live lines stay */ }
}

async function followJob(jobId, update) {
  const job = { job_id: jobId, state: "queued" };
  if (update) { for (const k of ["kind", "profile"].concat(LIVE)) { job[k] = update[k]; } }
  state.job = job;
  state.jobLog = [];
  state.children = {};
  renderJob(ctx);
  await refreshRecord(job);
  if (isFinal(job.state)) { showResult(job); }
  renderAll();
}

// A record read before the job ended never takes back the end an update told.
function mergeRecord(job, record) {
  const keepLive = isFinal(job.state) && !isFinal(record.state);
  for (const k of Object.keys(record)) {
    if (k === "log" || (keepLive && LIVE.includes(k))) { continue; }
    job[k] = record[k];
  }
}

// --- actions ---------------------------------------------------------------------------

function actionError(message) {
  const node = $("action-error");
  node.textContent = message;
  show(node, !!message);
  if (message) { node.scrollIntoView({ block: "nearest" }); }
}

async function startJob(method, params) {
  actionError("");
  try {
    const result = await rpc.call(method, params);
    if (!result.job) { actionError(result.message || "Nothing to do."); return null; }
    if (state.job && state.job.job_id === result.job.job_id) {
      mergeRecord(state.job, result.job);     // its first updates came first
    } else {
      state.job = result.job;
      state.jobLog = [];
      state.children = {};
    }
    renderAll();
    loadJobs();
    return result.job;
  } catch (err) {
    actionError(err.message);
    return null;
  }
}

// One question at a time, in the dialog above the boards.
function confirm({ title, body, lines = [], yes, run }) {
  const box = $("confirm");
  $("confirm-title").textContent = title;
  const content = clear($("confirm-body"));
  if (body) { content.appendChild(body); }
  for (const line of lines) { content.appendChild(el("p", { text: line })); }
  $("confirm-yes").querySelector("span").textContent = yes || "OK";
  const close = () => { show(box, false); $("confirm-yes").onclick = null; };
  $("confirm-yes").onclick = () => { close(); run(); };
  $("confirm-no").onclick = close;
  show(box, true);
  box.scrollIntoView({ block: "nearest" });
  $("confirm-yes").focus();
}

$("scan").addEventListener("click", () => loadDevices(true));
$("update-all").addEventListener("click", () => askUpdateAll(ctx));
$("build-all").addEventListener("click", () => buildAll(ctx));
$("add-profile").addEventListener("click", () => openEditor(ctx, null, null));
$("result-dismiss").addEventListener("click", dismissResult);
$("job-cancel").addEventListener("click", async () => {
  if (!state.job) { return; }
  try { await rpc.call("server.octoflash.job.cancel", { job_id: state.job.job_id }); }
  catch (err) { state.job.message = err.message; renderJob(ctx); }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("confirm").hidden) { $("confirm-no").click(); }
});

// --- rendering -------------------------------------------------------------------------

function renderStatus() {
  const s = state.status;
  if (!s) { return; }
  const k = s.klipper || {};
  const ks = $("klipper-state");
  ks.textContent = "Klipper: " + (k.connected ? k.state : "not connected");
  ks.className = "pill " + (k.connected && k.state === "ready" ? "good" : "warn");
  const ps = $("print-state");
  ps.textContent = "Print: " + (k.print_state || "unknown");
  ps.className = "pill " + (k.print_state === "printing" || k.print_state === "paused" ? "warn" : "");
}

function renderWarnings(list) {
  const box = clear($("warnings"));
  for (const text of new Set(list)) { box.appendChild(el("p", { className: "warning", text })); }
  show(box, list.length > 0);
}

connect();
