// Drives the Plexus dashboard in Debian's headless Chromium with playwright-core.
// Started by crates/plexus/tests/dashboard_browser.rs, which runs `plexus serve`
// and passes, in the environment:
//   PLEXUS_URL        http://127.0.0.1:PORT (the API listener serving the dashboard)
//   PLEXUS_TOKEN      a token with every scope
//   PLEXUS_READ_TOKEN a token with messages:read only (replay must answer 403)
//   PLEXUS_CHANNEL    the channel to watch
//   PLEXUS_SEND       a JSON array: the `plexus send` command line that sends the messages
//   PLEXUS_SEND_COUNT how many messages it sends
//   PLEXUS_CONTROL_ID the control id of one of them, to search for
//   PLEXUS_BULK_ID    the control id of another one, replayed with "Replay every match"
//   PLEXUS_HOSTILE_ID the control id of a message whose PID-5 holds markup and script
//   PLEXUS_ARTIFACTS  where to save screenshots and results.json
//   PLEXUS_SYNC_EHR   optional: base URL of the FHIR server configured as `ehr` (a fresh peer); with
//   PLEXUS_SYNC_BUNDLE the Synthea transaction Bundle to load into it; the patient is then synced to `hub`
//   CHROMIUM          the browser (default /usr/bin/chromium)
// Prints one line `RESULT {json}` with every check; exits 1 when one failed.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('PLEXUS_URL');
const token = env('PLEXUS_TOKEN');
const readToken = process.env.PLEXUS_READ_TOKEN || '';
const channel = env('PLEXUS_CHANNEL');
const sendCommand = JSON.parse(env('PLEXUS_SEND'));
const sendCount = Number(env('PLEXUS_SEND_COUNT'));
const controlId = env('PLEXUS_CONTROL_ID');
const hostileId = env('PLEXUS_HOSTILE_ID');
const bulkId = env('PLEXUS_BULK_ID');
const artifacts = env('PLEXUS_ARTIFACTS');
const TIMEOUT = 30_000;

const checks = [];
function check(name, ok, detail = '') {
  checks.push({ name, ok: Boolean(ok), detail: String(detail) });
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
}

mkdirSync(artifacts, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'plexus-chromium-'));
// A fresh profile per run (playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const pageErrors = [];

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

async function countCell(page, key) {
  const cell = page.locator(`tr.channel-row[data-channel="${channel}"] td[data-count="${key}"]`);
  return Number((await cell.textContent()).trim());
}

