// HTTP to HQ from the console: same origin, the HttpOnly cookie, and the console's header.
//
// HQ accepts a change authorised by the `jwt` cookie only together with `X-HQ-Console: 1`: a page
// on another origin cannot add that header without a CORS preflight, which HQ never grants, so a
// cross-site form or fetch riding on the cookie changes nothing. This page sends it on every request.

export const CONSOLE_HEADER = "X-HQ-Console";

/** Fetch `path` on HQ with the session cookie; `body` (if given) is sent as JSON. */
export function request(path, method = "GET", body = undefined) {
  const options = { method, credentials: "include", headers: { [CONSOLE_HEADER]: "1" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(path, options);
}

/** The contract's `{"error": {"code", "message"}}` of a failed response (or one made from its status). */
export async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.code === "string") return body.error;
  } catch {
    // not JSON: a proxy's page, say
  }
  return { code: String(response.status), message: response.statusText || `HTTP ${response.status}` };
}

/** Login and refresh answer with tokens in the body too; this page drops that body unread. */
export function discardBody(response) {
  if (response.body) response.body.cancel().catch(() => {});
}

/** "in 30 seconds" / "in about 2 minutes" for a `Retry-After` value. */
export function waitWords(seconds) {
  if (!seconds) return "later";
  return seconds < 90 ? `in ${seconds} seconds` : `in about ${Math.ceil(seconds / 60)} minutes`;
}

/**
 * Only the named top-level fields of a JSON response. Confirming a second factor from an
 * enrolment-only login answers with a full login body (its tokens too, for API clients); the
 * cookies carry the session, so every other field is dropped while parsing and never kept.
 */
export async function readFields(response, names) {
  const wanted = new Set(names);
  const text = await response.text();
  return JSON.parse(text, function keepWanted(key, value) {
    return key === "" || Array.isArray(this) || wanted.has(key) ? value : undefined;
  });
}
