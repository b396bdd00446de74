// The JSON API client: the token, Bearer headers, problem+json errors.
//
// The token lives in sessionStorage: it survives a reload but not the closing
// of the tab, and it is never put in a URL (URLs end up in logs and history).

const TOKEN_KEY = 'plexus.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An API answer other than 2xx, with what the problem document said. */
export class ApiError extends Error {
  constructor(status, problem, path) {
    super(describe(status, problem));
    this.status = status;
    this.problem = problem || {};
    this.path = path;
    this.scope = status === 403 ? missingScope(this.problem) : null;
  }
}

function describe(status, problem) {
  if (status === 403) {
    const scope = missingScope(problem || {});
    return scope ? `Forbidden: this token lacks the scope ${scope}.` : `Forbidden: ${problemText(problem) || 'this token may not do this.'}`;
  }
  if (status === 401) return 'Not logged in, or the token is not valid any more.';
  const text = problemText(problem);
  return text ? `${text} (HTTP ${status})` : `HTTP ${status}`;
}

function problemText(problem) {
  if (!problem) return '';
  return [problem.title, problem.detail].filter(Boolean).join(': ');
}

// The scope a 403 names: a field of its own, or the one in the detail text.
function missingScope(problem) {
  if (typeof problem.scope === 'string') return problem.scope;
  if (typeof problem.required_scope === 'string') return problem.required_scope;
  const m = /scope[^a-zA-Z_]*([A-Za-z_]+(?::[A-Za-z_]+)?)/.exec(problem.detail || '');
  return m ? m[1] : null;
}

/** Listeners called on 401 (the app sends the user back to the login page). */
const unauthorizedListeners = [];
export function onUnauthorized(fn) {
  unauthorizedListeners.push(fn);
}

/**
 * Calls the API. `query` is an object of search parameters (empty values
 * left out); `body` is sent as JSON. Resolves to the parsed JSON (or null
 * for an empty answer); rejects with ApiError.
 */
export async function api(method, path, { query, body, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Accept: 'application/json, application/problem+json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit', cache: 'no-store',
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { title: 'Plexus did not answer', detail: String(e.message || e) }, path);
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = { detail: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, json, path);
    if (response.status === 401) unauthorizedListeners.forEach((fn) => fn(error));
    throw error;
  }
  return json;
}

export const get = (path, query, opts) => api('GET', path, { ...opts, query });
export const post = (path, body, opts) => api('POST', path, { ...opts, body });
