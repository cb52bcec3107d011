// Directors' sections of the console: `Agents` (list, add, disable/enable, change role, reset
// password, reset two-factor) and `Sessions` (live sessions and their connections, end one), over
// the directors' API.
//
// console.js imports this module only for an agent whose stored role is director, so other agents
// never load it, and nothing of it is in the page until it is mounted. Requests go through the
// `api` function console.js passes in: same origin, the HttpOnly cookie plus `X-HQ-Console: 1`
// (HQ refuses a change carried by the cookie alone), refreshed once on an expired token.
// Generated passwords are shown once, as text, and forgotten when dismissed; the page never sees a token.
// A director can reset another agent's second factor here but never enrol one: the QR code would be
// shown to the director, not to the agent, who sets up its own factor after logging in.

import { element, field } from "/dom.js";
import { errorOf, waitWords } from "/requests.js";

const POLL_MS = 10000;       // agents and sessions are re-read this often while the page is visible
const SOON_MS = 1000;        // ...and this long after a presence event says someone came or went
const FALLBACK_ROLES = ["analyst", "field-operative", "handler", "director"];

// HQ's times are ISO 8601 strings or Unix seconds; either becomes a <time>, nothing becomes `empty`.
function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value < 1e12 ? value * 1000 : value) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "short" });
const TIME_ONLY = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });

// Today's times as the time alone (the tables stay narrow); the full instant is in the title.
function timeCell(value, empty) {
  const date = toDate(value);
  if (!date) return element("td", { text: empty });
  const today = date.toDateString() === new Date().toDateString();
  return element("td", {}, element("time", { datetime: date.toISOString(), title: date.toISOString(),
                                              text: (today ? TIME_ONLY : DATE_TIME).format(date) }));
}

function sentence(text) {
  const trimmed = String(text || "").trim().replace(/\.$/, "");
  return trimmed ? `${trimmed.charAt(0).toUpperCase()}${trimmed.slice(1)}.` : "";
}

/** Words for a refused directors' API request about `subject` (a codename, or a session's owner). */
function refusalWords(error, response, subject) {
  switch (error.code) {
    case "agent_exists": return `An agent named ${subject} already exists (codenames are unique regardless of case).`;
    case "not_found": return `${subject} no longer exists on HQ. The list has been refreshed.`;
    case "forbidden": return "Only directors may manage agents and sessions, and your clearance no longer allows it.";
    case "bad_request": return `HQ refused that: ${sentence(error.message)}`;
    case "payload_too_large": return "That is too long for HQ.";
    case "unavailable": return "HQ's storage is not reachable right now. Try again shortly.";
    case "token_missing": case "token_invalid": case "token_expired": case "token_revoked":
      return "Your session has ended, so HQ refused that. Log in again.";
    default:
      if (response.status === 429) {
        return `Too many requests. Try again ${waitWords(Number(response.headers.get("Retry-After")))}.`;
      }
      return `HQ refused that: ${sentence(error.message || error.code)}`;
  }
}

/**
 * Mount the directors' sections at the end of `host`. `api(path, method, body)` resolves to a
 * fetch Response; `showAlert`/`clearAlert` drive the page's role=alert element; `roles` are the
 * clearance levels, lowest first (null: HQ's default levels).
 */
export function mountDirectors(host, { api, showAlert, clearAlert, roles }) {
  const panel = new DirectorsPanel(host, { api, showAlert, clearAlert, roles });
  panel.start();
  return panel;
}

class DirectorsPanel {
  constructor(host, { api, showAlert, clearAlert, roles }) {
    this.host = host;
    this.api = api;
    this.showAlert = showAlert;
    this.clearAlert = clearAlert;
    this.roles = roles || FALLBACK_ROLES;
    this.agents = [];
    this.sessions = [];
    this.pollTimer = null;
    this.soonTimer = null;
    this.mounted = false;
    this.partial = false;        // the last listing counted this node's sockets only
    this.oneTimeReturn = null;   // where focus goes when the shown password is dismissed
    this.dialogAgent = null;     // the codename the role dialog is about
  }

