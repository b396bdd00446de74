// Patient sync: search the source server by name and birth date, pick a
// patient card, choose resource types, start a sync job, and follow it (the
// page polls the job until it ends, then shows the report).

import { get, post } from '../api.js';
import { badge, facts, h, notice, replace, when } from '../dom.js';

const POLL_MS = 1000;
/** The resource types offered, the first ones checked (the server's default set). */
export const RESOURCE_TYPES = [
  'AllergyIntolerance', 'Condition', 'DiagnosticReport', 'Encounter', 'Immunization', 'MedicationRequest',
  'Observation', 'Procedure',
];
const MORE_TYPES = ['CarePlan', 'DocumentReference', 'MedicationAdministration', 'ServiceRequest'];
const FINAL = new Set(['succeeded', 'partially_failed', 'failed']);

/** A patient card's fields from the API's candidate (or a FHIR Patient). */
export function patientView(p) {
  if (p && p.resourceType === 'Patient') {
    const n = (p.name || [])[0] || {};
    const name = n.text || [(n.given || []).join(' '), n.family].filter(Boolean).join(' ');
    const ids = (p.identifier || []).map((i) => i.value).filter(Boolean);
    return { id: p.id, name, birthDate: p.birthDate, gender: p.gender, identifiers: ids, address: addressText(p.address) };
  }
  return {
    id: p.id, name: p.name || '', birthDate: p.birth_date, gender: p.gender, phone: p.phone,
    identifiers: (p.identifiers || [])
      .map((i) => (typeof i === 'string' ? i : [i.kind, i.value].filter(Boolean).join(' ')))
      .filter(Boolean),
    address: typeof p.address === 'string' ? p.address : addressText(p.address),
  };
}

function addressText(addresses) {
  const a = Array.isArray(addresses) ? addresses[0] : addresses;
  return a ? [a.city, a.state, a.country].filter(Boolean).join(', ') : '';
}

