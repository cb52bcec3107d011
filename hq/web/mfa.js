// Two-factor authentication (TOTP) in the console: the set-up screen, and the agent's own
// `Two-factor authentication` card that says whether it is on and offers the set-up when it is not.
//
// The set-up drives HQ's self-enrolment routes with the cookie (console.js passes `call`, which
// sends `X-HQ-Console: 1`): the password again (POST /api/auth/mfa/enroll), then a code from the
// app (POST /api/auth/mfa/confirm). HQ's QR code is shown as an <img> from the data URI HQ
// returns, never parsed as markup; the key and the recovery codes are text, shown this once and
// removed from the page when the set-up closes. Confirming from an enrolment-only login also
// answers with a full session: its cookies carry it, and only `recovery_codes` is read from the body.

import { element, field } from "/dom.js";
import { errorOf, readFields, waitWords } from "/requests.js";

const CODE_MAX_LENGTH = 64;  // HQ refuses longer codes before any work; no code it issues is that long
const FEW_RECOVERY_CODES = 3;

// A base32 key in groups of four, as authenticator apps show and accept it.
function grouped(secret) {
  return secret.replace(/\s+/g, "").match(/.{1,4}/g)?.join(" ") ?? "";
}

/** True when HQ's answer says the session itself is gone (or was only ever good for the set-up). */
function sessionLost(error) {
  return ["token_missing", "token_invalid", "token_expired", "token_revoked", "agent_disabled"].includes(error.code);
}

/** Words for a refused set-up request. */
function setupWords(error, response) {
  switch (error.code) {
    case "invalid_credentials": return "Wrong password. Enter your current password to start the set-up.";
    case "too_many_attempts":
      return `Too many failed attempts. Try again ${waitWords(Number(response.headers.get("Retry-After")))}.`;
    case "invalid_otp":
      return "That code does not match. Check that your phone's clock is right, then type the code the app shows now.";
    case "mfa_already_enrolled":
      return "Two-factor authentication is already on for this agent. To move it to a new phone, a director "
        + "must reset it first.";
    case "mfa_not_pending": return "This set-up was replaced or cancelled (started again elsewhere, or reset). Start again.";
    case "bad_request": return "HQ could not use that. Check what you typed and try again.";
    case "payload_too_large": return "That is too long for HQ.";
    case "unavailable": return "HQ's storage is not reachable right now. Try again shortly.";
    case "forbidden": return "HQ refused the set-up from this page.";
    default: return `HQ refused that: ${error.message || error.code}.`;
  }
}

/**
 * The set-up screen, shown just before the element `before` until it closes.
 *
 * `call(path, method, body)` resolves to a fetch Response. `required`: the agent's role must have a
 * second factor and this login is good for the set-up only (no Cancel; the set-up ends in a full
 * session). `onFinished()` runs when the agent continues after the recovery codes, `onCancelled()`
 * when it cancels, `onSessionLost(words)` when HQ says the session is gone.
 */
export function openSetup(before, { call, required, showAlert, clearAlert, onFinished, onCancelled, onSessionLost }) {
  const setup = new TwoFactorSetup(before, { call, required, showAlert, clearAlert, onFinished, onCancelled,
                                           onSessionLost });
  setup.open();
  return setup;
}

class TwoFactorSetup {
  constructor(before, { call, required, showAlert, clearAlert, onFinished, onCancelled, onSessionLost }) {
    this.before = before;
    this.call = call;
    this.required = required;
    this.showAlert = showAlert;
    this.clearAlert = clearAlert;
    this.onFinished = onFinished;
    this.onCancelled = onCancelled;
    this.onSessionLost = onSessionLost;
    this.closed = false;
  }

  open() {
    this.build();
    this.before.before(this.section);
    this.showStep("password");
  }

