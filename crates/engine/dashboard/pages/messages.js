// The message browser: a search form whose filters live in the URL (so a
// search can be bookmarked and the back button works), a results table, and
// keyset paging ("Next page" passes the cursor the API returned).

import { get, post } from '../api.js';
import { badge, h, notice, replace, when } from '../dom.js';
import { go } from '../router.js';

/** Where the last search is kept, for the message page's link back. */
export const LAST_SEARCH_KEY = 'plexus.lastSearch';

const STATES = ['', 'queued', 'in_flight', 'sent', 'filtered', 'error', 'dead'];

/** The search fields: API query parameter (also kept in the page's URL), label, input type. */
export const FIELDS = [
  ['channel', 'Channel', 'text'],
  ['state', 'State', 'state'],
  ['control_id', 'Control id (MSH-10)', 'text'],
  ['mrn', 'Patient id (MRN)', 'text'],
  ['type', 'Type (ADT)', 'text'],
  ['event', 'Event (A01)', 'text'],
  ['from', 'Received from', 'datetime-local'],
  ['to', 'Received before', 'datetime-local'],
];

/** The API query for the page's URL parameters (local times become UTC instants). */
export function apiQuery(params) {
  const q = {};
  for (const [key, , type] of FIELDS) {
    const v = (params.get(key) || '').trim();
    if (!v) continue;
    q[key] = type === 'datetime-local' ? localToIso(v) : v;
  }
  if (params.get('cursor')) q.cursor = params.get('cursor');
  return q;
}

function localToIso(v) {
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? v : d.toISOString();
}

export async function messagesPage(view, { params, isCurrent }) {
  sessionStorage.setItem(LAST_SEARCH_KEY, window.location.hash);
  const inputs = {};
  const form = h('form', { class: 'card search', id: 'search-form' },
    h('div', { class: 'fields' }, FIELDS.map(([key, label, type]) => {
      const id = `f-${key}`;
      let input;
      if (type === 'state') {
        input = h('select', { id, name: key }, STATES.map((s) =>
          h('option', { value: s, selected: params.get(key) === s }, s || 'any')));
      } else {
        input = h('input', { id, name: key, type, value: params.get(key) || '', autocomplete: 'off', spellcheck: 'false' });
      }
      inputs[key] = input;
      return h('div', { class: 'field' }, h('label', { for: id }, label), input);
    })),
    h('div', { class: 'row' },
      h('button', { type: 'submit', class: 'primary', id: 'search' }, 'Search'),
      h('button', { type: 'button', onclick: () => go('/messages') }, 'Clear')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const next = {};
    for (const [key] of FIELDS) next[key] = inputs[key].value.trim();
    go('/messages', next);
  });

  const results = h('div', { id: 'results' }, h('p', { class: 'muted' }, 'Searching…'));
  view.append(h('div', { class: 'page-head' }, h('h1', null, 'Messages')), form, results);

  let page;
  try {
    page = await get('/api/messages', apiQuery(params));
  } catch (e) {
    if (isCurrent()) replace(results, notice(e.message, 'error'));
    return;
  }
  if (!isCurrent()) return;
  const items = page.items || page.messages || [];
  const next = page.next || page.next_cursor || null;
  const query = apiQuery(params);
  delete query.cursor;
  replace(results,
    items.length && Object.keys(query).length ? replayAll(query) : null,
    items.length ? resultsTable(items) : notice('No message matches.', 'info'),
    h('div', { class: 'row pager' },
      params.get('cursor') ? h('button', { type: 'button', onclick: () => history.back() }, '‹ Previous page') : null,
      next
        ? h('button', { type: 'button', id: 'next-page', onclick: () => go('/messages', { ...Object.fromEntries(params), cursor: next }) }, 'Next page ›')
        : h('span', { class: 'muted' }, `${items.length} shown · end of results`)));
}

/**
 * "Replay every match": the oldest 100 messages the search finds, in arrival
 * order (POST /api/messages/replay), after a second click to confirm; needs
 * at least one filter, as the API does.
 */
function replayAll(query) {
  const status = h('span', { class: 'muted', 'aria-live': 'polite' });
  let armed = false;
  const button = h('button', { type: 'button', id: 'replay-matches' }, 'Replay every match…');
  button.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      button.textContent = 'Click again to replay up to 100 messages';
      button.classList.add('primary');
      return;
    }
    button.disabled = true;
    try {
      const r = await post('/api/messages/replay', { ...query, max: 100 });
      replace(status, notice(`${r.messages} message(s) replayed: ${r.replayed} delivery(ies) queued again, ${r.skipped} skipped` +
        `${r.truncated ? '; more matched than were replayed: narrow the search for the rest' : ''}.`, 'info'));
    } catch (e) {
      replace(status, notice(e.message, 'error'));
      button.disabled = false;
    }
  });
  return h('div', { class: 'row bulk' }, button, status);
}

function resultsTable(items) {
  return h('table', { class: 'grid messages' },
    h('thead', null, h('tr', null,
      ['Received', 'Channel', 'Type', 'Control id', 'Sender', 'Size', 'Deliveries'].map((t) => h('th', null, t)))),
    h('tbody', null, items.map((m) => h('tr', { class: 'message-row', 'data-id': m.id },
      h('td', null, h('a', { href: `#/messages/${encodeURIComponent(m.id)}`, class: 'open' }, when(m.received_at))),
      h('td', null, m.channel),
      h('td', null, [m.message_type, m.event].filter(Boolean).join('^') || m.content_type || '—'),
      h('td', { class: 'mono control-id' }, m.control_id || '—'),
      h('td', { class: 'mono' }, m.sender_key || m.peer_addr || '—'),
      h('td', { class: 'num' }, typeof m.size === 'number' ? `${m.size} B` : '—'),
      h('td', null, (m.deliveries || []).map((d) =>
        h('span', { class: 'delivery', title: `${d.destination}: ${d.state}, ${d.attempts ?? 0} attempt(s)` },
          d.destination, ' ', badge(d.state))))))));
}
