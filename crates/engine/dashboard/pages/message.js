// One message: metadata, deliveries with their attempts, the HL7 tree with
// paths, the raw text, FHIR/JSON content, the ACK, the audit trail, and the
// replay buttons (whole message, or one destination).
//
// Opening this page reads the message's content, which the API records as an
// audit event under the token's name.

import { get, post } from '../api.js';
import { badge, facts, h, notice, payloadText, replace, when } from '../dom.js';
import { parseHl7 } from '../hl7.js';
import { hashFor } from '../router.js';
import { LAST_SEARCH_KEY } from './messages.js';

export async function messagePage(view, { parts, isCurrent }) {
  const id = parts[1];
  const status = h('div', { id: 'message-status', 'aria-live': 'polite' });
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading the message…'));
  view.append(
    h('div', { class: 'page-head' },
      h('a', { href: lastSearch(), class: 'back' }, '‹ Messages'),
      h('h1', null, 'Message ', h('span', { class: 'mono small' }, id))),
    status, body);

  async function load() {
    const message = await get(`/api/messages/${encodeURIComponent(id)}`);
    if (!isCurrent()) return;
    replace(body, renderMessage(message, replay));
  }

  async function replay(destination, button) {
    button.disabled = true;
    const payload = destination ? { destinations: [destination] } : {};
    try {
      const result = await post(`/api/messages/${encodeURIComponent(id)}/replay`, payload);
      const n = countOf(result && result.replayed);
      const skipped = countOf(result && result.skipped);
      replace(status, notice(
        `Replayed ${destination ? `to ${destination}` : 'to every destination'}: ${n} delivery(ies) queued again` +
        `${skipped ? `, ${skipped} skipped (queued, in flight or filtered)` : ''}.`, 'info'));
      status.querySelector('.notice').id = 'replay-result';
      await load();
    } catch (e) {
      replace(status, notice(e.message, 'error'));
      button.disabled = false;
    }
  }

  try {
    await load();
  } catch (e) {
    if (isCurrent()) replace(body, notice(e.status === 404 ? 'No such message (retention may have removed it).' : e.message, 'error'));
  }
}

// Back to the search that led here, with its filters and page.
function lastSearch() {
  const hash = sessionStorage.getItem(LAST_SEARCH_KEY) || '';
  return hash.startsWith('#/messages') ? hash : '#/messages';
}

function countOf(v) {
  return Array.isArray(v) ? v.length : typeof v === 'number' ? v : 0;
}

function renderMessage(m, replay) {
  const s = m.message || m.summary || m;
  const raw = payloadText(m.raw);
  const ack = payloadText(m.ack);
  const deliveries = m.deliveries || s.deliveries || [];
  const isJson = /json/i.test(s.content_type || '');
  const sections = [];

  sections.push(section('Summary', facts([
    ['Id', h('span', { class: 'mono' }, s.id)],
    ['Channel', h('a', { href: hashFor('/messages', { channel: s.channel }) }, s.channel)],
    ['Received', when(s.received_at)],
    ['From', s.peer_addr],
    ['Content type', s.content_type],
    ['Type', [s.message_type, s.event].filter(Boolean).join('^') || null],
    ['Control id', s.control_id ? h('span', { class: 'mono', id: 'control-id' }, s.control_id) : null],
    ['Sender', s.sender_key || null],
    ['Order key', s.order_key],
    ['Patient ids', (m.patient_ids || []).join(', ') || null],
    ['Size', typeof s.size === 'number' ? `${s.size} bytes` : null],
    ['SHA-256', s.sha256 ? h('span', { class: 'mono small' }, s.sha256) : null],
    s.contents_deleted ? ['Contents', 'removed by retention'] : null,
  ]), h('div', { class: 'row' },
    h('button', { type: 'button', class: 'primary', id: 'replay-all', disabled: s.contents_deleted,
      onclick: (e) => replay(null, e.currentTarget) }, 'Replay to every destination'))));

  sections.push(section('Deliveries', deliveries.length
    ? h('div', null, deliveries.map((d) => delivery(d, replay, s.contents_deleted)))
    : notice('No destinations.', 'info')));

  const tree = m.hl7 ? apiTree(m.hl7, raw) : (!isJson && raw ? parseHl7(raw) : []);
  if (tree.length) sections.push(section('HL7 v2 tree', h('div', { class: 'tree', id: 'hl7-tree' }, tree.map(treeNode))));
  const json = isJson ? prettyJson(raw) : null;
  if (json) sections.push(section('FHIR / JSON', h('pre', { class: 'code', id: 'json' }, json)));
  if (raw !== null) sections.push(section('Raw', h('pre', { class: 'code', id: 'raw' }, showSegments(raw))));
  if (ack) sections.push(section('ACK', h('pre', { class: 'code', id: 'ack' }, showSegments(ack))));
  if (m.audit) sections.push(section('Audit', auditTable(m.audit)));
  return h('div', { class: 'message' }, sections);
}

