// Channels: counts per channel and destination, health, start/stop; refreshed
// every few seconds while the page is open and the tab visible.

import { ApiError, get, post } from '../api.js';
import { h, healthBadge, notice, replace, when } from '../dom.js';
import { hashFor } from '../router.js';

const REFRESH_MS = 3000;
export const COUNT_COLUMNS = ['received', 'filtered', 'queued', 'sent', 'errored', 'dead'];

/**
 * A count for a column. The API counts deliveries per state; the columns
 * are: received (messages accepted: every accepted message has one delivery
 * per destination, so it is the largest destination total, unless the API
 * gives `received`), queued (waiting or in flight), errored (`error`).
 */
export function count(counts, key, destinations) {
  if (!counts) return 0;
  const n = (k) => (typeof counts[k] === 'number' ? counts[k] : 0);
  switch (key) {
    case 'received':
      if (typeof counts.received === 'number') return counts.received;
      return Math.max(0, ...(destinations || []).map((d) => total(d.counts)));
    case 'queued': return n('queued') + n('in_flight');
    case 'errored': return typeof counts.errored === 'number' ? counts.errored : n('error');
    default: return n(key);
  }
}

function total(counts) {
  const states = ['queued', 'in_flight', 'sent', 'filtered', 'error', 'dead'];
  return states.reduce((sum, k) => sum + (typeof (counts || {})[k] === 'number' ? counts[k] : 0), 0);
}

/** The channel list from the API's answer (`{channels: [...]}` or a bare array). */
export function channelList(answer) {
  if (Array.isArray(answer)) return answer;
  return (answer && (answer.channels || answer.items)) || [];
}

/** Puts the metrics' health report (`GET /api/health`) on the channels and their destinations. */
export function withHealth(channels, report) {
  const byName = new Map(((report && report.channels) || []).map((c) => [c.channel, c]));
  for (const c of channels) {
    const health = byName.get(c.name);
    if (!health) continue;
    c.health = health;
    for (const d of c.destinations || []) {
      d.health = d.health ?? (health.destinations || []).find((x) => x.destination === d.name);
    }
  }
  return channels;
}

function isRunning(channel) {
  if (typeof channel.running === 'boolean') return channel.running;
  const s = channel.status ?? channel.state;
  return !(s === 'stopped' || s === 'disabled');
}

export function channelsPage(view, { isCurrent }) {
  const status = h('div', { class: 'status-line muted', 'aria-live': 'polite' });
  const error = h('div');
  const table = h('div', { id: 'channels' }, h('p', { class: 'muted' }, 'Loading channels…'));
  view.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Channels'), status),
    error,
    table);

  let timer = null;
  let stopped = false;
  // Start / Stop show only when this server has those routes (its OpenAPI document lists them).
  let canStartStop = false;
  const routesKnown = get('/api/openapi.json').then((doc) => {
    const paths = (doc && doc.paths) || {};
    canStartStop = Boolean(paths['/api/channels/{name}/start'] && paths['/api/channels/{name}/stop']);
  }).catch(() => { /* no buttons then */ });

  async function refresh() {
    if (stopped) return;
    try {
      const channels = channelList(await get('/api/channels'));
      if (channels.length && channels.every((c) => c.health === undefined)) {
        withHealth(channels, await get('/api/health').catch(() => null));
      }
      if (stopped || !isCurrent()) return;
      replace(error);
      replace(table, renderTable(channels, canStartStop ? action : null));
      replace(status, `Updated ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`);
    } catch (e) {
      if (stopped) return;
      replace(error, notice(e.message, 'error'));
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(() => (document.hidden ? schedule() : refresh()), REFRESH_MS);
  }

  async function action(channel, verb, button) {
    button.disabled = true;
    try {
      await post(`/api/channels/${encodeURIComponent(channel)}/${verb}`);
      replace(error, notice(`Channel ${channel}: ${verb === 'stop' ? 'stopped' : 'started'}.`, 'info'));
    } catch (e) {
      replace(error, notice(e instanceof ApiError ? e.message : String(e), 'error'));
    }
    clearTimeout(timer);
    refresh();
  }

  routesKnown.finally(refresh);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function renderTable(channels, action) {
  if (!channels.length) return notice('No channels are configured.', 'info');
  const rows = [];
  for (const c of channels) {
    const running = isRunning(c);
    rows.push(h('tr', { class: 'channel-row', 'data-channel': c.name },
      h('th', { class: 'name' },
        h('a', { href: hashFor('/messages', { channel: c.name }), title: 'Browse its messages' }, c.name),
        c.source ? h('div', { class: 'muted small' }, sourceText(c.source)) : null),
      h('td', null, h('span', { class: `run ${running ? 'run-on' : 'run-off'}` }, running ? 'running' : 'stopped')),
      h('td', null, healthBadge(c.health)),
      COUNT_COLUMNS.map((k) => h('td', { class: `num count-${k}`, 'data-count': k }, countLink(c.name, k, count(c.counts, k, c.destinations)))),
      h('td', { class: 'actions' }, !action ? null
        : running
          ? h('button', { type: 'button', class: 'stop', onclick: (e) => action(c.name, 'stop', e.currentTarget) }, 'Stop')
          : h('button', { type: 'button', class: 'start', onclick: (e) => action(c.name, 'start', e.currentTarget) }, 'Start'))));
    for (const d of c.destinations || []) {
      rows.push(h('tr', { class: 'destination-row', 'data-channel': c.name, 'data-destination': d.name },
        h('th', { class: 'name dest' }, '↳ ', d.name, d.type ? h('span', { class: 'muted small' }, ` ${d.type}`) : null),
        h('td', null, d.last_error ? h('span', { class: 'muted small', title: d.last_error }, 'last error') : ''),
        h('td', null, healthBadge(d.health)),
        COUNT_COLUMNS.map((k) => h('td', { class: `num count-${k}`, 'data-count': k },
          k === 'received' ? '' : String(count(d.counts, k)))),
        h('td', { class: 'muted small' }, d.last_sent_at ? `sent ${when(d.last_sent_at)}` : '')));
    }
  }
  return h('table', { class: 'grid channels' },
    h('thead', null, h('tr', null,
      h('th', null, 'Channel / destination'), h('th', null, 'State'), h('th', null, 'Health'),
      COUNT_COLUMNS.map((k) => h('th', { class: 'num' }, k)), h('th', null, ''))),
    h('tbody', null, rows));
}

// Counts of states the browser can search (errored, dead ...) link to that search.
const SEARCHABLE_STATE = { queued: 'queued', sent: 'sent', filtered: 'filtered', errored: 'error', dead: 'dead' };
function countLink(channel, key, n) {
  const state = SEARCHABLE_STATE[key];
  if (!state || !n) return String(n);
  return h('a', { href: hashFor('/messages', { channel, state }), title: `Messages with a delivery ${state}` }, String(n));
}

function sourceText(source) {
  if (typeof source === 'string') return source;
  const parts = [source.type, source.listen || source.addr || source.path].filter(Boolean);
  return parts.join(' ');
}
