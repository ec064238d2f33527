// Moonraker's JSON-RPC websocket: calls, notifications, authorization.
export class Rpc {
  constructor(url) {
    this.url = url;
    this.nextId = 1;
    this.pending = new Map();
    this.handlers = new Map();
    this.socket = null;
    this.onclose = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.socket = ws;
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`cannot reach Moonraker at ${this.url}`));
      ws.onclose = () => {
        for (const waiter of this.pending.values()) { waiter.reject(new Error("connection closed")); }
        this.pending.clear();
        if (this.onclose) { this.onclose(); }
      };
      ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    });
  }

  receive(msg) {
    if (msg.id !== undefined && this.pending.has(msg.id)) {
      const waiter = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.error) {
        const err = new Error(msg.error.message || "error");
        err.code = msg.error.code;
        waiter.reject(err);
      } else {
        waiter.resolve(msg.result);
      }
      return;
    }
    for (const fn of this.handlers.get(msg.method) || []) {
      try { fn(...(msg.params || [])); } catch (e) { console.error(e); }
    }
  }

  call(method, params = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify({ jsonrpc: "2.0", method, params, id }));
    });
  }

  on(method, fn) {
    if (!this.handlers.has(method)) { this.handlers.set(method, []); }
    this.handlers.get(method).push(fn);
  }

  close() {
    this.onclose = null;
    if (this.socket) { this.socket.close(); }
  }
}

// The Moonraker to talk to: this page's, or ?moonraker=HOST:PORT.
export function moonrakerHost() {
  const params = new URLSearchParams(location.search);
  return params.get("moonraker") || location.host;
}

// A oneshot token (GET /access/oneshot_token) after # in the address
// (/server/octoflash/web#token=…) lets an untrusted browser open the
// websocket once, as Moonraker allows.  Not ?token=: Moonraker would spend
// it on loading the page.  It is taken out of the address at once (a
// reload or a reconnection asks for the key).
let oneshot = new URLSearchParams(location.hash.slice(1)).get("token");
if (oneshot) {
  history.replaceState(null, "", location.pathname + location.search);
}

export function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const token = oneshot;
  oneshot = null;
  return scheme + moonrakerHost() + "/websocket" + (token ? "?token=" + encodeURIComponent(token) : "");
}

export function httpBase() {
  return location.protocol + "//" + moonrakerHost();
}

// Moonraker 0.11 answers a connection it does not trust with JSON-RPC error
// -32602 ("Unauthorized", "Invalid API Key"); -32602 alone also means bad
// parameters, so the message decides.
export function isUnauthorized(err) {
  if (!err) { return false; }
  if (err.code === 401 || err.code === 403) { return true; }
  return err.code === -32602 && /unauthori[sz]ed|api key|token/i.test(err.message || "");
}