  start() {
    this.build();
    this.mounted = true;
    this.fillRoles(this.newRole, this.roles[0]);
    this.refresh();
    this.pollTimer = setInterval(() => { if (!document.hidden) this.refresh(); }, POLL_MS);
  }

  /** Remove both sections from the page and stop asking HQ. */
  unmount() {
    this.mounted = false;
    clearInterval(this.pollTimer);
    clearTimeout(this.soonTimer);
    if (this.dialog.open) this.dialog.close();
    this.agentsSection.remove();
    this.sessionsSection.remove();
  }

  /** Someone connected or left: re-read the lists shortly (several events make one request). */
  refreshSoon() {
    if (!this.mounted || this.soonTimer !== null) return;
    this.soonTimer = setTimeout(() => { this.soonTimer = null; this.refresh(); }, SOON_MS);
  }

  // ------------------------------------------------------------------------------------- markup

  build() {
    this.newCodename = element("input", { type: "text", autocomplete: "off", autocapitalize: "none",
                                          spellcheck: "false", maxlength: 64, required: true });
    this.newRole = element("select");
    this.newPassword = element("input", { type: "password", autocomplete: "new-password", maxlength: 1024 });
    this.addForm = element("form", { className: "add-agent", novalidate: true, "aria-labelledby": "add-agent-title" },
      element("h3", { id: "add-agent-title", text: "Add an agent" }),
      field("new-codename", "New codename", this.newCodename),
      field("new-role", "Role", this.newRole),
      field("new-password", "Password", this.newPassword,
            "Leave empty and HQ generates one, shown here once. At least 12 characters if you choose one."),
      element("button", { type: "submit", text: "Add agent" }));
    this.addForm.addEventListener("submit", (event) => { event.preventDefault(); this.addAgent(); });

    this.oneTimeTitle = element("p", { id: "one-time-title", className: "one-time-title" });
    this.oneTimeSecret = element("code", { className: "secret" });
    const done = element("button", { type: "button", className: "secondary", text: "Done" });
    done.addEventListener("click", () => this.hideOneTime());
    this.oneTime = element("div", { className: "one-time", tabindex: -1, "aria-labelledby": "one-time-title",
                                    role: "group", hidden: true },
      this.oneTimeTitle, element("p", {}, this.oneTimeSecret),
      element("p", { className: "hint", text: "Give it to the agent now: HQ does not show it again." }), done);
    this.oneTime.addEventListener("keydown", (event) => { if (event.key === "Escape") this.hideOneTime(); });

    this.filter = element("input", { type: "search", autocomplete: "off", spellcheck: "false" });
    this.filter.addEventListener("input", () => this.applyFilter());
    this.agentsCount = element("p", { className: "hint", "aria-live": "polite" });
    this.agentsBody = element("tbody");
    const agentsTable = element("table", { className: "admin-table" },
      element("thead", {}, element("tr", {}, ...["Codename", "Role", "Enabled", "Two-factor", "Created",
                                                  "Last login", "Live sockets", "Actions"]
        .map((name) => element("th", { scope: "col", text: name })))),
      this.agentsBody);
    this.agentsBody.addEventListener("click", (event) => this.onAgentAction(event));
    this.agentsResult = element("p", { className: "result", "aria-live": "polite" });
    this.agentsPartial = element("p", { className: "notice", hidden: true,
                                        text: "Live sockets: this HQ node's only (the cluster's list is unreachable)." });

    this.agentsSection = element("section", { id: "agents-section", className: "card admin",
                                              "aria-labelledby": "agents-title" },
      element("h2", { id: "agents-title", tabindex: -1, text: "Agents" }),
      this.addForm, this.oneTime,
      element("div", { className: "filter" }, field("agent-filter", "Filter agents", this.filter), this.agentsCount),
      this.agentsPartial,
      element("div", { className: "table-wrap", tabindex: 0, role: "region", "aria-label": "Agents table" },
              agentsTable),
      this.agentsResult);

    this.sessionsBody = element("tbody");
    this.sessionsTable = element("table", { className: "admin-table sessions-table" },
      element("thead", {}, element("tr", {}, ...["Agent", "Session started", "Node", "Address", "Transport",
                                                  "User agent", "Since", "Token expires", "Actions"]
        .map((name) => element("th", { scope: "col", text: name })))));
    this.sessionsTable.addEventListener("click", (event) => this.onSessionAction(event));
    this.sessionsEmpty = element("p", { className: "notice", text: "No live sessions.", hidden: true });
    this.sessionsPartial = element("p", { className: "notice", hidden: true,
                                          text: "Connections: this HQ node's only (the cluster's list is unreachable)." });
    this.sessionsResult = element("p", { className: "result", "aria-live": "polite" });
    const refresh = element("button", { type: "button", className: "secondary", text: "Refresh" });
    refresh.addEventListener("click", () => this.refresh({ announce: true }));
    this.sessionsSection = element("section", { id: "sessions-section", className: "card admin",
                                                "aria-labelledby": "sessions-title" },
      element("div", { className: "section-head" },
              element("h2", { id: "sessions-title", tabindex: -1, text: "Sessions" }), refresh),
      element("p", { className: "hint",
                     text: "Live login sessions and their connections. Ending a session logs it out at once." }),
      this.sessionsEmpty, this.sessionsPartial,
      element("div", { className: "table-wrap", tabindex: 0, role: "region", "aria-label": "Sessions table" },
              this.sessionsTable),
      this.sessionsResult);

    this.buildRoleDialog();
    this.host.append(this.agentsSection, this.sessionsSection);
  }

