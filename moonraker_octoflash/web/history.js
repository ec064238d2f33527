// History: the last jobs; each one's steps and log; flash an earlier build
// again (roll back); download a build's firmware file.
import { $, el, clear, show, when, took, button, kb } from "./dom.js";
import { jobTitle, JOB_STATES, stageWords } from "./words.js";

export function renderHistory(ctx) {
  const box = clear($("history"));
  if (!ctx.state.jobs.length) { box.appendChild(el("p", { className: "hint", text: "No jobs yet." })); }
  for (const j of ctx.state.jobs) {
    const open = button(jobTitle(j), { className: "link", "aria-expanded": "false",
      on: { click: () => showDetail(ctx, j.job_id) } });
    box.appendChild(el("article", { className: "card job-row state-" + j.state, "data-job": j.job_id }, [
      el("div", { className: "row" }, [
        open,
        el("span", { className: "pill result " + (j.state === "done" ? "good" : ["failed", "refused", "interrupted"].includes(j.state) ? "bad" : ""),
                     text: JOB_STATES[j.state] || j.state }),
        el("span", { className: "hint", text: when(j.started || j.created) + (j.duration ? " · " + took(j.duration) : "") + (j.version ? " · " + j.version : "") })
      ]),
      el("p", { className: "hint message", text: j.message || j.error || "" })
    ]));
  }
}

export async function showDetail(ctx, jobId) {
  const { job } = await ctx.rpc.call("server.octoflash.job", { job_id: jobId });
  const box = $("job-detail");
  $("detail-title").textContent = jobTitle(job) + " — " + (JOB_STATES[job.state] || job.state) + (job.error ? ": " + job.error : "");
  const steps = clear($("detail-steps"));
  for (const s of job.steps || []) {
    steps.appendChild(el("li", { className: "state-" + s.state, "data-stage": s.stage,
      text: (s.title || stageWords(s.stage)) + ": " + (JOB_STATES[s.state] || s.state) +
            (s.percent != null ? " " + Math.round(s.percent) + " %" : "") + (s.message ? " — " + s.message : "") }));
  }
  const pre = $("detail-log");
  pre.textContent = (job.log || []).join("\n");
  show(box, true);
  pre.scrollTop = pre.scrollHeight;
  await renderBuilds(ctx, job);
  box.scrollIntoView({ block: "nearest" });
}

// The builds kept for the job's profile: flash one again, download its file.
async function renderBuilds(ctx, job) {
  const box = clear($("detail-builds"));
  const profile = ctx.state.profiles.find((p) => p.name === job.profile);
  if (!profile) { return; }
  let builds = [];
  try { builds = (await ctx.rpc.call("server.octoflash.builds", { profile: profile.name })).builds || []; }
  catch (err) { box.appendChild(el("p", { className: "error", text: err.message })); return; }
  if (!builds.length) { return; }
  box.appendChild(el("h4", { text: `Builds of ${profile.name} kept` }));
  const latest = builds[0] && builds[0].id;
  for (const b of builds) {
    const file = (b.files || [])[0] || {};
    box.appendChild(el("div", { className: "build-row", "data-artifact": b.id }, [
      el("span", { text: (b.dict_version || b.source_version || b.id) + " · " + when(b.created) + (file.size ? " · " + kb(file.size) : "") + (b.id === latest ? " (latest)" : "") }),
      button("Flash this build…", { "data-action": "rollback", className: "danger",
        on: { click: () => ctx.openPlan(profile, { artifact_id: b.id }) } }, "history"),
      button("Download " + (file.name || "firmware"), { "data-action": "download",
        on: { click: () => download(ctx, profile.name, b.id, file.name) } }, "download")
    ]));
  }
}

export async function download(ctx, profile, artifactId, name) {
  const result = await ctx.rpc.call("server.octoflash.build.file", { profile, artifact_id: artifactId, name: name || "" });
  const bytes = Uint8Array.from(atob(result.data), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  const a = el("a", { href: url, download: result.name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  ctx.state.lastDownload = { name: result.name, size: bytes.length, sha256: result.sha256 };
}
