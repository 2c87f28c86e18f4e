#!/usr/bin/env node
// A browser-like Socket.IO client (official socket.io-client v4) driven by
// the Python test-suite (see tests/support/jsclient.py).
//
// It connects, joins rooms, sends acked `echo` emits, counts `bcast` events
// (each `{seq: int}`), records every connect_error / disconnect with its
// reason, and on exit prints ONE JSON summary line on stdout (--json).
// Progress goes to stderr as `@event {json}` lines so a test can wait for
// e.g. "joined" before it starts broadcasting.
//
// Server contract (the test app implements it):
//   echo(payload, ack)  -> ack(payload)           (same payload back)
//   join(room, ack?)    -> put the socket in room; ack(true) if it can
//   server emits `bcast` with {seq: <int>}         (to a room or to all)
//
// Exit codes: 0 normal (the summary tells what happened), 2 bad usage,
// 3 hard deadline (duration + 10 s) hit, summary still printed.
'use strict';

const { parseArgs } = require('node:util');

const USAGE = `usage: node tests/js/client.js URL [options]

  URL                      server URL, may include a namespace (http://127.0.0.1:8000/chat)
  --transports LIST        polling | websocket | polling,websocket  (default polling,websocket)
  --duration S             stay connected S seconds, then disconnect (default 5)
  --rooms A,B              rooms to join (emit 'join' with each name after every connect,
                           unless the session was recovered); repeatable
  --emit-count N           acked 'echo' emits to send, one after the other (default 0)
  --emit-interval MS       pause between two echo emits (default 0)
  --ack-timeout MS         per-emit ack timeout (default 5000)
  --payload-bytes N        size of the padding string in each echo payload (default 16)
  --expect-bcast N         exit early once N distinct bcast seqs were received and
                           all emits are done
  --exit-when-done         exit early once all emits are done (and --expect-bcast met)
  --recovery               report socket.recovered (connection state recovery is a
                           server-side setting in v4; the client needs nothing else)
  --path P                 Engine.IO path (default /socket.io)
  --auth JSON              auth payload for the CONNECT packet
  --query JSON             extra query string parameters
  --reconnect-delay MS     reconnectionDelay (default 250; browser default is 1000)
  --reconnect-delay-max MS reconnectionDelayMax (default 2000)
  --no-reconnect           disable automatic reconnection
  --connect-timeout MS     connection timeout (default 5000)
  --label NAME             free text copied into the summary
  --json                   print the summary as one JSON line (default: human text)
  --quiet                  no @event lines on stderr
  -h, --help               this text
`;