  buildRoleDialog() {
    this.dialogTitle = element("h3", { id: "role-dialog-title" });
    this.dialogRole = element("select");
    const cancel = element("button", { type: "button", className: "secondary", text: "Cancel" });
    cancel.addEventListener("click", () => this.dialog.close());
    const form = element("form", { novalidate: true },
      this.dialogTitle,
      field("role-dialog-select", "New role", this.dialogRole,
            "A role change ends the agent's sessions; it logs in again with the new clearance."),
      element("div", { className: "actions" }, element("button", { type: "submit", text: "Save role" }), cancel));
    form.addEventListener("submit", (event) => { event.preventDefault(); this.saveRole(); });
    this.dialog = element("dialog", { className: "role-dialog", "aria-labelledby": "role-dialog-title" }, form);
    this.dialog.addEventListener("close", () => {
      const codename = this.dialogAgent;
      this.dialogAgent = null;
      if (codename !== null) this.focusAgentAction(codename, "role");
    });
    this.agentsSection.append(this.dialog);
  }

  // ----------------------------------------------------------------------------------- reading

  fillRoles(select, selected) {
    const known = new Set(this.roles);
    const roles = [...this.roles, ...this.agents.map((a) => a.role).filter((r) => !known.has(r))];
    select.replaceChildren(...[...new Set(roles)].map((role) => new Option(role, role)));
    if (selected) select.value = selected;
  }

  /** Read agents and sessions again; a failure is said in words. */
  async refresh({ announce = false } = {}) {
    if (!this.mounted) return;
    try {
      const [agents, sessions] = await Promise.all([this.api("/api/agents"), this.api("/api/sessions")]);
      if (!this.mounted) return;
      for (const response of [agents, sessions]) {
        if (!response.ok) { this.showAlert(refusalWords(await errorOf(response), response, "")); return; }
      }
      this.agents = await agents.json();
      this.sessions = await sessions.json();
      // Redis away: HQ could count only its own node's sockets, and says so in a header.
      this.partial = [agents, sessions].some((r) => r.headers.get("X-HQ-Sockets") === "this-node-only");
    } catch {
      if (this.mounted) this.showAlert("HQ is unreachable, so the agents and sessions shown may be out of date.");
      return;
    }
    if (!this.mounted) return;
    this.renderAgents();
    this.renderSessions();
    for (const note of [this.agentsPartial, this.sessionsPartial]) note.hidden = !this.partial;
    if (announce) this.sessionsResult.textContent = `Refreshed at ${new Date().toLocaleTimeString()}.`;
  }