  /** Remove the screen, and with it the key and the recovery codes, from the page. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.section.remove();
  }

  // ------------------------------------------------------------------------------------- markup

  build() {
    const intro = this.required
      ? "Your role must log in with two-factor authentication, and your agent has none yet. Set it up now to "
        + "use HQ: you need an authenticator app on your phone (Google Authenticator, Aegis, 1Password, …). "
        + "This login is good for the set-up only, for at most 10 minutes."
      : "With two-factor authentication, every login also asks for a six-digit code from an authenticator app "
        + "on your phone (Google Authenticator, Aegis, 1Password, …), so a stolen password alone is not enough.";

    this.password = element("input", { type: "password", autocomplete: "current-password", maxlength: 1024,
                                       required: true });
    this.passwordForm = element("form", { className: "setup-step", novalidate: true },
      field("mfa-password", "Current password", this.password, "Enter your password again to start the set-up."),
      this.actions(element("button", { type: "submit", text: "Start set-up" })));
    this.passwordForm.addEventListener("submit", (event) => { event.preventDefault(); this.begin(); });

    this.qr = element("img", { className: "qr", width: 180, height: 180,
                               alt: "QR code that adds your HQ login to an authenticator app" });
    this.secret = element("code", { className: "secret", id: "mfa-secret" });
    this.appLink = element("a", { text: "Open in an authenticator app on this device" });
    this.scan = element("div", { className: "setup-step scan", role: "group", tabindex: -1,
                                 "aria-labelledby": "mfa-scan-title" },
      element("h3", { id: "mfa-scan-title", text: "Scan the QR code" }),
      element("p", { text: "In your authenticator app, add an account and scan this code." }),
      this.qr,
      element("p", { id: "mfa-secret-label", text: "Cannot scan it? Type this key into the app (time-based, "
        + "six digits, 30 seconds):" }),
      element("p", {}, this.secret),
      element("p", {}, this.appLink),
      element("p", { className: "hint", text: "HQ shows this key only during this set-up. Do not share it." }));
    this.secret.setAttribute("aria-labelledby", "mfa-secret-label");

    this.code = element("input", { type: "text", inputmode: "numeric", autocomplete: "one-time-code",
                                   autocapitalize: "none", spellcheck: "false", maxlength: CODE_MAX_LENGTH,
                                   required: true });
    this.codeForm = element("form", { className: "setup-step", novalidate: true, "aria-labelledby": "mfa-code-title" },
      element("h3", { id: "mfa-code-title", text: "Enter a code from the app" }),
      field("mfa-code", "Code from the app", this.code,
            "The six digits the app shows for HQ now. Set-up completes only with a valid code."),
      this.actions(element("button", { type: "submit", text: "Verify code" })));
    this.codeForm.addEventListener("submit", (event) => { event.preventDefault(); this.confirm(); });

    this.codes = element("ol", { className: "recovery-codes" });
    this.copyResult = element("span", { className: "result", "aria-live": "polite" });
    const copy = element("button", { type: "button", className: "secondary", text: "Copy recovery codes" });
    copy.addEventListener("click", () => this.copyCodes());
    const done = element("button", { type: "button", text: "Continue" });
    done.addEventListener("click", () => this.finish());
    this.recovery = element("div", { className: "setup-step recovery", role: "group", tabindex: -1,
                                     "aria-labelledby": "mfa-recovery-title" },
      element("p", { className: "result", text: "Two-factor authentication is on." }),
      element("h3", { id: "mfa-recovery-title", text: "Save your recovery codes" }),
      element("p", { text: "Keep these ten recovery codes somewhere safe (printed, or in a password manager). If "
        + "you lose your phone, each one logs you in once in the Authentication code field, in place of a code. "
        + "HQ shows them only this once." }),
      this.codes,
      element("div", { className: "actions" }, done, copy, this.copyResult));

    this.section = element("section", { id: "mfa-setup", className: "card setup", "aria-labelledby": "mfa-title" },
      element("h2", { id: "mfa-title", tabindex: -1, text: "Set up two-factor authentication" }),
      element("p", { className: "intro", text: intro }),
      this.passwordForm, this.scan, this.codeForm, this.recovery);
  }

  actions(submit) {
    const row = element("div", { className: "actions" }, submit);
    if (!this.required) {
      const cancel = element("button", { type: "button", className: "secondary", text: "Cancel" });
      cancel.addEventListener("click", () => { this.close(); this.onCancelled(); });
      row.append(cancel);
    }
    return row;
  }

  showStep(step) {
    this.passwordForm.hidden = step !== "password";
    this.scan.hidden = this.codeForm.hidden = step !== "code";
    this.recovery.hidden = step !== "recovery";
    if (step === "password") this.password.focus();
    else if (step === "code") this.scan.focus();
    else this.recovery.focus();
    this.section.scrollIntoView({ block: "start" });
  }

  // ------------------------------------------------------------------------------------ requests

  /** Send one request; the answer's wanted fields, or undefined after saying why it failed. */
  async send(path, body, fields, { retry }) {
    this.clearAlert();
    let response;
    try {
      response = await this.call(path, "POST", body);
    } catch {
      if (!this.closed) this.showAlert("HQ is unreachable. Check the connection and try again.");
      return undefined;
    }
    if (this.closed) return undefined;
    if (response.ok) return readFields(response, fields).catch(() => ({}));
    const error = await errorOf(response);
    if (this.closed) return undefined;
    if (sessionLost(error)) {
      this.close();
      this.onSessionLost(this.required
        ? "The time for the set-up ran out or the session ended. Log in again to set up two-factor authentication."
        : "Your session has ended, so HQ refused the set-up. Log in again.");
      return undefined;
    }
    this.showAlert(setupWords(error, response));
    if (error.code === "mfa_already_enrolled") { this.close(); this.onCancelled(); return undefined; }
    if (error.code === "mfa_not_pending") { this.showStep("password"); return undefined; }
    retry.focus();
    retry.select();
    return undefined;
  }