function section(title, ...content) {
  return h('section', { class: 'card' }, h('h2', null, title), content);
}

function delivery(d, replay, contentsDeleted) {
  const attempts = d.attempt_log || d.attempts_log || [];
  const transformed = payloadText(d.transformed);
  const transformedJson = transformed ? prettyJson(transformed) : null;
  return h('div', { class: 'delivery-detail', 'data-destination': d.destination },
    h('div', { class: 'row' },
      h('strong', null, d.destination), badge(d.state),
      h('span', { class: 'muted small' }, `${d.attempts ?? attempts.length} attempt(s)`),
      d.next_attempt_at ? h('span', { class: 'muted small' }, `next try ${when(d.next_attempt_at)}`) : null,
      h('span', { class: 'spacer' }),
      h('button', { type: 'button', class: 'replay-one', disabled: contentsDeleted,
        onclick: (e) => replay(d.destination, e.currentTarget) }, `Replay to ${d.destination}`)),
    d.error_reason ? notice(`${d.error_class || 'error'}: ${d.error_reason}`, 'error') : null,
    d.filter_rule ? h('p', { class: 'muted' }, `Filtered by rule ${d.filter_rule}`) : null,
    attempts.length ? h('table', { class: 'grid attempts' },
      h('thead', null, h('tr', null, ['#', 'Started', 'Finished', 'Outcome', 'Worker', 'Reason', 'Response'].map((t) => h('th', null, t)))),
      h('tbody', null, attempts.map((a) => h('tr', null,
        h('td', { class: 'num' }, a.number), h('td', null, when(a.started_at)), h('td', null, when(a.finished_at)),
        h('td', null, badge(a.outcome)), h('td', { class: 'mono small' }, a.worker),
        h('td', null, a.reason || ''), h('td', null, responseText(a.response)))))) : null,
    transformed ? h('details', null, h('summary', null, 'Content as sent (transformed)'),
      h('pre', { class: 'code' }, transformedJson || showSegments(transformed))) : null);
}

function responseText(r) {
  if (!r) return '';
  if (r.kind === 'ack') return h('pre', { class: 'code small' }, showSegments(r.text));
  if (r.kind === 'http') return `HTTP ${r.status} ${r.body_excerpt ? `· ${r.body_excerpt.slice(0, 200)}` : ''}`;
  return r.text || JSON.stringify(r);
}

/**
 * The API's HL7 tree ({segments: [{path, fields: [{path, value, components} |
 * {path, repetitions}]}]}) as display nodes {path, value, children}. A
 * segment's value is its line of the raw message; a field or repetition with
 * components shows its whole text from the raw message (the API's `value` is
 * its first component then).
 */
export function apiTree(hl7, raw) {
  const lines = String(raw || '').split(/\r\n|\r|\n/).filter((l) => l.length);
  const whole = new Map();
  const index = (nodes) => nodes.forEach((n) => { whole.set(samePath(n.path), n.value); index(n.children); });
  index(parseHl7(raw));
  const node = (f) => {
    if (Array.isArray(f.repetitions)) {
      return { path: f.path, value: '', children: f.repetitions.map(node) };
    }
    const children = (f.components || []).map((c) => ({ path: c.path, value: c.value, children: [] }));
    const value = children.length ? whole.get(samePath(f.path)) ?? f.value : f.value;
    return { path: f.path, value: value ?? '', children };
  };
  return (hl7.segments || []).map((seg, i) => ({
    path: seg.path, value: lines[i] ?? '', children: (seg.fields || []).map(node),
  }));
}

// `OBX(1)-5` and `OBX-5` name the same node (the first occurrence).
function samePath(path) {
  return String(path).replace(/^([A-Z0-9]{3})\(1\)/, '$1');
}

function treeNode(node) {
  const label = [h('span', { class: 'path' }, node.path), ' ', h('span', { class: 'value' }, node.value ?? '')];
  const children = node.children || [];
  if (!children.length) return h('div', { class: 'leaf' }, label);
  return h('details', { open: /^[A-Z0-9]{3}(\(\d+\))?$/.test(node.path) },
    h('summary', null, label), h('div', { class: 'children' }, children.map(treeNode)));
}

function auditTable(events) {
  if (!events.length) return notice('No audit events.', 'info');
  return h('table', { class: 'grid audit' },
    h('thead', null, h('tr', null, ['When', 'Who', 'What', 'Detail'].map((t) => h('th', null, t)))),
    h('tbody', null, events.map((e) => h('tr', null,
      h('td', null, when(e.at)), h('td', null, e.actor), h('td', null, e.action), h('td', null, e.detail || '')))));
}

/** Segments on their own lines (HL7 uses CR, which a <pre> would not break on). */
function showSegments(text) {
  return String(text).replace(/\r\n?/g, '\n');
}

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return null;
  }
}