async function waitFor(what, fn, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last.ok) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // The browser logs every 4xx answer as a console error; the 401/403 ones are expected here.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
  });

  // 1. Login: a bad token is refused, the real one gets in.
  await page.goto(`${base}/`);
  await page.waitForSelector('#login-form');
  check('an unauthenticated visit lands on the login page', page.url().includes('#/login'), page.url());
  check('the navigation is hidden until logged in', !(await page.isVisible('#nav')) && !(await page.isVisible('#logout')));
  await page.fill('#token', 'plx_not_a_real_token');
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#login-form .notice-error');
  check('a wrong token is refused', (await page.textContent('#login-form .notice-error')).includes('refused'));
  await shot(page, '01-login');
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector(`tr.channel-row[data-channel="${channel}"]`);
  check('the token logs in and the channel list shows', await page.isVisible('#nav'));

  // 2. Channels: counts change after `plexus send` (the page refreshes itself).
  const before = await countCell(page, 'received');
  const sentBefore = await countCell(page, 'sent');
  const output = execFileSync(sendCommand[0], sendCommand.slice(1), { encoding: 'utf8' });
  check('plexus send delivered its messages', /\S/.test(output), output.trim().split('\n').pop());
  const after = await waitFor('the received count to grow', async () => {
    const received = await countCell(page, 'received');
    const sent = await countCell(page, 'sent');
    return { ok: received >= before + sendCount && sent >= sentBefore + sendCount, received, sent };
  });
  check('received count went up by the messages sent', after.received === before + sendCount,
    `${before} -> ${after.received}`);
  check('sent count went up once delivered', after.sent === sentBefore + sendCount, `${sentBefore} -> ${after.sent}`);
  const health = await page.locator(`tr.channel-row[data-channel="${channel}"] .badge`).first().textContent();
  check('the channel shows a health state', /healthy|warning|critical|idle|unknown/.test(health), health);
  await shot(page, '02-channels');
  // Stop and start the channel, when this server has those routes (the page shows the buttons only then).
  const row = `tr.channel-row[data-channel="${channel}"]`;
  if (await page.locator(`${row} button.stop`).count()) {
    await page.click(`${row} button.stop`);
    await page.waitForSelector(`${row} .run-off`);
    check('Stop stops the channel', true);
    await page.click(`${row} button.start`);
    await page.waitForSelector(`${row} .run-on`);
    check('Start starts it again', true);
  }

  // 3. Message browser: search by control id.
  await page.click('nav a[data-page=messages]');
  await page.waitForSelector('#search-form');
  await page.fill('#f-control_id', controlId);
  await page.click('#search');
  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll('tr.message-row');
    return rows.length === 1 && rows[0].querySelector('.control-id').textContent === id;
  }, controlId);
  check('search by control id finds exactly that message', true, controlId);
  check('the search is in the URL', page.url().includes(`control_id=${controlId}`), page.url());
  await shot(page, '03-messages');

  // 3a. The other filters reach the API under its names: MRN, and a time range with nothing in it.
  await page.goto(`${base}/#/messages?mrn=666`);
  await page.waitForSelector('tr.message-row, #results .notice');
  const byMrn = await page.locator('tr.message-row .control-id').allTextContents();
  check('search by MRN finds that patient\'s message', byMrn.length === 1 && byMrn[0] === hostileId, byMrn.join(', '));
  await page.goto(`${base}/#/messages?channel=${channel}&from=2000-01-01T00:00&to=2000-01-02T00:00`);
  await page.waitForSelector('tr.message-row, #results .notice');
  check('a time range without messages finds none', (await page.textContent('#results')).includes('No message matches'),
    await page.textContent('#results'));

  // 3b. "Replay every match" on another search (two clicks: arm, then confirm).
  await page.goto(`${base}/#/messages?control_id=${bulkId}`);
  await page.waitForSelector('#replay-matches');
  await page.click('#replay-matches');
  check('the bulk replay asks for a second click', /again/.test(await page.textContent('#replay-matches')));
  await page.click('#replay-matches');
  await page.waitForSelector('.bulk .notice');
  const bulk = await page.textContent('.bulk .notice');
  check('replay every match replays the one match', bulk.startsWith('1 message(s) replayed: 1 delivery'), bulk);
  await page.goto(`${base}/#/messages?control_id=${controlId}`);
  await page.waitForSelector('tr.message-row a.open');

  // 4. Message detail: tree with paths, raw, ACK, deliveries.
  await page.click('tr.message-row a.open');
  await page.waitForSelector('#hl7-tree');
  const msh10 = await page.locator('#hl7-tree .leaf', { hasText: 'MSH-10' }).first().textContent();
  check('the HL7 tree shows MSH-10 with its path', msh10.includes('MSH-10') && msh10.includes(controlId), msh10);
  check('the raw message is shown', (await page.textContent('#raw')).includes(controlId));
  check('the ACK is shown', (await page.textContent('#ack')).includes('MSA|AA'));
  const attemptsBefore = await page.locator('.delivery-detail table.attempts tbody tr').count();
  check('the delivery has its attempt log', attemptsBefore >= 1, `${attemptsBefore} attempt(s)`);
  await shot(page, '04-message');

  // 5. Replay the whole message; the delivery runs again.
  await page.click('#replay-all');
  await page.waitForSelector('#replay-result');
  const replayText = await page.textContent('#replay-result');
  check('replay queues the delivery again', /Replayed .*: 1 delivery/.test(replayText), replayText);
  await waitFor('the replayed delivery to be sent again', async () => {
    await page.reload();
    await page.waitForSelector('.delivery-detail');
    const attempts = await page.locator('.delivery-detail table.attempts tbody tr').count();
    const state = await page.locator('.delivery-detail .badge').first().textContent();
    return { ok: attempts === attemptsBefore + 1 && state === 'sent', attempts, state };
  });
  check('the replayed delivery was sent again (one more attempt)', true);
  const actions = await page.locator('table.audit tbody tr td:nth-child(3)').allTextContents();
  check('the audit trail shows the replay and the reads', actions.includes('replay') && actions.includes('read_content'),
    actions.join(', '));
  await shot(page, '05-replayed');

  // 6. Message content is shown as text, never run: PID-5 of this message
  // holds an <img onerror> and a <script>.
  await page.goto(`${base}/#/messages?control_id=${hostileId}`);
  await page.waitForSelector('tr.message-row a.open');
  await page.click('tr.message-row a.open');
  await page.waitForSelector('#hl7-tree');
  const injected = await page.evaluate(() => ({
    elements: document.querySelectorAll('main img, main script, main iframe').length,
    ran: window.__plexusXss === true,
    shown: document.querySelector('#raw').textContent.includes('<img src=x onerror='),
  }));
  check('message markup is shown as text and not run', injected.elements === 0 && !injected.ran && injected.shown,
    JSON.stringify(injected));

  // 7. Patient sync: the form, and with two FHIR servers the whole flow (search, card, sync, progress, report).
  await page.click('nav a[data-page=sync]');
  await page.waitForSelector('#patient-search');
  check('the patient sync form shows', true);
  if (process.env.PLEXUS_SYNC_EHR && process.env.PLEXUS_SYNC_BUNDLE) {
    const bundle = JSON.parse(readFileSync(process.env.PLEXUS_SYNC_BUNDLE, 'utf8'));
    const patient = bundle.entry.map((e) => e.resource).find((r) => r.resourceType === 'Patient');
    const loaded = await fetch(process.env.PLEXUS_SYNC_EHR, {
      method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(bundle),
    });
    check('the Synthea bundle is loaded into the source server', loaded.ok, `HTTP ${loaded.status}`);
    await page.fill('#sync-source', 'ehr');
    await page.fill('#sync-target', 'hub');
    await page.fill('#sync-family', patient.name[0].family);
    await page.fill('#sync-birthdate', patient.birthDate);
    await page.click('#patient-search button[type=submit]');
    await page.waitForSelector('.card.patient');
    const cardText = await page.textContent('.card.patient');
    check('the search shows the patient card', cardText.includes(patient.name[0].given[0]) && cardText.includes(patient.birthDate),
      cardText.slice(0, 120));
    await page.click('.card.patient button.sync');
    await page.waitForSelector('#job [data-status]');
    const phases = new Set();
    const final = await waitFor('the sync job to end', async () => {
      const status = await page.getAttribute('#job [data-status]', 'data-status');
      const phase = await page.locator('#job table.facts tr', { hasText: 'Phase' }).locator('td').textContent().catch(() => '');
      if (phase) phases.add(phase);
      return { ok: ['succeeded', 'partially_failed', 'failed'].includes(status), status };
    }, 180_000);
    check('the sync job succeeded', final.status === 'succeeded', `${final.status}; phases seen: ${[...phases].join(', ')}`);
    const created = await page.locator('#job table.report td.created').allTextContents();
    const total = created.reduce((sum, n) => sum + Number(n), 0);
    check('the report counts resources created on the target', total > 0, `${created.length} types, ${total} created`);
  }
  await shot(page, '06-sync');

  // 8. A token with messages:read only may look but not replay, and is told which scope it lacks.
  if (readToken) {
    await page.click('#logout');
    await page.waitForSelector('#login-form');
    await page.fill('#token', readToken);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector(`tr.channel-row[data-channel="${channel}"]`);
    await page.goto(`${base}/#/messages?control_id=${controlId}`);
    await page.waitForSelector('tr.message-row a.open');
    await page.click('tr.message-row a.open');
    await page.waitForSelector('#replay-all');
    await page.click('#replay-all');
    await page.waitForSelector('#message-status .notice-error');
    const forbidden = await page.textContent('#message-status .notice-error');
    check('a 403 names the missing scope', forbidden.includes('lacks the scope messages:replay'), forbidden);
    await shot(page, '07-forbidden');
  }

  check('no script errors in the page', pageErrors.length === 0, pageErrors.join(' | '));
} catch (e) {
  check('the walk through the dashboard finished', false, e.stack || e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}

const result = { ok: checks.every((c) => c.ok), checks };
writeFileSync(join(artifacts, 'results.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(result.ok ? 0 : 1);