function fail(msg) {
  process.stderr.write(`client.js: ${msg}\n\n${USAGE}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      transports: { type: 'string', default: 'polling,websocket' },
      duration: { type: 'string', default: '5' },
      rooms: { type: 'string', multiple: true, default: [] },
      'emit-count': { type: 'string', default: '0' },
      'emit-interval': { type: 'string', default: '0' },
      'ack-timeout': { type: 'string', default: '5000' },
      'payload-bytes': { type: 'string', default: '16' },
      'expect-bcast': { type: 'string', default: '0' },
      'exit-when-done': { type: 'boolean', default: false },
      recovery: { type: 'boolean', default: false },
      path: { type: 'string', default: '/socket.io' },
      auth: { type: 'string' },
      query: { type: 'string' },
      'reconnect-delay': { type: 'string', default: '250' },
      'reconnect-delay-max': { type: 'string', default: '2000' },
      'no-reconnect': { type: 'boolean', default: false },
      'connect-timeout': { type: 'string', default: '5000' },
      label: { type: 'string', default: '' },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  fail(err.message);
}
const opts = parsed.values;
if (opts.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
if (parsed.positionals.length !== 1) fail('exactly one URL is required');
const url = parsed.positionals[0];

function num(name, { min = 0, integer = true } = {}) {
  const v = Number(opts[name]);
  if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    fail(`--${name} must be a${integer ? 'n integer' : ' number'} >= ${min}`);
  }
  return v;
}
function jsonOpt(name) {
  if (opts[name] === undefined) return undefined;
  try {
    return JSON.parse(opts[name]);
  } catch (err) {
    return fail(`--${name} is not valid JSON: ${err.message}`);
  }
}

const transports = opts.transports.split(',').map((s) => s.trim()).filter(Boolean);
if (!transports.length || transports.some((t) => !['polling', 'websocket', 'webtransport'].includes(t))) {
  fail('--transports must be polling, websocket or polling,websocket');
}
const durationS = num('duration', { integer: false });
const emitCount = num('emit-count');
const emitInterval = num('emit-interval');
const ackTimeout = num('ack-timeout', { min: 1 });
const payloadBytes = num('payload-bytes');
const expectBcast = num('expect-bcast');
const rooms = opts.rooms.flatMap((r) => r.split(',')).map((s) => s.trim()).filter(Boolean);
const auth = jsonOpt('auth');
const query = jsonOpt('query');

let io;
try {
  ({ io } = require('socket.io-client'));
} catch (err) {
  process.stderr.write(`client.js: cannot load socket.io-client (run \`npm ci\` at the repo root): ${err.message}\n`);
  process.exit(2);
}

// ----------------------------------------------------------------- state
const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1000;
const MAX_RECORDS = 200; // bound every list in the summary

const summary = {
  type: 'summary',
  label: opts.label,
  url,
  transports_requested: transports,
  connected: false, // ever connected
  connected_at_exit: false,
  connect_count: 0,
  reconnect_count: 0,
  first_connect_s: null,
  sid: null, // Socket.IO id of the last connection
  engine_ids: [], // Engine.IO session ids seen
  transport_initial: null,
  transport_final: null,
  upgraded: false,
  upgrade_errors: [],
  recovery_requested: opts.recovery,
  recovered: false, // socket.recovered on the last connect
  recovered_count: 0,
  connect_errors: [],
  disconnects: [],
  joins: {}, // room -> "acked" | "sent" | "timeout:<ms>"
  emits: {
    requested: emitCount, sent: 0, acked: 0, mismatched: 0, timeouts: 0, errors: [],
    rtt_ms: { min: null, p50: null, p95: null, p99: null, max: null, mean: null },
  },
  bcast: {
    received: 0, distinct: 0, duplicates: 0, min_seq: null, max_seq: null,
    gaps: 0, missing: [], invalid: 0, out_of_order: 0,
  },
  duration_s: durationS,
  elapsed_s: 0,
  exit_reason: null,
  hard_exit: false,
};

function event(name, extra = {}) {
  if (opts.quiet) return;
  process.stderr.write(`@event ${JSON.stringify({ event: name, t: elapsed(), ...extra })}\n`);
}
function pushBounded(list, item) {
  if (list.length < MAX_RECORDS) list.push(item);
}
function errInfo(err) {
  if (!err) return { message: String(err) };
  const out = { message: err.message !== undefined ? String(err.message) : String(err) };
  if (err.type !== undefined) out.type = err.type;
  if (err.description !== undefined) out.description = describe(err.description);
  if (err.context !== undefined) out.context = describe(err.context);
  if (err.data !== undefined) out.data = describe(err.data);
  return out;
}
// XHR objects / Errors / events are not JSON friendly; keep what tells us why.
function describe(v, depth = 0) {
  if (v === null || v === undefined) return v;
  if (typeof v !== 'object') return typeof v === 'string' ? v.slice(0, 500) : v;
  if (depth > 2) return '[…]';
  if (v instanceof Error) return { message: v.message, code: v.code };
  if ('status' in v && ('responseText' in v || 'readyState' in v)) {
    let text;
    try { text = String(v.responseText).slice(0, 500); } catch (_) { text = undefined; }
    return { status: v.status, responseText: text };
  }
  const out = {};
  for (const k of Object.keys(v).slice(0, 20)) {
    try { out[k] = describe(v[k], depth + 1); } catch (_) { out[k] = '?'; }
  }
  return out;
}

// ----------------------------------------------------------------- socket
const socket = io(url, {
  forceNew: true,
  path: opts.path,
  transports,
  upgrade: transports.includes('websocket') && transports.length > 1,
  reconnection: !opts['no-reconnect'],
  reconnectionDelay: num('reconnect-delay'),
  reconnectionDelayMax: num('reconnect-delay-max'),
  timeout: num('connect-timeout', { min: 1 }),
  auth,
  query,
});

function watchEngine() {
  const engine = socket.io.engine;
  if (!engine || engine.__watched) return;
  engine.__watched = true;
  if (engine.id) pushBounded(summary.engine_ids, engine.id);
  // the transport the Engine.IO session opened with (before any upgrade)
  if (summary.transport_initial === null && engine.transport) {
    summary.transport_initial = engine.transport.name;
  }
  event('open', { engine_id: engine.id, transport: engine.transport && engine.transport.name });
  engine.on('upgrade', (transport) => {
    summary.upgraded = true;
    summary.transport_final = transport.name;
    event('upgrade', { transport: transport.name });
  });
  engine.on('upgradeError', (err) => {
    pushBounded(summary.upgrade_errors, { t: elapsed(), ...errInfo(err) });
    event('upgrade_error', errInfo(err));
  });
}
socket.io.on('open', watchEngine);
socket.io.on('reconnect_attempt', (n) => event('reconnect_attempt', { attempt: n }));

let emitsStarted = false;
let emitsDone = emitCount === 0;

socket.on('connect', () => {
  watchEngine();
  const transport = socket.io.engine.transport.name;
  summary.connect_count += 1;
  if (summary.connect_count > 1) summary.reconnect_count += 1;
  summary.connected = true;
  if (summary.first_connect_s === null) summary.first_connect_s = elapsed();
  if (summary.transport_initial === null) summary.transport_initial = transport;
  summary.transport_final = transport;
  summary.sid = socket.id;
  if (socket.io.engine.id && !summary.engine_ids.includes(socket.io.engine.id)) {
    pushBounded(summary.engine_ids, socket.io.engine.id);
  }
  summary.recovered = Boolean(socket.recovered);
  if (socket.recovered) summary.recovered_count += 1;
  event('connect', { sid: socket.id, transport, recovered: summary.recovered, n: summary.connect_count });
  // A recovered session keeps its rooms; otherwise (re)join like an app would.
  if (!socket.recovered) joinRooms();
  if (!emitsStarted) {
    emitsStarted = true;
    runEmits().catch((err) => pushBounded(summary.emits.errors, errInfo(err)));
  }
});

socket.on('connect_error', (err) => {
  pushBounded(summary.connect_errors, { t: elapsed(), ...errInfo(err) });
  event('connect_error', errInfo(err));
});

socket.on('disconnect', (reason, details) => {
  const rec = { t: elapsed(), reason };
  if (details !== undefined) rec.details = errInfo(details);
  pushBounded(summary.disconnects, rec);
  event('disconnect', rec);
});

socket.on('bcast', (msg) => {
  const b = summary.bcast;
  b.received += 1;
  const seq = msg && Number.isInteger(msg.seq) ? msg.seq : null;
  if (seq === null) { b.invalid += 1; return; }
  if (seen.has(seq)) { b.duplicates += 1; return; }
  if (b.max_seq !== null && seq < b.max_seq) b.out_of_order += 1;
  seen.add(seq);
  b.distinct = seen.size;
  b.min_seq = b.min_seq === null ? seq : Math.min(b.min_seq, seq);
  b.max_seq = b.max_seq === null ? seq : Math.max(b.max_seq, seq);
  if (b.distinct === 1) event('first_bcast', { seq });
  maybeDone();
});
const seen = new Set();

function joinRooms() {
  for (const room of rooms) {
    if (summary.joins[room] !== 'acked') summary.joins[room] = 'sent';
    socket.timeout(ackTimeout).emit('join', room, (err) => {
      if (err) {
        if (summary.joins[room] !== 'acked') summary.joins[room] = `timeout:${ackTimeout}`;
      } else {
        summary.joins[room] = 'acked';
      }
      if (rooms.every((r) => summary.joins[r] === 'acked')) event('joined', { rooms });
    });
  }
}

const rtts = [];
async function runEmits() {
  const pad = 'x'.repeat(payloadBytes);
  for (let i = 0; i < emitCount; i++) {
    const payload = { i, pad, from: opts.label || 'client.js' };
    const sentAt = process.hrtime.bigint();
    summary.emits.sent += 1;
    try {
      const resp = await socket.timeout(ackTimeout).emitWithAck('echo', payload);
      rtts.push(Number(process.hrtime.bigint() - sentAt) / 1e6);
      if (JSON.stringify(resp) === JSON.stringify(payload)) summary.emits.acked += 1;
      else summary.emits.mismatched += 1;
    } catch (err) {
      summary.emits.timeouts += 1;
      pushBounded(summary.emits.errors, { i, ...errInfo(err) });
    }
    if (emitInterval > 0) await new Promise((r) => setTimeout(r, emitInterval));
  }
  emitsDone = true;
  event('emits_done', { acked: summary.emits.acked, timeouts: summary.emits.timeouts });
  maybeDone();
}

function maybeDone() {
  if (!emitsDone) return;
  if (expectBcast > 0 && summary.bcast.distinct >= expectBcast) finish('expect_bcast_reached');
  else if (opts['exit-when-done'] && expectBcast === 0) finish('emits_done');
}

// ----------------------------------------------------------------- exit
function percentile(sorted, p) {
  if (!sorted.length) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Number(sorted[idx].toFixed(3));
}
function finalize(reason) {
  const s = summary;
  s.exit_reason = reason;
  s.elapsed_s = Number(elapsed().toFixed(3));
  s.connected_at_exit = socket.connected;
  const sorted = rtts.slice().sort((a, b) => a - b);
  if (sorted.length) {
    s.emits.rtt_ms = {
      min: percentile(sorted, 0), p50: percentile(sorted, 50), p95: percentile(sorted, 95),
      p99: percentile(sorted, 99), max: Number(sorted[sorted.length - 1].toFixed(3)),
      mean: Number((sorted.reduce((a, b) => a + b, 0) / sorted.length).toFixed(3)),
    };
  }
  const b = s.bcast;
  if (b.min_seq !== null) {
    // gaps: seqs between the first and last one received that never arrived
    let gaps = 0;
    for (let q = b.min_seq; q <= b.max_seq && q - b.min_seq <= 10_000_000; q++) {
      if (!seen.has(q)) {
        gaps += 1;
        if (b.missing.length < MAX_RECORDS) b.missing.push(q);
      }
    }
    b.gaps = gaps;
  }
  return s;
}

let finished = false;
function finish(reason, code = 0) {
  if (finished) return;
  finished = true;
  const s = finalize(reason);
  socket.disconnect();
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(s)}\n`);
  } else {
    process.stdout.write(
      `client ${s.label || ''} ${s.exit_reason}: connected=${s.connected} transport=` +
      `${s.transport_initial}->${s.transport_final} upgraded=${s.upgraded} ` +
      `emits ${s.emits.acked}/${s.emits.requested} acked (p50 ${s.emits.rtt_ms.p50} ms) ` +
      `bcast distinct=${s.bcast.distinct} gaps=${s.bcast.gaps} dup=${s.bcast.duplicates} ` +
      `connect_errors=${s.connect_errors.length} disconnects=${s.disconnects.length}\n`,
    );
  }
  // exit once stdout is flushed; bounded by the hard timer below
  process.stdout.write('', () => process.exit(code));
}

setTimeout(() => finish('duration'), durationS * 1000);
const hard = setTimeout(() => {
  summary.hard_exit = true;
  finished = false; // allow the forced summary even if a normal finish stalled
  finish('hard_deadline', 3);
  setTimeout(() => process.exit(3), 1000).unref();
}, (durationS + 10) * 1000);
hard.unref();
process.on('SIGTERM', () => finish('sigterm'));
process.on('SIGINT', () => finish('sigint'));
