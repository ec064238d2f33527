// The job being followed: its steps in words, real percentages, the log
// (its end in view when the job ends), and a result panel that stays until
// dismissed, with the recovery steps of a failed write.
import { $, el, clear, show } from "./dom.js";
import { jobTitle, JOB_STATES, stageWords } from "./words.js";

export const LOG_LINES = 400;
const FINAL = ["done", "failed", "refused", "cancelled", "interrupted"];
export const isFinal = (s) => FINAL.includes(s);
export const isActive = (s) => s === "queued" || s === "running";

function percentText(p) { return p === null || p === undefined ? "" : Math.round(p) + " %"; }

export function renderJob(ctx) {
  const job = ctx.state.job;
  show($("job"), !!job);
  if (!job) { return; }
  $("job-title").textContent = jobTitle(job);
  const st = $("job-state");
  st.textContent = JOB_STATES[job.state] || job.state;
  st.className = "pill " + (job.state === "done" ? "good" : isActive(job.state) ? "" : "bad");
  $("job-stage").textContent = job.title || stageWords(job.stage);
  const bar = $("job-progress");
  if (job.percent === null || job.percent === undefined) { bar.removeAttribute("value"); }
  else { bar.value = job.percent; }
  $("job-percent").textContent = percentText(job.percent);
  $("job-message").textContent = job.message || "";
  $("job-cancel").disabled = !isActive(job.state);
  const pre = $("job-log");
  const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  pre.textContent = ctx.state.jobLog.join("\n");
  if (atEnd || isFinal(job.state)) { pre.scrollTop = pre.scrollHeight; }
  renderChildren(ctx, job);
}

// An update-all job lists its boards with their own stage and percentage.
function renderChildren(ctx, job) {
  const list = clear($("job-boards"));
  const boards = (job.options && job.options.profiles) || [];
  show(list, job.kind === "update_all" && boards.length > 0);
  for (const name of boards) {
    const child = ctx.state.children[name];
    const text = child ? (child.title || stageWords(child.stage)) + (child.percent != null ? " " + percentText(child.percent) : "") +
      (isFinal(child.state) ? " — " + (JOB_STATES[child.state] || child.state) : "") : "waiting";
    list.appendChild(el("li", { "data-board": name }, [el("strong", { text: name }), ": " + text]));
  }
}

export function appendLog(ctx, line) {
  if (!line) { return; }
  const log = ctx.state.jobLog;
  log.push(line);
  if (log.length > LOG_LINES) { log.splice(0, log.length - LOG_LINES); }
  const pre = $("job-log");
  const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  pre.textContent = log.join("\n");
  if (atEnd) { pre.scrollTop = pre.scrollHeight; }
}

// The result of a job that ended: stays on screen until dismissed.
export function showResult(job) {
  const box = $("result");
  const ok = job.state === "done";
  box.className = "card result " + (ok ? "good" : "bad");
  $("result-title").textContent = jobTitle(job) + ": " + (JOB_STATES[job.state] || job.state);
  $("result-message").textContent = job.message || "";
  const err = $("result-error");
  err.textContent = job.error || "";
  show(err, !!job.error && !ok);
  const rec = $("result-recovery");
  clear(rec);
  const steps = (job.recovery || "").split("\n").map((s) => s.trim()).filter(Boolean);
  for (const s of steps) { rec.appendChild(el("li", { text: s })); }
  show($("result-recovery-box"), steps.length > 0);
  const hint = (job.result && job.result.hint) || "";
  $("result-hint").textContent = hint;
  show($("result-hint"), !!hint);
  show(box, true);
  box.focus();
}

export function dismissResult() { show($("result"), false); }