  // ------------------------------------------------------------------------------------ agents

  renderAgents() {
    const focus = this.focusedAction(this.agentsBody);
    this.agentsBody.replaceChildren(...this.agents.map((agent, index) => this.agentRow(agent, index)));
    this.applyFilter();
    if (focus) this.focusAgentAction(focus.codename, focus.action);
  }

  agentRow(agent, index) {
    const nameId = `agent-${index}-name`;
    const action = (name, text) => element("button", { type: "button", className: "secondary small",
                                                        "data-action": name, "data-codename": agent.codename,
                                                        "aria-describedby": nameId, text });
    const row = element("tr", { "data-codename": agent.codename },
      element("th", { scope: "row", id: nameId, text: agent.codename }),
      element("td", { text: agent.role }),
      element("td", { className: agent.enabled ? "" : "off", text: agent.enabled ? "Enabled" : "Disabled" }),
      element("td", { text: agent.mfa ? "On" : "Off" }),
      timeCell(agent.created, "—"),
      timeCell(agent.last_login, "Never"),
      element("td", { className: "number", text: String(agent.sockets ?? 0) }),
      element("td", { className: "actions" },
              action("toggle", agent.enabled ? "Disable" : "Enable"),
              action("role", "Change role"),
              action("password", "Reset password"),
              // Only a factor that exists can be reset; enrolling is the agent's own step.
              ...(agent.mfa ? [action("mfa", "Reset two-factor")] : [])));
    return row;
  }

  applyFilter() {
    const words = this.filter.value.trim().toLowerCase();
    let shown = 0;
    for (const row of this.agentsBody.rows) {
      const agent = this.agents.find((a) => a.codename === row.dataset.codename);
      const match = !words || (agent && [agent.codename, agent.role, agent.enabled ? "enabled" : "disabled",
                                         `two-factor ${agent.mfa ? "on" : "off"}`].join(" ")
        .toLowerCase().includes(words));
      row.hidden = !match;
      if (match) shown += 1;
    }
    const total = this.agents.length;
    this.agentsCount.textContent = words ? `Showing ${shown} of ${total} agents.`
      : `${total} agent${total === 1 ? "" : "s"}.`;
  }

  focusedAction(container) {
    const active = document.activeElement;
    if (!active || !container.contains(active) || !active.dataset.action) return null;
    return { ...active.dataset };
  }

  agentButton(codename, action) {
    return [...this.agentsBody.querySelectorAll("button[data-action]")]
      .find((b) => b.dataset.codename === codename && b.dataset.action === action) || null;
  }

  focusAgentAction(codename, action) {
    const button = this.agentButton(codename, action);
    if (button && !button.closest("tr").hidden) button.focus();
  }

  onAgentAction(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const agent = this.agents.find((a) => a.codename === button.dataset.codename);
    if (!agent) return;
    if (button.dataset.action === "toggle") this.setEnabled(agent, !agent.enabled);
    else if (button.dataset.action === "role") this.openRoleDialog(agent);
    else if (button.dataset.action === "password") this.resetPassword(agent);
    else if (button.dataset.action === "mfa") this.resetSecondFactor(agent);
  }

