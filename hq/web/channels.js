// Every channel the agent may read, at once: the `Channels` list with unread counts, the open
// channel's feed (role `log`), its `Online` list, and catching up on each after every (re)connect.
//
// The console stays joined to all of its readable channels, so messages for channels that are not
// open arrive too: they are kept (the latest MAX_KEPT per channel) and counted as unread until the
// channel is opened. Each channel remembers up to which id it has everything (`caughtUpTo`); a
// reconnect fetches only what came after it, so nothing is missed and nothing is shown twice.

const HISTORY_PAGE = 500;
const FIRST_PAGE = 100;
const MAX_KEPT = 1000;
// Presence events say who came or went; the counts and roles come from asking again, at most this often.
const PRESENCE_REFRESH_MS = 1000;

/** Words for a refused Socket.IO event on `channel`. */
export function eventWords(error, channel) {
  switch (error.code) {
    case "forbidden": return `Forbidden: your clearance does not allow that on ${channel}.`;
    case "rate_limited": return "You are sending too fast. Wait a moment and try again.";
    case "payload_too_large": return "That message is too long for HQ.";
    case "not_found": return `There is no channel named ${channel}.`;
    case "bad_request": return "HQ could not understand that request.";
    case "unavailable": return "HQ's storage is not reachable right now. Try again shortly.";
    case "timeout": return "HQ did not answer in time. Check the connection and try again.";
    case "internal": return "HQ had an internal error. Try again.";
    default: return `HQ refused: ${error.message || error.code}.`;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** One readable channel's state: what has arrived, what is unread, how far it is caught up. */
class ChannelState {
  constructor(name, write) {
    this.name = name;
    this.write = write;
    this.messages = [];    // oldest first, at most MAX_KEPT
    this.ids = new Set();  // ids of `messages`
    this.lastId = 0;       // the highest id received
    this.caughtUpTo = 0;   // every message up to this id has been received
    this.loaded = false;   // the first page of history has been fetched
    this.live = false;     // joined and caught up on the current connection: live messages extend caughtUpTo
    this.unread = 0;
  }
}

/**
 * The channels part of the console. `call(event, payload)` emits on the socket and resolves to
 * its acknowledgement; `showAlert(text)` reports a refusal in words.
 */
export class ChannelDesk {
  constructor(ui, { call, showAlert }) {
    this.ui = ui;
    this.call = call;
    this.showAlert = showAlert;
    this.me = null;
    this.channels = new Map();  // name -> ChannelState, in the order HQ lists them
    this.current = null;
    this.online = new Map();    // codename -> {codename, role, connections}, for the open channel
    this.presenceTimer = null;
    this.session = 0;           // bumps on every login/logout, so late answers of an old session are dropped
    this.onOpened = () => {};   // told the name of each channel opened
    this.onPresenceChange = () => {};
    ui.list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-channel]");
      if (button) this.open(button.dataset.channel);
    });
    ui.select.addEventListener("change", () => this.open(ui.select.value));
  }

  /** Forget everything: a new agent (or none) is logged in. */
  reset(me) {
    this.session += 1;
    this.me = me;
    this.channels = new Map();
    this.current = null;
    this.ui.feed.replaceChildren();
    this.ui.list.replaceChildren();
    this.clearOnline();
  }

  /** Names of the channels the agent may read. */
  readable() {
    return [...this.channels.keys()];
  }

  /**
   * Take HQ's list of channels (`GET /api/channels`) for the agent's current clearance: keep what
   * is known of channels still readable, drop the others, render, and keep or pick the open one.
   */
  setChannels(list) {
    const next = new Map();
    for (const { name, read, write } of list) {
      if (!read) continue;
      const known = this.channels.get(name);
      if (known) known.write = write;
      next.set(name, known || new ChannelState(name, write));
    }
    this.channels = next;
    const names = this.readable();
    const empty = names.length === 0;
    for (const part of [this.ui.listPanel, this.ui.picker, this.ui.feed, this.ui.onlinePanel]) part.hidden = empty;
    this.ui.noChannels.hidden = !empty;
    this.ui.noChannels.textContent = `No channels: your clearance (${this.me.role}) may not read any channel.`;
    this.ui.select.replaceChildren(...names.map((name) => new Option(name, name)));
    this.ui.list.replaceChildren(...names.map((name) => this.listItem(this.channels.get(name))));
    if (!this.channels.has(this.current)) {
      this.current = null;
      if (names.length) this.open(names[0]);
    } else {
      this.ui.select.value = this.current;
    }
    return names;
  }

  listItem(entry) {
    const item = element("li");
    const button = element("button", "channel-link");
    button.type = "button";
    button.dataset.channel = entry.name;
    const mark = element("span", "mark", "#");
    mark.setAttribute("aria-hidden", "true"); // decoration: the entry's name is the channel's
    button.append(mark, element("span", "name", entry.name), " ", element("span", "unread"));
    item.append(button);
    this.renderEntry(entry, button);
    return item;
  }

  button(name) {
    return [...this.ui.list.querySelectorAll("button[data-channel]")].find((b) => b.dataset.channel === name);
  }

  // The entry's name reads "missions 3 unread" (the number is shown, the word is for screen readers).
  renderEntry(entry, button = this.button(entry.name)) {
    if (!button) return;
    button.setAttribute("aria-current", String(entry.name === this.current));
    const badge = button.querySelector(".unread");
    badge.hidden = entry.unread === 0;
    badge.replaceChildren(String(entry.unread), element("span", "visually-hidden", " unread"));
  }

  /** Show `name`'s feed and who is online in it; its unread count goes back to zero. */
  open(name) {
    const entry = this.channels.get(name);
    if (!entry || name === this.current) return;
    const previous = this.channels.get(this.current);
    this.current = name;
    entry.unread = 0;
    if (previous) this.renderEntry(previous);
    this.renderEntry(entry);
    this.ui.select.value = name;
    this.ui.feed.setAttribute("aria-label", `Live feed of ${name}`);
    this.ui.feed.replaceChildren(...entry.messages.map((message) => this.messageItem(message)));
    this.ui.feed.scrollTop = this.ui.feed.scrollHeight;
    this.clearOnline();
    if (entry.live) this.loadPresence(name);
    this.onOpened(name);
  }

  /**
   * After every (re)connect: join every readable channel and fetch what each missed (the latest
   * page the first time). Channels are caught up side by side; a refusal is reported in words.
   */
  async catchUp() {
    const session = this.session;
    await Promise.all(this.readable().map((name) => this.catchUpChannel(name, session)));
  }

  async catchUpChannel(name, session) {
    const entry = this.channels.get(name);
    const joined = await this.call("join", { channel: name });
    if (session !== this.session || this.channels.get(name) !== entry) return;
    if (!joined.ok) { this.showAlert(eventWords(joined.error, name)); return; }
    if (name === this.current) this.loadPresence(name); // alongside the history, not after it
    const first = !entry.loaded;
    let after = first ? null : entry.caughtUpTo;
    for (;;) {
      const payload = after === null ? { channel: name, limit: FIRST_PAGE }
        : { channel: name, after_id: after, limit: HISTORY_PAGE };
      const page = await this.call("history", payload);
      if (session !== this.session || this.channels.get(name) !== entry) return;
      if (!page.ok) { this.showAlert(eventWords(page.error, name)); return; }
      // What arrived while the console was away is unread; the first page is just the past.
      for (const message of page.messages) this.add(message, { unread: !first });
      if (after === null || page.messages.length < HISTORY_PAGE) break;
      after = page.messages[page.messages.length - 1].id;
    }
    entry.loaded = true;
    entry.live = true;
    entry.caughtUpTo = Math.max(entry.caughtUpTo, entry.lastId);
  }

  /** The connection is gone: until the next catch-up, live messages no longer prove nothing was missed. */
  disconnected() {
    for (const entry of this.channels.values()) entry.live = false;
  }

  /** A `message` event from HQ. */
  receive(message) {
    if (!message || typeof message.channel !== "string" || typeof message.id !== "number") return;
    const entry = this.channels.get(message.channel);
    if (!entry) return;
    this.add(message, { unread: true });
    // HQ delivers a channel's messages in id order, so once caught up the live ones leave no gap.
    if (entry.live) entry.caughtUpTo = Math.max(entry.caughtUpTo, message.id);
  }

  /** A message this tab sent (HQ does not echo it back to the sending socket). */
  sent(message) {
    this.add(message, { unread: false });
  }

  add(message, { unread }) {
    const entry = this.channels.get(message.channel);
    if (!entry || entry.ids.has(message.id)) return;
    entry.ids.add(message.id);
    let index = entry.messages.length;
    while (index > 0 && entry.messages[index - 1].id > message.id) index -= 1;
    entry.messages.splice(index, 0, message);
    entry.lastId = Math.max(entry.lastId, message.id);
    const open = entry.name === this.current;
    if (open) this.showInFeed(message);
    if (entry.messages.length > MAX_KEPT) {
      const dropped = entry.messages.shift();
      entry.ids.delete(dropped.id);
      if (open) this.ui.feed.querySelector(`li[data-id="${dropped.id}"]`)?.remove();
    }
    if (!open && unread && !(this.me && message.from === this.me.codename)) {
      entry.unread += 1;
      this.renderEntry(entry);
    }
  }

  messageItem(message) {
    const item = element("li", "msg" + (this.me && message.from === this.me.codename ? " mine" : ""));
    item.dataset.id = String(message.id);
    const header = element("header");
    const time = element("time");
    time.dateTime = message.ts;
    const date = new Date(message.ts);
    time.textContent = Number.isNaN(date.getTime()) ? message.ts : date.toLocaleTimeString();
    time.title = message.ts;
    header.append(element("span", "from", message.from), time);
    // Text only: whatever an agent sends is never parsed as HTML.
    item.append(header, element("p", "text", message.text));
    return item;
  }

  showInFeed(message) {
    const feed = this.ui.feed;
    const nearBottom = feed.scrollHeight - feed.scrollTop - feed.clientHeight < 80;
    // Keep id order even when a live message overtakes one still on its way.
    const before = [...feed.children].find((li) => Number(li.dataset.id) > message.id) || null;
    feed.insertBefore(this.messageItem(message), before);
    if (nearBottom || before === null) feed.scrollTop = feed.scrollHeight;
  }

  // ------------------------------------------------------------------------------------ online

  onlineItem(agent) {
    const item = element("li", "agent" + (this.me && agent.codename === this.me.codename ? " mine" : ""));
    item.dataset.codename = agent.codename;
    item.append(element("span", "from", agent.codename));
    if (agent.role) item.append(" ", element("span", "role", agent.role));
    if (agent.connections > 1) item.append(" ", element("span", "count", `${agent.connections} connections`));
    return item;
  }

  renderOnline() {
    const agents = [...this.online.values()].sort((a, b) => a.codename.localeCompare(b.codename));
    this.ui.online.replaceChildren(...agents.map((agent) => this.onlineItem(agent)));
  }

  clearOnline() {
    clearTimeout(this.presenceTimer);
    this.presenceTimer = null;
    this.online = new Map();
    this.renderOnline();
  }

  // Ask who is in `channel` (any HQ node); answers for a channel no longer open are dropped.
  async loadPresence(channel) {
    const session = this.session;
    const answer = await this.call("presence", { channel });
    if (session !== this.session || channel !== this.current || !answer.ok) return;
    this.online = new Map(answer.agents.map((agent) => [agent.codename, agent]));
    this.renderOnline();
  }

  /** A `presence` event: an arrival or departure, shown at once, then confirmed by asking again. */
  onPresence(event) {
    if (!event || typeof event.channel !== "string") return;
    this.onPresenceChange(event);
    if (event.channel !== this.current) return;
    if (!event.online) {
      this.online.delete(event.codename);
    } else if (!this.online.has(event.codename)) {
      this.online.set(event.codename, { codename: event.codename, role: "", connections: 1 });
    }
    this.renderOnline();
    if (this.presenceTimer !== null) return;
    const channel = this.current;
    this.presenceTimer = setTimeout(() => {
      this.presenceTimer = null;
      this.loadPresence(channel);
    }, PRESENCE_REFRESH_MS);
  }
}
