// The peer for the JavaScript-step benchmark (benches/transform.rs): the
// same script, run the way a sandboxed Node.js transformer would run it.
// Per message: parse with @medplum/core, a fresh vm context holding a
// `msg` with get/set over the parsed message, the script with a timeout,
// then encode. Prints msgs/s and the mean time per message.
//
// Usage: node js-peer.js FILE.hl7 [SECONDS]   (needs the peers: PLEXUS_PEERS)
const fs = require('fs');
const path = require('path');
const os = require('os');
const vm = require('vm');
const NM = path.join(process.env.PLEXUS_PEERS || path.join(os.homedir(), '.cache/plexus-peers'), 'node/node_modules');
const { Hl7Message } = require(path.join(NM, '@medplum/core'));

const file = process.argv[2];
const secs = parseFloat(process.argv[3] || '5');
if (!file) { console.error('usage: node js-peer.js FILE.hl7 [SECONDS]'); process.exit(2); }
const text = fs.readFileSync(file, 'latin1').replace(/\r\n|\n/g, '\r').replace(/\r+$/, '');

// Same script as SCRIPT in transform.rs.
const script = new vm.Script(`
var family = msg.get("PID-5-1");
msg.set("PID-5-1", family.toUpperCase());
msg.set("PV1-2", msg.get("PV1-2") === "P" ? "O" : msg.get("PV1-2"));
msg.set("MSH-5", "PLEXUS");
`);

// SEG-field[-component] (medplum's getField(n) numbers MSH as the
// standard does, so no shift is needed for MSH-5).
function locate(p) {
  const [seg, f, c] = p.split('-');
  return { seg, field: parseInt(f, 10), component: c ? parseInt(c, 10) : 1 };
}

function wrap(m) {
  return {
    get(p) { const l = locate(p); const s = m.getSegment(l.seg); return s ? s.getComponent(l.field, l.component) : ''; },
    set(p, v) { const l = locate(p); const s = m.getSegment(l.seg); if (s) s.getField(l.field).setComponent(l.component, String(v)); },
  };
}

// Sandboxed: a fresh context per message, as Plexus does.
function transform() {
  const m = Hl7Message.parse(text);
  script.runInNewContext({ msg: wrap(m) }, { timeout: 1000 });
  return m.toString();
}

// For scale only: one context shared by every message (no isolation).
const shared = vm.createContext({ msg: null });
function transformShared() {
  const m = Hl7Message.parse(text);
  shared.msg = wrap(m);
  script.runInContext(shared, { timeout: 1000 });
  return m.toString();
}

// Check it did the work before timing it.
const out = transform();
if (!/^MSH\|[^|]*\|[^|]*\|[^|]*\|PLEXUS[|^]/.test(out) || !/\rPID\|[^\r]*\|EVERYMAN/.test(out)) { console.error('peer transform did not apply'); process.exit(1); }

function bench(name, f) {
  for (let i = 0; i < 200; i++) f(); // warm up
  let n = 0; const start = process.hrtime.bigint(); const end = Date.now() + secs * 1000;
  while (Date.now() < end) { for (let i = 0; i < 20; i++) f(); n += 20; }
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`node ${process.version} ${name}: ${Math.round(n / elapsed)} msgs/s, ${(elapsed / n * 1e6).toFixed(1)} us/msg`);
}
bench('@medplum/core parse + vm.runInNewContext (fresh context) + encode', transform);
bench('@medplum/core parse + vm.runInContext (one shared context, no isolation) + encode', transformShared);