  async begin() {
    if (!this.password.value) {
      this.showAlert("Enter your current password to start the set-up.");
      this.password.focus();
      return;
    }
    const submit = this.passwordForm.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const answer = await this.send("/api/auth/mfa/enroll", { password: this.password.value },
                                     ["secret", "otpauth_uri", "qr_data_uri"], { retry: this.password });
      if (!answer) return;
      this.password.value = "";
      this.showEnrollment(answer);
    } finally {
      submit.disabled = false;
    }
  }

  showEnrollment({ secret, otpauth_uri: uri, qr_data_uri: qr }) {
    // Only HQ's own kinds of value are put in the page: an SVG data URI as an image, an otpauth link.
    if (typeof qr === "string" && qr.startsWith("data:image/svg+xml")) {
      this.qr.src = qr;
      this.qr.hidden = false;
    } else {
      this.qr.hidden = true;
    }
    this.secret.textContent = grouped(typeof secret === "string" ? secret : "");
    const linkable = typeof uri === "string" && uri.startsWith("otpauth://");
    this.appLink.parentElement.hidden = !linkable;
    if (linkable) this.appLink.href = uri;
    else this.appLink.removeAttribute("href");
    this.code.value = "";
    this.showStep("code");
  }

  async confirm() {
    const code = this.code.value.replace(/\s+/g, "");
    if (!code) {
      this.showAlert("Enter the six-digit code your authenticator app shows for HQ.");
      this.code.focus();
      return;
    }
    const submit = this.codeForm.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const answer = await this.send("/api/auth/mfa/confirm", { code }, ["recovery_codes"], { retry: this.code });
      if (!answer) return;
      this.code.value = "";
      this.showRecoveryCodes(Array.isArray(answer.recovery_codes) ? answer.recovery_codes : []);
    } finally {
      submit.disabled = false;
    }
  }

  showRecoveryCodes(codes) {
    // The key has done its job: it leaves the page before the recovery codes appear.
    this.secret.textContent = "";
    this.qr.removeAttribute("src");
    this.appLink.removeAttribute("href");
    const shown = codes.filter((c) => typeof c === "string");
    this.codes.replaceChildren(...shown.map((c) => element("li", {}, element("code", { text: c }))));
    this.codes.hidden = shown.length === 0;
    if (!shown.length) {
      this.showAlert("Two-factor authentication is on, but this page could not read your recovery codes. Ask a "
        + "director to reset your second factor and set it up again to get new ones.");
    }
    this.showStep("recovery");
  }

  async copyCodes() {
    const text = [...this.codes.querySelectorAll("code")].map((c) => c.textContent).join("\n");
    try {
      await navigator.clipboard.writeText(`${text}\n`);
      this.copyResult.textContent = "Copied.";
    } catch {
      this.copyResult.textContent = "This browser did not allow copying: select the codes and copy them.";
    }
  }

  finish() {
    this.close();
    this.onFinished();
  }
}

/**
 * The `Two-factor authentication` card at the end of `host` (the console view): on or off, how many
 * recovery codes are left, and a `Set up two-factor authentication` button when it is off.
 * `call` as for openSetup; `onSetUp()` opens the set-up screen.
 */
export function mountTwoFactorCard(host, { call, onSetUp }) {
  const card = new TwoFactorCard(host, { call, onSetUp });
  card.refresh();
  return card;
}

class TwoFactorCard {
  constructor(host, { call, onSetUp }) {
    this.call = call;
    this.text = element("p", { className: "state" });
    this.button = element("button", { type: "button", className: "secondary", hidden: true,
                                      text: "Set up two-factor authentication" });
    this.button.addEventListener("click", () => onSetUp());
    this.section = element("section", { id: "mfa-card", className: "panel two-factor", hidden: true,
                                        "aria-labelledby": "mfa-card-title" },
      element("h2", { id: "mfa-card-title", className: "panel-title", tabindex: -1,
                      text: "Two-factor authentication" }),
      this.text, this.button);
    host.append(this.section);
  }

  /** Ask HQ again (GET /api/auth/mfa) and show the answer; the card stays hidden if HQ does not say. */
  async refresh() {
    let status = null;
    try {
      const response = await this.call("/api/auth/mfa");
      if (response.ok) status = await response.json();
    } catch {
      status = null;
    }
    if (!this.section.isConnected) return;
    if (!status || typeof status.enrolled !== "boolean") { this.section.hidden = true; return; }
    const left = Number(status.recovery_codes_left) || 0;
    if (status.enrolled) {
      this.text.textContent = left > FEW_RECOVERY_CODES
        ? `On: every login asks for a code from your app. ${left} recovery codes left.`
        : `On. Only ${left} recovery code${left === 1 ? "" : "s"} left: ask a director to reset your second `
          + "factor, then set it up again for new ones.";
    } else {
      this.text.textContent = "Off: logging in needs only your password.";
    }
    this.button.hidden = status.enrolled;
    this.section.hidden = false;
  }

  /** Focus what a person would use next: the set-up button if it is shown, else the card. */
  focus() {
    (this.button.hidden ? this.section.querySelector("h2") : this.button).focus();
  }

  unmount() {
    this.section.remove();
  }
}