export function syncPage(view, { isCurrent }) {
  let pollTimer = null;
  let stopped = false;
  const source = h('input', { id: 'sync-source', name: 'source', required: true, placeholder: 'ehr', autocomplete: 'off' });
  const target = h('input', { id: 'sync-target', name: 'target', required: true, placeholder: 'hub', autocomplete: 'off' });
  const family = h('input', { id: 'sync-family', name: 'family', placeholder: 'Family name', autocomplete: 'off' });
  const given = h('input', { id: 'sync-given', name: 'given', placeholder: 'Given name', autocomplete: 'off' });
  const birthdate = h('input', { id: 'sync-birthdate', name: 'birthdate', type: 'date' });
  const identifier = h('input', { id: 'sync-identifier', name: 'identifier', placeholder: 'MRN', autocomplete: 'off' });
  const cards = h('div', { id: 'patients', class: 'cards' });
  const job = h('div', { id: 'job' });

  const form = h('form', { class: 'card search', id: 'patient-search' },
    h('div', { class: 'fields' },
      field('From server', source), field('To server', target),
      field('Family name', family), field('Given name', given), field('Birth date', birthdate),
      field('or identifier', identifier)),
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary' }, 'Find patients')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!family.value.trim() && !identifier.value.trim()) {
      replace(cards, notice('Give a family name (with the given name and birth date to narrow it) or an identifier.', 'error'));
      return;
    }
    replace(cards, h('p', { class: 'muted' }, 'Searching…'));
    try {
      const answer = await get('/api/sync/patients', {
        source: source.value.trim(), family: family.value.trim(), given: given.value.trim(), birthdate: birthdate.value,
        identifier: identifier.value.trim(),
      });
      if (!isCurrent()) return;
      const patients = Array.isArray(answer) ? answer : answer.candidates || answer.patients || [];
      replace(cards,
        answer.truncated ? notice('More patients match than are shown: narrow the search.', 'info') : null,
        patients.length ? patients.map((p) => card(patientView(p))) : notice('No patient matches.', 'info'));
    } catch (err) {
      replace(cards, notice(err.message, 'error'));
    }
  });

  // Server names from the config, when the API lists them.
  get('/api/sync/servers').then((answer) => {
    const names = (Array.isArray(answer) ? answer : answer.servers || []).map((s) => (typeof s === 'string' ? s : s.name));
    if (!names.length || !isCurrent()) return;
    const list = h('datalist', { id: 'server-names' }, names.map((n) => h('option', { value: n })));
    view.append(list);
    source.setAttribute('list', 'server-names');
    target.setAttribute('list', 'server-names');
  }).catch(() => { /* free text then */ });

  function card(p) {
    const boxes = [...RESOURCE_TYPES, ...MORE_TYPES].map((t) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'resource', value: t, checked: RESOURCE_TYPES.includes(t) }), ' ', t));
    const button = h('button', { type: 'button', class: 'primary sync' }, 'Sync this patient');
    const el = h('div', { class: 'card patient', 'data-patient': p.id },
      h('h3', null, p.name || '(no name)'),
      facts([
        ['Birth date', p.birthDate], ['Gender', p.gender], ['Identifiers', p.identifiers.join(', ') || null],
        p.address ? ['Address', p.address] : null, p.phone ? ['Phone', p.phone] : null, ['Id on the source', h('span', { class: 'mono small' }, p.id)],
      ]),
      h('details', null, h('summary', null, 'Resource types'), h('div', { class: 'checks' }, boxes)),
      h('div', { class: 'row' }, button));
    button.addEventListener('click', async () => {
      const resources = boxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
      if (!resources.length) {
        replace(job, notice('Choose at least one resource type.', 'error'));
        return;
      }
      button.disabled = true;
      replace(job, h('p', { class: 'muted' }, 'Starting the sync…'));
      try {
        const started = await post('/api/sync/jobs', {
          source: source.value.trim(), target: target.value.trim(), patient: p.id, resources,
        });
        follow(started, () => { button.disabled = false; });
      } catch (err) {
        replace(job, notice(err.message, 'error'));
        button.disabled = false;
      }
    });
    return el;
  }

  // Polls the job until its status is final, then calls `done`.
  function follow(current, done) {
    if (stopped || !isCurrent()) return;
    replace(job, renderJob(current));
    if (FINAL.has(current.status)) {
      done();
      return;
    }
    poll(current, done);
  }

  // Fetches the job after a pause; a failed fetch keeps the last state on screen with the error and tries again.
  function poll(current, done) {
    pollTimer = setTimeout(async () => {
      let next;
      try {
        next = await get(`/api/sync/jobs/${encodeURIComponent(current.id)}`);
      } catch (err) {
        if (stopped || !isCurrent()) return;
        replace(job, renderJob(current), notice(err.message, 'error'));
        poll(current, done);
        return;
      }
      follow(next, done);
    }, POLL_MS);
  }

  view.append(h('div', { class: 'page-head' }, h('h1', null, 'Patient sync')), form, cards, job);
  return () => {
    stopped = true;
    clearTimeout(pollTimer);
  };
}

function field(label, input) {
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input);
}

const REPORT_COLUMNS = ['fetched', 'created', 'updated', 'unchanged', 'failed'];

/** A job's status, progress bar and, once it ended, its report per resource type. */
function renderJob(j) {
  const progress = j.progress || {};
  const done = progress.done ?? j.done ?? 0;
  const total = progress.total ?? j.total ?? 0;
  const pct = total ? Math.min(100, Math.round((done / total) * 100)) : (FINAL.has(j.status) ? 100 : 0);
  const counts = j.counts || (j.report && j.report.counts) || {};
  const rows = Object.entries(counts);
  return h('section', { class: 'card job', 'data-status': j.status },
    h('h2', null, 'Sync job ', badge(j.status || 'queued')),
    facts([
      ['Job', h('span', { class: 'mono small' }, j.id)],
      ['Phase', progress.phase || j.phase],
      ['Progress', h('span', null, h('progress', { max: 100, value: pct }), ` ${done} / ${total || '?'}`)],
      ['Started', when(j.started_at)], ['Finished', j.finished_at ? when(j.finished_at) : null],
      j.error ? ['Error', j.error] : null,
    ]),
    rows.length ? h('table', { class: 'grid report' },
      h('thead', null, h('tr', null, ['Resource type', ...REPORT_COLUMNS].map((t) => h('th', null, t)))),
      h('tbody', null, rows.map(([type, c]) => h('tr', null, h('td', null, type),
        REPORT_COLUMNS.map((k) => h('td', { class: `num ${k}` }, String(c[k] ?? 0))))))) : null);
}
