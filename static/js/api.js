// REST layer: the session API, Bearer token in the Authorization header (never in a URL).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, 0 when the server could not be reached
    this.code = code;
  }
}

let token = "";

/** The token every request sends; set on sign-in, cleared on sign-out. */
export function setToken(value) {
  token = value || "";
}

async function request(method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "network", "The server cannot be reached.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || response.statusText || `HTTP ${response.status}`,
    );
  }
  return data;
}

const sessionPath = (id) => `/api/sessions/${encodeURIComponent(id)}`;

/**
 * → {user: {name}, upstream: {name, kind, url, state, detail, hint?} | null}; state is ready,
 * degraded or unreachable (then hint says what to set). 401 (ApiError) for a wrong token.
 */
export const me = () => request("GET", "/api/me");

/** → {sessions: [...], next_cursor}; newest first. */
export function listSessions({ limit = 50, before = null } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (before) query.set("before", before);
  return request("GET", `/api/sessions?${query}`);
}

/** → {messages (oldest first), has_more}; `before` is the smallest message id already shown. */
export function listMessages(sessionId, { limit = 100, before = null } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (before !== null && before !== undefined) query.set("before", String(before));
  return request("GET", `${sessionPath(sessionId)}/messages?${query}`);
}

export const renameSession = (id, title) => request("PATCH", sessionPath(id), { title });
export const deleteSession = (id) => request("DELETE", sessionPath(id));
