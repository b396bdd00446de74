// Building the DOM without HTML strings.
//
// Message contents, names and error texts come from outside (senders, FHIR
// servers, operators) and are untrusted. Every page builds its elements with
// h(), which inserts strings as text nodes and sets only attributes from a
// fixed list, so nothing a message contains can become markup or script.
// No module of the dashboard assigns innerHTML.

const ALLOWED_ATTRIBUTES = new Set([
  'class', 'id', 'href', 'type', 'name', 'value', 'placeholder', 'title', 'for', 'role', 'hidden',
  'disabled', 'checked', 'selected', 'required', 'autocomplete', 'spellcheck', 'min', 'max', 'step',
  'colspan', 'open', 'aria-label', 'aria-live', 'tabindex', 'rows', 'size',
]);

/** Creates an element: h('a', {href: '#/x', class: 'btn'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key.startsWith('data-')) {
      el.setAttribute(key, String(value));
    } else if (ALLOWED_ATTRIBUTES.has(key)) {
      if (key === 'href' && !isSafeHref(String(value))) continue;
      el.setAttribute(key, value === true ? '' : String(value));
    } else {
      throw new Error(`attribute ${key} is not allowed`);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

// Links stay inside the dashboard: hash routes and same-origin paths only.
function isSafeHref(href) {
  return href.startsWith('#') || (href.startsWith('/') && !href.startsWith('//'));
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A date and time in the browser's zone, or an em dash. */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** A coloured label for a delivery state or health state. */
export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || text}` }, text);
}

/**
 * Health → badge (healthy green, warning amber, critical red, unknown grey).
 * Takes a state string, or the metrics' health object
 * ({health, success_rate, average_response_ms, attempts, ...}).
 */
export function healthBadge(health) {
  const state = typeof health === 'string' ? health : health && (health.health || health.state);
  const label = state || 'unknown';
  const b = badge(label, `health-${label}`);
  if (health && typeof health === 'object') {
    const parts = [];
    if (typeof health.success_rate === 'number') parts.push(`success ${(health.success_rate * 100).toFixed(1)}%`);
    if (typeof health.average_response_ms === 'number') parts.push(`average ${Math.round(health.average_response_ms)} ms`);
    if (typeof health.attempts === 'number') parts.push(`${health.attempts} attempt(s) in the window`);
    if (typeof health.consecutive_failures === 'number' && health.consecutive_failures) {
      parts.push(`${health.consecutive_failures} failure(s) in a row`);
    }
    if (health.unreachable) parts.push('unreachable');
    if (parts.length) b.title = parts.join(', ');
  }
  return b;
}

/** A two-column table of label → value. */
export function facts(rows) {
  return h('table', { class: 'facts' },
    h('tbody', null, rows.filter(Boolean).map(([k, v]) => h('tr', null, h('th', null, k), h('td', null, v ?? '—')))));
}

/** A message box (info or error) that can be put above a page's content. */
export function notice(text, kind = 'info') {
  return h('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/** Text of a byte payload the API may give as a string, base64 object or byte array. */
export function payloadText(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return new TextDecoder().decode(new Uint8Array(value));
  if (typeof value === 'object' && typeof value.text === 'string') return value.text;
  if (typeof value === 'object' && typeof value.base64 === 'string') {
    const bin = atob(value.base64);
    return new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  }
  return JSON.stringify(value, null, 2);
}