  /** Send one change; on success returns the parsed body (or null for 204), on refusal says why. */
  async change(path, method, body, subject) {
    this.clearAlert();
    let response;
    try {
      response = await this.api(path, method, body);
    } catch {
      this.showAlert("HQ is unreachable. Check the connection and try again.");
      return undefined;
    }
    if (!response.ok) {
      const error = await errorOf(response);
      this.showAlert(refusalWords(error, response, subject));
      if (error.code === "not_found") this.refresh();
      return undefined;
    }
    return response.status === 204 ? null : response.json().catch(() => null);
  }

  async addAgent() {
    const codename = this.newCodename.value.trim();
    const role = this.newRole.value;
    const password = this.newPassword.value;
    this.agentsResult.textContent = "";
    if (!codename) {
      this.showAlert("Enter a codename for the new agent.");
      this.newCodename.focus();
      return;
    }
    const body = { codename, role };
    if (password) body.password = password;
    const submit = this.addForm.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const created = await this.change("/api/agents", "POST", body, codename);
      if (created === undefined) { this.newCodename.focus(); return; }
      const name = (created && created.codename) || codename;
      this.newCodename.value = "";
      this.newPassword.value = "";
      this.agentsResult.textContent = `Added ${name} (${(created && created.role) || role}).`;
      await this.refresh();
      if (created && typeof created.password === "string") {
        this.showOneTime(`Password for ${name}, shown only this once:`, created.password, { field: this.newCodename });
      } else {
        this.newCodename.focus();
      }
    } finally {
      submit.disabled = false;
    }
  }

  async setEnabled(agent, enabled) {
    const path = `/api/agents/${encodeURIComponent(agent.codename)}`;
    const changed = await this.change(path, "PATCH", { enabled }, agent.codename);
    if (changed === undefined) return;
    this.agentsResult.textContent = enabled ? `${agent.codename} is enabled and may log in again.`
      : `${agent.codename} is disabled; its sessions were ended.`;
    await this.refresh();
    this.focusAgentAction(agent.codename, "toggle");
  }

  openRoleDialog(agent) {
    this.clearAlert();
    this.dialogAgent = agent.codename;
    this.dialogTitle.textContent = `Change the role of ${agent.codename}`;
    this.fillRoles(this.dialogRole, agent.role);
    this.dialog.showModal();
    this.dialogRole.focus();
  }

  async saveRole() {
    const codename = this.dialogAgent;
    const role = this.dialogRole.value;
    const agent = this.agents.find((a) => a.codename === codename);
    if (!agent) { this.dialog.close(); return; }
    if (role === agent.role) {
      this.agentsResult.textContent = `${codename} already has the role ${role}; nothing changed.`;
      this.dialog.close();
      return;
    }
    const changed = await this.change(`/api/agents/${encodeURIComponent(codename)}`, "PATCH", { role }, codename);
    if (changed === undefined) { this.dialog.close(); return; }
    this.agentsResult.textContent = `${codename} is now ${role}; its sessions were ended.`;
    this.dialogAgent = null; // focus is placed after the refresh instead
    this.dialog.close();
    await this.refresh();
    this.focusAgentAction(codename, "role");
  }

  async resetPassword(agent) {
    const path = `/api/agents/${encodeURIComponent(agent.codename)}/password`;
    const answer = await this.change(path, "POST", {}, agent.codename);
    if (answer === undefined) return;
    this.agentsResult.textContent = `${agent.codename} has a new password; its sessions were ended.`;
    await this.refresh();
    if (answer && typeof answer.password === "string") {
      this.showOneTime(`New password for ${agent.codename}, shown only this once:`, answer.password,
                       { codename: agent.codename, action: "password" });
    } else {
      this.focusAgentAction(agent.codename, "password");
    }
  }

  async resetSecondFactor(agent) {
    const path = `/api/agents/${encodeURIComponent(agent.codename)}/mfa`;
    const reset = await this.change(path, "DELETE", undefined, agent.codename);
    if (reset === undefined) return;
    this.agentsResult.textContent = `Two-factor authentication of ${agent.codename} is reset and its sessions were ` +
      "ended. The agent sets up a new one itself after logging in (an agent whose role requires one is led " +
      "there at login).";
    await this.refresh();
    // The row's Reset two-factor button is gone: its nearest action keeps the focus.
    this.focusAgentAction(agent.codename, "password");
  }

  // A generated password: shown as text in its own group, focused so it is read out, gone on Done.
  showOneTime(title, secret, returnTo) {
    this.oneTimeTitle.textContent = title;
    this.oneTimeSecret.textContent = secret;
    this.oneTime.hidden = false;
    this.oneTimeReturn = returnTo;
    this.oneTime.focus();
  }

  hideOneTime() {
    this.oneTimeSecret.textContent = "";
    this.oneTime.hidden = true;
    const back = this.oneTimeReturn;
    this.oneTimeReturn = null;
    if (back && back.field) back.field.focus();
    else if (back) this.focusAgentAction(back.codename, back.action);
  }

  // ---------------------------------------------------------------------------------- sessions

  renderSessions() {
    const focus = this.focusedAction(this.sessionsTable);
    for (const body of [...this.sessionsTable.tBodies]) body.remove();
    this.sessions.forEach((session, index) => this.sessionsTable.append(this.sessionBody(session, index)));
    this.sessionsEmpty.hidden = this.sessions.length > 0;
    if (focus) this.sessionButton(focus.sid)?.focus();
  }

  // One <tbody> per session: a row per live connection, the agent and `End session` spanning them.
  sessionBody(session, index) {
    const nameId = `session-${index}-agent`;
    const sockets = Array.isArray(session.sockets) && session.sockets.length ? session.sockets : [null];
    const span = sockets.length;
    const body = element("tbody", { "data-sid": session.sid });
    sockets.forEach((socket, position) => {
      const row = element("tr");
      if (position === 0) {
        row.append(element("th", { scope: "rowgroup", rowspan: span, id: nameId, text: session.codename }));
        const started = timeCell(session.created, "—");
        started.rowSpan = span;
        row.append(started);
      }
      if (socket) {
        row.append(element("td", { text: socket.node ?? "" }), element("td", { text: socket.address ?? "" }),
                   element("td", { text: socket.transport ?? "" }),
                   element("td", { className: "user-agent", text: socket.user_agent ?? "", title: socket.user_agent ?? "" }),
                   timeCell(socket.since, "—"), timeCell(socket.exp, "—"));
      } else {
        row.append(element("td", { colspan: 6, className: "muted", text: "No live connection (may reconnect)." }));
      }
      if (position === 0) {
        const end = element("button", { type: "button", className: "danger small", "data-action": "end",
                                        "data-sid": session.sid, "aria-describedby": nameId, text: "End session" });
        row.append(element("td", { rowspan: span, className: "actions" }, end));
      }
      body.append(row);
    });
    return body;
  }

  sessionButton(sid) {
    return [...this.sessionsTable.querySelectorAll("button[data-action=end]")].find((b) => b.dataset.sid === sid);
  }

  onSessionAction(event) {
    const button = event.target.closest("button[data-action=end]");
    if (button) this.endSession(button.dataset.sid);
  }

  async endSession(sid) {
    const session = this.sessions.find((s) => s.sid === sid);
    if (!session) return;
    const buttons = [...this.sessionsTable.querySelectorAll("button[data-action=end]")];
    const next = buttons[buttons.findIndex((b) => b.dataset.sid === sid) + 1];
    const ended = await this.change(`/api/sessions/${encodeURIComponent(sid)}`, "DELETE", undefined,
                                    `That session of ${session.codename}`);
    if (ended === undefined) return;
    this.sessionsResult.textContent = `Ended a session of ${session.codename}.`;
    await this.refresh();
    const target = (next && this.sessionButton(next.dataset.sid)) || this.sessionsSection.querySelector("h2");
    if (this.mounted) target.focus();
  }
}
