// octoflash's page: boards, builds and flashes with live progress, devices, history.
// Plain browser JavaScript, no build step.  Everything comes from Moonraker's
// JSON-RPC websocket (the same calls as docs/api.md lists).
(function () {
  "use strict";

  var LOG_LINES = 400;          // lines of a running job's output kept on screen
  var HISTORY = 20;             // jobs listed
  var KEY_STORE = "octoflash.api_key";

  var state = {
    profiles: [],               // server.octoflash.profiles
    entries: {},                // update-manager entries by profile name (octoflash part)
    devices: null,              // server.octoflash.devices
    status: null,               // server.octoflash.status
    jobs: [],                   // history, newest first
    job: null,                  // the job followed in the job panel
    jobLog: [],
    pendingFlash: null          // profile waiting for confirmation
  };

  // --- JSON-RPC over Moonraker's websocket ----------------------------------

  function Rpc(url) {
    this.url = url;
    this.nextId = 1;
    this.pending = {};
    this.handlers = {};
    this.socket = null;
  }

  Rpc.prototype.open = function () {
    var self = this;
    return new Promise(function (resolve, reject) {
      var ws = new WebSocket(self.url);
      self.socket = ws;
      ws.onopen = function () { resolve(); };
      ws.onerror = function () { reject(new Error("cannot reach Moonraker at " + self.url)); };
      ws.onclose = function () {
        Object.keys(self.pending).forEach(function (id) {
          self.pending[id].reject(new Error("connection closed"));
        });
        self.pending = {};
        if (self.onclose) { self.onclose(); }
      };
      ws.onmessage = function (event) { self.receive(JSON.parse(event.data)); };
    });
  };

  Rpc.prototype.receive = function (msg) {
    if (msg.id !== undefined && this.pending[msg.id]) {
      var waiter = this.pending[msg.id];
      delete this.pending[msg.id];
      if (msg.error) {
        var err = new Error(msg.error.message || "error");
        err.code = msg.error.code;
        waiter.reject(err);
      } else {
        waiter.resolve(msg.result);
      }
      return;
    }
    var list = this.handlers[msg.method] || [];
    list.forEach(function (fn) {
      try { fn.apply(null, msg.params || []); } catch (e) { console.error(e); }
    });
  };

  Rpc.prototype.call = function (method, params) {
    var self = this;
    var id = this.nextId++;
    return new Promise(function (resolve, reject) {
      self.pending[id] = { resolve: resolve, reject: reject };
      self.socket.send(JSON.stringify({ jsonrpc: "2.0", method: method, params: params || {}, id: id }));
    });
  };

  Rpc.prototype.on = function (method, fn) {
    (this.handlers[method] = this.handlers[method] || []).push(fn);
  };

  // --- small DOM helpers (text only: nothing from the server becomes HTML) ---

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; }
      else if (key === "className") { node.className = attrs[key]; }
      else if (key.indexOf("data-") === 0) { node.setAttribute(key, attrs[key]); }
      else { node[key] = attrs[key]; }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function show(node, visible) { node.hidden = !visible; }

  function when(seconds) {
    if (!seconds) { return ""; }
    var d = new Date(seconds * 1000);
    return d.toLocaleDateString() + " " + d.toLocaleTimeString();
  }

  function took(seconds) {
    if (seconds === null || seconds === undefined) { return ""; }
    return seconds < 60 ? seconds.toFixed(1) + " s" : Math.round(seconds / 60) + " min";
  }

  // --- connecting -------------------------------------------------------------

  function socketUrl() {
    var params = new URLSearchParams(location.search);
    var host = params.get("moonraker") || location.host;
    return (location.protocol === "https:" ? "wss://" : "ws://") + host + "/websocket";
  }

  var rpc = null;

  function connect() {
    setConnection("connecting…", "");
    rpc = new Rpc(socketUrl());
    rpc.onclose = function () {
      setConnection("disconnected: retrying", "bad");
      setTimeout(connect, 3000);
    };
    subscribe(rpc);
    rpc.open().then(identify).then(loadAll).catch(function (err) {
      if (isUnauthorized(err)) {
        askForKey(err);
        return;
      }
      setConnection(String(err && err.message || err), "bad");
    });
  }

  // Moonraker 0.11 answers a connection it does not trust with JSON-RPC error
  // -32602 ("Unauthorized", "Invalid API Key"); -32602 alone also means bad
  // parameters, so the message decides.
  function isUnauthorized(err) {
    if (!err) { return false; }
    if (err.code === 401 || err.code === 403) { return true; }
    return err.code === -32602 && /unauthori[sz]ed|api key|token/i.test(err.message || "");
  }

  var keyRefused = "";          // why Moonraker refused the last key given

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
    if (rpc && rpc.socket) { rpc.onclose = null; rpc.socket.close(); }
    connect();
  }

  function identify() {
    var params = { client_name: "octoflash", version: "1", type: "web",
                   url: "https://github.com/" };
    var key = sessionStorage.getItem(KEY_STORE);
    if (key) { params.api_key = key; }
    return rpc.call("server.connection.identify", params).then(function () {
      // A trusted client passes; otherwise the first call says 401.
      return rpc.call("server.octoflash.status");
    }).then(function (status) {
      state.status = status;
      keyRefused = "";
      show($("login"), false);
      setConnection("connected", "good");
    });
  }

  function setConnection(text, kind) {
    var node = $("connection");
    node.textContent = text;
    node.className = "pill " + (kind || "");
  }

  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value);
    reconnect();
  });

  // --- loading ------------------------------------------------------------------

  function loadAll() {
    renderStatus();
    return Promise.all([loadProfiles(), loadEntries(), loadJobs(), loadDevices(false)])
      .then(followActiveJob);
  }

  function loadStatus() {
    return rpc.call("server.octoflash.status").then(function (status) {
      state.status = status;
      renderStatus();
    });
  }

  function loadProfiles() {
    return rpc.call("server.octoflash.profiles").then(function (result) {
      state.profiles = result.profiles || [];
      renderWarnings((result.warnings || []).concat((state.status && state.status.warnings) || []));
      renderProfiles();
    });
  }

  function loadEntries() {
    // The update manager's view (running firmware, what a build gives);
    // absent when [update_manager] is not configured.
    return rpc.call("machine.update.status", { refresh: false }).then(function (result) {
      readEntries(result);
    }).catch(function () { state.entries = {}; });
  }

  function readEntries(result) {
    var entries = {};
    var info = (result && result.version_info) || {};
    Object.keys(info).forEach(function (name) {
      var part = info[name] && info[name].octoflash;
      if (part && part.profile) { entries[part.profile] = part; }
    });
    state.entries = entries;
    renderProfiles();
  }

  function loadJobs() {
    return rpc.call("server.octoflash.jobs", { limit: HISTORY }).then(function (result) {
      state.jobs = result.jobs || [];
      renderHistory();
      return result.flash_job;
    });
  }

  function loadDevices(refresh) {
    $("scan").disabled = true;
    return rpc.call("server.octoflash.devices", { refresh: !!refresh }).then(function (result) {
      state.devices = result.devices;
      renderDevices();
      renderProfiles();
    }).catch(function (err) {
      $("devices").textContent = "Scan failed: " + err.message;
    }).then(function () { $("scan").disabled = false; });
  }

  function followActiveJob() {
    var active = state.jobs.filter(function (j) { return j.state === "queued" || j.state === "running"; });
    if (active.length) { followJob(active[0].job_id); }
  }

  // --- notifications ----------------------------------------------------------------

  function subscribe(client) {
    client.on("notify_octoflash_job_update", onJobUpdate);
    client.on("notify_octoflash_devices", function (devices) {
      state.devices = devices;
      renderDevices();
      renderProfiles();
    });
    client.on("notify_update_refreshed", readEntries);
    ["notify_klippy_ready", "notify_klippy_disconnected", "notify_klippy_shutdown"]
      .forEach(function (name) { client.on(name, function () { loadStatus(); loadProfiles(); }); });
  }

  function onJobUpdate(update) {
    var job = state.job;
    if (!job || job.job_id !== update.job_id) {
      // A job started elsewhere (macro, update manager, another browser): follow it.
      if (update.event === "state" && update.state === "running" && !update.parent) {
        followJob(update.job_id, update);
      } else if (update.parent && job && job.job_id === update.parent) {
        appendLog("[" + update.profile + "] " + (update.message || update.stage));
      }
      if (update.final) { loadJobs(); loadProfiles(); }
      return;
    }
    job.state = update.state;
    job.stage = update.stage;
    job.percent = update.percent;
    job.error = update.error;
    job.recovery = update.recovery;
    if (update.message) { job.message = update.message; }
    if (update.event === "output" || update.event === "step") {
      appendLog(update.event === "step" ? "[" + update.stage + "] " + update.message : update.message);
    }
    renderJob();
    if (update.final) {
      // Output lines are sent at most every 0.2 s: the job's record has them all.
      rpc.call("server.octoflash.job", { job_id: job.job_id }).then(function (result) {
        if (state.job !== job) { return; }
        state.jobLog = (result.job.log || []).slice(-LOG_LINES);
        renderJob();
      }).catch(function () { /* the live lines stay */ });
      loadJobs();
      loadProfiles();
      loadEntries();
    }
  }

  var FINAL = ["done", "failed", "refused", "cancelled", "interrupted"];
  var LIVE = ["state", "stage", "percent", "message", "error", "recovery"];

  function isFinal(jobState) { return FINAL.indexOf(jobState) >= 0; }

  // Follow a job: shown at once from its first update, completed by its record.
  // Updates arriving meanwhile apply to it; a record read before the job
  // ended never takes back the end an update already told.
  function followJob(jobId, update) {
    var job = { job_id: jobId, state: "queued" };
    if (update) {
      ["kind", "profile"].concat(LIVE).forEach(function (k) { job[k] = update[k]; });
    }
    state.job = job;
    state.jobLog = [];
    renderJob();
    return rpc.call("server.octoflash.job", { job_id: jobId }).then(function (result) {
      if (state.job !== job) { return; }
      mergeRecord(job, result.job);
      state.jobLog = (result.job.log || []).slice(-LOG_LINES);
      renderJob();
    });
  }

  function mergeRecord(job, record) {
    var keepLive = isFinal(job.state) && !isFinal(record.state);
    Object.keys(record).forEach(function (k) {
      if (k === "log" || (keepLive && LIVE.indexOf(k) >= 0)) { return; }
      job[k] = record[k];
    });
  }

  function appendLog(line) {
    if (!line) { return; }
    state.jobLog.push(line);
    if (state.jobLog.length > LOG_LINES) { state.jobLog.splice(0, state.jobLog.length - LOG_LINES); }
    var pre = $("job-log");
    pre.textContent = state.jobLog.join("\n");
    pre.scrollTop = pre.scrollHeight;
  }

  // --- actions ------------------------------------------------------------------------

  function startJob(method, params) {
    show($("action-error"), false);
    return rpc.call(method, params).then(function (result) {
      if (state.job && state.job.job_id === result.job.job_id) {
        mergeRecord(state.job, result.job);     // its first updates came first
      } else {
        state.job = result.job;
        state.jobLog = [];
      }
      renderJob();
      loadJobs();
    }).catch(function (err) {
      var node = $("action-error");
      node.textContent = err.message;
      show(node, true);
    });
  }

  function askFlash(profile) {
    state.pendingFlash = profile.name;
    var entry = state.entries[profile.name] || {};
    var gives = entry.pending_version ? " with " + entry.pending_version : "";
    $("confirm-text").textContent = "Build and flash '" + profile.name + "'" + gives +
      "? Klipper is stopped while the board is written and started again afterwards.";
    show($("confirm"), true);
  }

  $("confirm-yes").addEventListener("click", function () {
    var name = state.pendingFlash;
    state.pendingFlash = null;
    show($("confirm"), false);
    if (name) { startJob("server.octoflash.flash", { profile: name }); }
  });

  $("confirm-no").addEventListener("click", function () {
    state.pendingFlash = null;
    show($("confirm"), false);
  });

  $("scan").addEventListener("click", function () { loadDevices(true); });

  $("job-cancel").addEventListener("click", function () {
    if (!state.job) { return; }
    rpc.call("server.octoflash.job.cancel", { job_id: state.job.job_id }).catch(function (err) {
      var node = $("job-error");
      node.textContent = err.message;
      show(node, true);
    });
  });

  // --- rendering ------------------------------------------------------------------------

  function renderStatus() {
    var s = state.status;
    if (!s) { return; }
    var k = s.klipper || {};
    var ks = $("klipper-state");
    ks.textContent = "Klipper: " + (k.connected ? k.state : "not connected");
    ks.className = "pill " + (k.connected && k.state === "ready" ? "good" : "warn");
    var ps = $("print-state");
    ps.textContent = "Print: " + (k.print_state || "unknown");
    ps.className = "pill " + (k.print_state === "printing" || k.print_state === "paused" ? "warn" : "");
  }

  function renderWarnings(list) {
    var box = $("warnings");
    box.textContent = "";
    var seen = {};
    list.forEach(function (text) {
      if (seen[text]) { return; }
      seen[text] = true;
      box.appendChild(el("p", { className: "warning", text: text }));
    });
    show(box, list.length > 0);
  }

  var STATE_TEXT = {
    up_to_date: "up to date",
    behind: "update available",
    differs: "update available",
    ahead: "board is newer",
    unknown: "unknown"
  };

  function updateText(entry) {
    if (!entry) { return ["", ""]; }
    var text = STATE_TEXT[entry.state] || entry.state;
    if (entry.state === "differs" && entry.reason) {
      text += " (" + entry.reason.replace(/-/g, " ") + ")";
    }
    var kind = entry.state === "up_to_date" ? "good" :
      (entry.state === "behind" || entry.state === "differs") ? "warn" : "";
    return [text, kind];
  }

  // Step and device names from the flash methods (status.flash_methods, the registry).
  function methodText(what, key) {
    var found = "";
    ((state.status && state.status.flash_methods) || []).forEach(function (m) {
      var names = what === "steps" ? m.steps : m.device_labels;
      if (!found && names && key && names[key]) { found = names[key]; }
    });
    return found;
  }

  function connectionText(p) {
    if (p.canbus_uuid) { return "CAN " + p.canbus_uuid + " on " + (p.canbus_interface || "can0"); }
    if (p.serial) { return p.serial.split("/").pop(); }
    if (p.connection === "dfu") { return "DFU" + (p.dfu_serial ? " " + p.dfu_serial : ""); }
    return "—";
  }

  function boardState(p) {
    var devices = state.devices && state.devices.profiles;
    var found = devices && devices[p.name];
    return found ? found.state.replace("_", " ") : "";
  }

  function renderProfiles() {
    var body = $("profiles").querySelector("tbody");
    body.textContent = "";
    show($("no-profiles"), state.profiles.length === 0);
    var busy = state.job && (state.job.state === "queued" || state.job.state === "running");
    state.profiles.forEach(function (p) {
      var status = p.status || {};
      var entry = state.entries[p.name];
      var running = (entry && entry.running_version) || status.mcu_version ||
        (p.target === "katapult" ? "—" : "?");
      var runningNote = entry && entry.running_source === "last_flash" ?
        "last written by octoflash; Klipper does not report it now" : "";
      var gives = (entry && entry.pending_version) || "";
      var upd = updateText(entry);
      var build = status.latest_build;
      var buildBtn = el("button", { text: "Build", "data-action": "build", disabled: !!busy });
      buildBtn.addEventListener("click", function () {
        startJob("server.octoflash.build", { profile: p.name });
      });
      var flashBtn = el("button", { text: "Flash…", "data-action": "flash", disabled: !!busy,
                                    className: "danger" });
      flashBtn.addEventListener("click", function () { askFlash(p); });
      var where = boardState(p);
      var row = el("tr", { "data-profile": p.name }, [
        el("td", {}, [el("strong", { text: p.name }), el("br"),
                      el("span", { className: "hint", text: p.description || p.preset })]),
        el("td", { text: p.board + (p.target === "katapult" ? " — Katapult" : "") }),
        el("td", { className: "connection" }, [connectionText(p), where ? el("br") : "",
                                                where ? el("span", { className: "hint", text: where }) : ""]),
        el("td", { className: "running" }, [running, runningNote ? el("br") : "",
                                             runningNote ? el("span", { className: "hint", text: runningNote }) : ""]),
        el("td", { className: "pending", text: gives }),
        el("td", { className: "state" }, upd[0] ? [el("span", { className: "pill " + upd[1], text: upd[0] })] : []),
        el("td", { className: "build", text: build ? (build.dict_version || build.source_version) : "—" }),
        el("td", { className: "actions" }, [buildBtn, " ", flashBtn])
      ]);
      body.appendChild(row);
    });
  }

  function renderJob() {
    var job = state.job;
    show($("job"), !!job);
    if (!job) { return; }
    $("job-title").textContent = job.kind + " " + (job.profile || "") + " (" + job.job_id + ")";
    var st = $("job-state");
    st.textContent = job.state;
    st.className = "pill " + (job.state === "done" ? "good" :
      (job.state === "running" || job.state === "queued") ? "" : "bad");
    $("job-stage").textContent = methodText("steps", job.stage) || job.stage || "";
    var bar = $("job-progress");
    if (job.percent === null || job.percent === undefined) { bar.removeAttribute("value"); }
    else { bar.value = job.percent; }
    $("job-percent").textContent = job.percent !== null && job.percent !== undefined ?
      Math.round(job.percent) + " %" : "";
    $("job-message").textContent = job.message || "";
    var err = $("job-error");
    err.textContent = job.error ? job.error + (job.recovery ? "\n" + job.recovery : "") : "";
    show(err, !!job.error);
    $("job-cancel").disabled = !(job.state === "queued" || job.state === "running");
    $("job-log").textContent = state.jobLog.join("\n");
    renderProfiles();
  }

  function renderDevices() {
    var box = $("devices");
    box.textContent = "";
    var d = state.devices;
    if (!d) { box.appendChild(el("p", { className: "hint", text: "Not scanned yet." })); return; }
    var items = [];
    (d.klipper_mcus || []).forEach(function (m) {
      items.push("Klipper [" + m.object_name + "]: " + (m.mcu_version || "not connected") +
                 (m.mcu_type ? " (" + m.mcu_type + ")" : ""));
    });
    (d.usb || []).forEach(function (u) {
      items.push("USB " + (methodText("devices", u.kind) || u.kind || "") + " " +
                 (u.usb_id || u.vid_pid || u.id || "") +
                 (u.serial ? " serial " + u.serial : "") + (u.port_path ? " at " + u.port_path : ""));
    });
    (d.serial_ports || []).forEach(function (s) {
      items.push("Serial " + (s.name || s.path) + (s.kind ? " (" + s.kind + ")" : ""));
    });
    (d.can_interfaces || []).forEach(function (c) {
      items.push("CAN interface " + c.name + (c.up ? " up" : " down"));
    });
    (d.can_nodes || []).forEach(function (n) {
      items.push("CAN node " + n.uuid + " on " + n.interface + ": " + (n.application || "?"));
    });
    var list = el("ul", { id: "device-list" });
    items.forEach(function (text) { list.appendChild(el("li", { text: text })); });
    if (!items.length) { list.appendChild(el("li", { className: "hint", text: "No boards seen." })); }
    box.appendChild(list);
    (d.warnings || []).forEach(function (w) { box.appendChild(el("p", { className: "warning", text: w })); });
    box.appendChild(el("p", { className: "hint", text: "Scanned " + when(d.taken_at) }));
  }

  function renderHistory() {
    var body = $("history").querySelector("tbody");
    body.textContent = "";
    state.jobs.forEach(function (j) {
      var row = el("tr", { "data-job": j.job_id, className: "state-" + j.state }, [
        el("td", { text: when(j.started || j.created) }),
        el("td", { text: j.kind }),
        el("td", { text: j.profile || "" }),
        el("td", { className: "result", text: j.state }),
        el("td", { text: took(j.duration) }),
        el("td", { text: j.message || j.error || "" })
      ]);
      row.addEventListener("click", function () { showDetail(j.job_id); });
      body.appendChild(row);
    });
  }

  function showDetail(jobId) {
    rpc.call("server.octoflash.job", { job_id: jobId }).then(function (result) {
      var job = result.job;
      $("detail-title").textContent = job.kind + " " + (job.profile || "") + " — " + job.state +
        (job.error ? ": " + job.error : "");
      var steps = $("detail-steps");
      steps.textContent = "";
      (job.steps || []).forEach(function (s) {
        steps.appendChild(el("li", { className: "state-" + s.state,
          text: s.stage + ": " + s.state + (s.message ? " — " + s.message : "") }));
      });
      $("detail-log").textContent = (job.log || []).join("\n");
      show($("job-detail"), true);
    });
  }

  connect();
})();
