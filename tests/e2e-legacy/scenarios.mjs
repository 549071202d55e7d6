// End-to-end scenarios for the LEGACY path of a Zero sync server: ad-hoc ZQL
// (`zero.query.<table>…`, sent as raw ASTs), CRUD mutators
// (`zero.mutate.<table>.insert/upsert/update/delete`, executed by the server
// against Postgres), read/write permissions deployed with
// `zero-deploy-permissions`, and HS256 JWT auth (ZERO_AUTH_SECRET).
// The real @rocicorp/zero 1.9.0 client runs in Node with `ws`; the upstream
// Postgres is the oracle (the permission rules restated in SQL). See README.md.
//
// Environment:
//   ZC_E2E_CACHE_URL        sync server, http://host:port (the client's cacheURL)       [required]
//   ZC_E2E_PG_URL           upstream Postgres URL (the database the server replicates)   [required]
//   ZC_E2E_AUTH_SECRET      the HS256 secret the server runs with (ZERO_AUTH_SECRET)     [required]
//   ZC_E2E_SCENARIO         optional filter: comma-separated scenario names
//   ZC_E2E_SKIP             optional: comma-separated scenario names not to run
//   ZC_E2E_TIMEOUT_MS       per-scenario timeout (default 120000)
//   ZC_E2E_WAIT_MS          longest wait for one convergence / expected event (default 20000)
//   ZC_E2E_STARTUP_MS       longest wait for the server's port (default 60000)
//   ZC_E2E_SEED             seed of the property scenario's PRNG (default: 20251125)
//   ZC_E2E_PROPERTY_ROUNDS  rounds of random upstream changes in the property scenario (default 3)
//   ZC_E2E_APP_ID           app id: schema of the permissions table (default zero)
//   ZC_E2E_UPSTREAM_SCHEMA  shard schema holding `clients` (default <app id>_0)
//   ZC_E2E_VERBOSE=1        progress, client logs and observed error frames on stderr
//   ZC_E2E_FRAMES=<file>    append every frame the Zero clients send/receive (JSON lines)
//
// Output: `SCENARIO <name> ok` or `SCENARIO <name> FAIL <reason>` per scenario
// on stdout, then `e2e-legacy: N passed, M failed`. Exit 1 if any failed, 2 on
// bad configuration.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import postgres from 'postgres';
import WS from 'ws';
import {Zero} from '@rocicorp/zero';
import {schema, sqlRules} from './schema.mjs';

// ---------------------------------------------------------------------------
// Configuration

const env = process.env;
const CACHE_URL = env.ZC_E2E_CACHE_URL;
const PG_URL = env.ZC_E2E_PG_URL;
const AUTH_SECRET = env.ZC_E2E_AUTH_SECRET;
if (!CACHE_URL || !PG_URL || !AUTH_SECRET) {
  console.error('scenarios: ZC_E2E_CACHE_URL, ZC_E2E_PG_URL and ZC_E2E_AUTH_SECRET are required');
  process.exit(2);
}
const list = v =>
  (v ?? '')
    .split(',')
    .map(s => s.trim())
    .filter(Boolean);
const FILTER = list(env.ZC_E2E_SCENARIO);
const SKIP = list(env.ZC_E2E_SKIP);
const SCENARIO_TIMEOUT_MS = Number(env.ZC_E2E_TIMEOUT_MS ?? 120_000);
const WAIT_MS = Number(env.ZC_E2E_WAIT_MS ?? 20_000);
const SEED = Number(env.ZC_E2E_SEED ?? 20251125);
const PROPERTY_ROUNDS = Number(env.ZC_E2E_PROPERTY_ROUNDS ?? 3);
const APP_ID = env.ZC_E2E_APP_ID ?? 'zero';
const UPSTREAM_SCHEMA = env.ZC_E2E_UPSTREAM_SCHEMA ?? `${APP_ID}_0`;
const VERBOSE = env.ZC_E2E_VERBOSE === '1';
// Unique per run, so a database can be reused for several runs.
const RUN = Date.now().toString(36);

const cacheURL = new URL(CACHE_URL);
const sql = postgres(PG_URL, {max: 4, onnotice: () => {}});

const debug = (...args) => {
  if (VERBOSE) {
    console.error('  ·', ...args);
  }
};

process.on('unhandledRejection', e => {
  // A timed-out scenario keeps running in the background until its clients are
  // closed; what it throws then is of no interest.
  debug('unhandled rejection:', e?.message ?? e);
});

// ---------------------------------------------------------------------------
// HS256 JWTs, minted with node:crypto (no JWT library).

function signHS256(header, payload, secret) {
  const h = Buffer.from(JSON.stringify(header)).toString('base64url');
  const p = Buffer.from(JSON.stringify(payload)).toString('base64url');
  const s = crypto.createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}

/** A token for `sub`, valid for an hour unless `exp` says otherwise; extra claims in `claims`. */
function mintToken(sub, {claims = {}, secret = AUTH_SECRET, expIn = 3600} = {}) {
  const now = Math.floor(Date.now() / 1000);
  return signHS256({alg: 'HS256', typ: 'JWT'}, {sub, iat: now, exp: now + expIn, ...claims}, secret);
}

/** The same token with its signature altered (first character of the signature changed). */
function tamperSignature(token) {
  const [h, p, s] = token.split('.');
  const c = s[0] === 'A' ? 'B' : 'A';
  return `${h}.${p}.${c}${s.slice(1)}`;
}

// Claims of the test users (u4 is an admin for the `doc` table's isAdmin rule).
const CLAIMS = {u4: {role: 'admin'}};
const tokenFor = userID => mintToken(userID, {claims: CLAIMS[userID] ?? {}});

// ---------------------------------------------------------------------------
// WebSocket seen by the client: `ws`, recording frames per clientID.

const framesFile = env.ZC_E2E_FRAMES ? fs.createWriteStream(env.ZC_E2E_FRAMES, {flags: 'a'}) : undefined;
let currentScenario = '';
/** clientID → {sockets: [{url, closeCode, closeReason}], errors: [body], lmid: number, downCount} */
const wire = new Map();
function wireOf(clientID) {
  let w = wire.get(clientID);
  if (!w) {
    w = {sockets: [], errors: [], lmid: 0};
    wire.set(clientID, w);
  }
  return w;
}
function logFrame(clientID, dir, data) {
  framesFile?.write(JSON.stringify({t: Date.now(), scenario: currentScenario, clientID, dir, data}) + '\n');
}
class RecordingWebSocket extends WS {
  constructor(url, protocols) {
    super(url, protocols);
    const u = new URL(String(url));
    const clientID = (this.clientID = u.searchParams.get('clientID'));
    const w = wireOf(clientID);
    const entry = {url: String(url), closeCode: undefined, closeReason: undefined, ws: this};
    w.sockets.push(entry);
    if (framesFile) {
      const p = Array.isArray(protocols) ? protocols[0] : protocols;
      let secProtocol = p;
      try {
        secProtocol = JSON.parse(Buffer.from(decodeURIComponent(p), 'base64').toString('utf8'));
      } catch {
        // keep it raw
      }
      logFrame(clientID, 'open', {url: String(url), secProtocol});
    }
    this.on('message', (d, isBinary) => {
      const text = isBinary ? undefined : d.toString('utf8');
      logFrame(clientID, 'down', isBinary ? {binary: d.length} : text);
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        return;
      }
      if (!Array.isArray(msg)) {
        return;
      }
      if (msg[0] === 'error') {
        w.errors.push(msg[1]);
        debug(`[${currentScenario}] error frame to ${clientID}: ${short(msg[1])}`);
      } else if (msg[0] === 'pokePart' && msg[1]?.lastMutationIDChanges) {
        for (const [cid, id] of Object.entries(msg[1].lastMutationIDChanges)) {
          const o = wireOf(cid);
          o.lmid = Math.max(o.lmid, Number(id));
        }
      }
    });
    this.on('close', (code, reason) => {
      entry.closeCode = code;
      entry.closeReason = reason.toString();
      logFrame(clientID, 'close', {code, reason: entry.closeReason});
    });
  }
  send(data, ...rest) {
    logFrame(this.clientID, 'up', String(data));
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = RecordingWebSocket;

// ---------------------------------------------------------------------------
// Small utilities

const sleep = ms => new Promise(r => setTimeout(r, ms));

let lastStamp = 0;
/** Strictly increasing millisecond stamps for `modified`/`created`. */
function stamp() {
  lastStamp = Math.max(lastStamp + 1, Date.now());
  return lastStamp;
}

class Fail extends Error {}

function check(cond, message) {
  if (!cond) {
    throw new Fail(typeof message === 'function' ? message() : message);
  }
}

function short(v, n = 300) {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s === undefined ? 'undefined' : s.length > n ? s.slice(0, n) + '…' : s;
}

/** Deep copy into plain JSON: keys sorted, undefined members dropped, undefined → null. */
function normalize(v) {
  if (v === undefined || v === null) {
    return null;
  }
  if (Array.isArray(v)) {
    return v.map(normalize);
  }
  if (typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v).sort()) {
      if (v[k] !== undefined) {
        out[k] = normalize(v[k]);
      }
    }
    return out;
  }
  if (typeof v === 'bigint') {
    return Number(v);
  }
  return v;
}

/** A readable description of the first difference between two normalized values. */
function firstDiff(actual, expected, path = '$') {
  if (JSON.stringify(actual) === JSON.stringify(expected)) {
    return undefined;
  }
  if (Array.isArray(actual) && Array.isArray(expected)) {
    const ids = a => a.map(r => (r && typeof r === 'object' ? r.id : undefined));
    const ai = ids(actual);
    const ei = ids(expected);
    if (ai.every(x => x !== undefined) && ei.every(x => x !== undefined) && JSON.stringify(ai) !== JSON.stringify(ei)) {
      return `${path}: client ids ${short(ai, 240)} vs Postgres ids ${short(ei, 240)}`;
    }
    for (let i = 0; i < Math.max(actual.length, expected.length); i++) {
      if (i >= actual.length) {
        return `${path}: client has ${actual.length} rows, Postgres ${expected.length}; missing ${short(expected[i], 160)}`;
      }
      if (i >= expected.length) {
        return `${path}: client has ${actual.length} rows, Postgres ${expected.length}; extra ${short(actual[i], 160)}`;
      }
      const d = firstDiff(actual[i], expected[i], `${path}[${i}]`);
      if (d) {
        return d;
      }
    }
  }
  if (actual && expected && typeof actual === 'object' && typeof expected === 'object' && !Array.isArray(actual) && !Array.isArray(expected)) {
    for (const k of new Set([...Object.keys(actual), ...Object.keys(expected)])) {
      const d = firstDiff(actual[k], expected[k], `${path}.${k}`);
      if (d) {
        return d;
      }
    }
  }
  return `${path}: client ${short(actual, 200)} vs Postgres ${short(expected, 200)}`;
}

async function waitUntil(cond, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await cond();
    if (r) {
      return r;
    }
    if (Date.now() > deadline) {
      throw new Fail(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(50);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Fail(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]);
}

async function waitForPort(url, timeoutMs) {
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  await waitUntil(
    () =>
      new Promise(resolve => {
        const s = net.connect({host: url.hostname, port});
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
    `${url.host} to accept connections`,
    timeoutMs,
  );
}

/** mulberry32: a small seeded PRNG. */
function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: n => Math.floor(next() * n),
    pick: arr => arr[Math.floor(next() * arr.length)],
    chance: p => next() < p,
  };
}

// ---------------------------------------------------------------------------
// Query specs: one description, compiled both to ZQL (sent by the client as an
// ad-hoc AST) and to SQL with the permission rules applied (the oracle).
//
//   {table, where?: [[col, op, value]], exists?: [{rel, where?, exists?}],
//    orderBy?: [[col, 'asc'|'desc']], limit?, one?, related?: [{rel, ...spec}]}
//
// Ops: = != < <= > >= IS 'IS NOT' IN. Zero orders by the query's orderBy, then
// by the primary key; strings by code point (COLLATE "C"), NULL first.
// (NOT EXISTS is not in the list: the 1.9.0 client refuses to materialize it.)

const TABLES = schema.tables;
const RELS = schema.relationships;

function applySpec(q, spec) {
  for (const [c, op, v] of spec.where ?? []) {
    q = q.where(c, op, v);
  }
  for (const e of spec.exists ?? []) {
    q = q.whereExists(e.rel, sq => applySpec(sq, e));
  }
  for (const [c, d] of spec.orderBy ?? []) {
    q = q.orderBy(c, d);
  }
  if (spec.limit !== undefined) {
    q = q.limit(spec.limit);
  }
  for (const r of spec.related ?? []) {
    q = q.related(r.rel, sq => applySpec(sq, r));
  }
  if (spec.one) {
    q = q.one();
  }
  return q;
}

function zqlOf(z, spec) {
  return applySpec(z.query[spec.table], spec);
}

const ident = s => `"${s.replace(/"/g, '""')}"`;

class SqlBuilder {
  /** ctx: {sub, role} (claims; undefined = no token), perms: false = nothing readable. */
  constructor(ctx, perms = true) {
    this.values = [ctx.sub ?? null, ctx.role ?? null];
    this.perms = perms;
    this.aliases = 0;
  }
  param(v) {
    this.values.push(v);
    return `$${this.values.length}`;
  }
  alias() {
    return `t${++this.aliases}`;
  }
  rule(table, alias) {
    if (!this.perms) {
      return 'FALSE';
    }
    return sqlRules[table](alias).replaceAll('$sub', 'auth.sub').replaceAll('$role', 'auth.role');
  }
  cond(table, alias, [c, op, v]) {
    const col = `${alias}.${ident(c)}`;
    switch (op) {
      case 'IS':
        return `${col} IS NOT DISTINCT FROM ${this.param(v)}`;
      case 'IS NOT':
        return `${col} IS DISTINCT FROM ${this.param(v)}`;
      case 'IN':
        return `${col} = ANY(${this.param(v)})`;
      case '=':
      case '!=':
      case '<':
      case '<=':
      case '>':
      case '>=':
        return `${col} ${op === '!=' ? '<>' : op} ${this.param(v)}`;
      default:
        throw new Error(`op ${op} not supported by the oracle`);
    }
  }
  where(table, alias, spec) {
    const parts = [];
    for (const w of spec.where ?? []) {
      parts.push(this.cond(table, alias, w));
    }
    for (const e of spec.exists ?? []) {
      const [conn] = RELS[table][e.rel];
      const sub = this.alias();
      const join = conn.sourceField.map((sf, i) => `${sub}.${ident(conn.destField[i])} = ${alias}.${ident(sf)}`);
      parts.push(
        `EXISTS (SELECT 1 FROM ${ident(conn.destSchema)} ${sub} WHERE ${[...join, this.where(conn.destSchema, sub, e)].join(' AND ')})`,
      );
    }
    parts.push(this.rule(table, alias));
    return parts.join(' AND ');
  }
  orderBy(table, alias, spec) {
    const cols = TABLES[table].columns;
    const order = [...(spec.orderBy ?? [])];
    for (const k of TABLES[table].primaryKey) {
      if (!order.some(([c]) => c === k)) {
        order.push([k, 'asc']);
      }
    }
    return order
      .map(([c, d]) => `${alias}.${ident(c)}${cols[c].type === 'string' ? ' COLLATE "C"' : ''} ${d === 'desc' ? 'DESC NULLS LAST' : 'ASC NULLS FIRST'}`)
      .join(', ');
  }
  select(table, spec, correlation) {
    const a = this.alias();
    const cols = Object.keys(TABLES[table].columns).map(c => `${a}.${ident(c)}`);
    const conds = [];
    if (correlation) {
      for (const [col, v] of correlation) {
        conds.push(`${a}.${ident(col)} = ${this.param(v)}`);
      }
    }
    conds.push(this.where(table, a, spec));
    const limit = spec.one ? 1 : spec.limit;
    // `auth` carries the claims ($1 sub, $2 role) into every (sub)query's rule.
    return `SELECT ${cols.join(', ')} FROM (SELECT $1::text AS sub, $2::text AS role) auth, ${ident(table)} ${a} WHERE ${conds.join(' AND ')} ORDER BY ${this.orderBy(table, a, spec)}${limit !== undefined ? ` LIMIT ${Number(limit)}` : ''}`;
  }
}

/** The rows (nested like the client's view) Postgres gives for `spec` as seen by `ctx`. */
async function oracle(spec, ctx, perms = true, correlation) {
  const b = new SqlBuilder(ctx, perms);
  const text = b.select(spec.table, spec, correlation);
  const rows = [...(await sql.unsafe(text, b.values))];
  for (const row of rows) {
    for (const r of spec.related ?? []) {
      const [conn] = RELS[spec.table][r.rel];
      const corr = conn.destField.map((df, i) => [df, row[conn.sourceField[i]]]);
      const sub = await oracle({...r, table: conn.destSchema}, ctx, perms, corr);
      row[r.rel] = conn.cardinality === 'one' ? sub[0] : sub;
    }
  }
  return spec.one ? rows[0] : rows;
}

function describeSpec(spec) {
  const parts = [spec.table];
  for (const [c, op, v] of spec.where ?? []) {
    parts.push(`where(${c} ${op} ${JSON.stringify(v)})`);
  }
  for (const e of spec.exists ?? []) {
    parts.push(`exists(${describeSpec({...e, table: e.rel})})`);
  }
  for (const [c, d] of spec.orderBy ?? []) {
    parts.push(`orderBy(${c} ${d})`);
  }
  if (spec.limit !== undefined) {
    parts.push(`limit(${spec.limit})`);
  }
  for (const r of spec.related ?? []) {
    parts.push(`related(${describeSpec({...r, table: r.rel})})`);
  }
  if (spec.one) {
    parts.push('one()');
  }
  return parts.join('.');
}

// ---------------------------------------------------------------------------
// Scope: the clients and views of one scenario (closed at its end).

class Scope {
  constructor(name) {
    this.name = name;
    this.zeros = [];
    this.watches = [];
    this.events = [];
    this.cleanup = [];
  }

  /**
   * A new Zero client in a new client group. `userID` is the claimed user;
   * `token` the auth token (default: a valid JWT for userID; null = none).
   */
  zero({userID, token = userID === undefined ? null : tokenFor(userID), label, storageKey = `${label}-${RUN}-${crypto.randomUUID()}`}) {
    const logs = [];
    const events = this.events;
    const opts = {
      cacheURL: CACHE_URL,
      schema,
      storageKey,
      kvStore: 'mem',
      logLevel: 'info',
      logSink: {
        log(level, context, ...args) {
          const line = `[${label}] ${level} ${args.map(a => (a instanceof Error ? a.message : typeof a === 'string' ? a : short(a, 400))).join(' ')}`;
          logs.push(line);
          if (logs.length > 400) {
            logs.shift();
          }
          if (VERBOSE && level !== 'debug') {
            console.error('    ' + line);
          }
        },
      },
      onUpdateNeeded: reason => events.push({label, what: 'onUpdateNeeded', reason}),
      onClientStateNotFound: () => events.push({label, what: 'onClientStateNotFound'}),
    };
    if (userID !== undefined) {
      opts.userID = userID;
    }
    if (token !== null) {
      opts.auth = token;
    }
    const z = new Zero(opts);
    this.zeros.push({z, label, logs, closed: false, expectConnected: true, mutations: 0, expectedErrors: 0});
    return z;
  }

  entry(z) {
    return this.zeros.find(e => e.z === z);
  }

  async close(z) {
    const e = this.entry(z);
    if (e && !e.closed) {
      e.closed = true;
      for (const w of this.watches) {
        if (w.z === z) {
          w.destroyed = true;
        }
      }
      await withTimeout(z.close(), 5000, `closing ${e.label}`).catch(err => debug(err.message));
    }
  }

  /**
   * Materialize the ad-hoc query of `spec` and track its state; `ctx` ({sub, role})
   * selects the oracle (the same query with the rules applied in SQL).
   */
  watch(z, spec, ctx, {label = `${this.entry(z).label} ${describeSpec(spec)}`, perms = true} = {}) {
    const w = {z, spec, ctx, perms, label, json: null, resultType: 'unknown', updates: 0, history: [], destroyed: false};
    w.view = z.materialize(zqlOf(z, spec));
    w.view.addListener((data, resultType) => {
      w.json = normalize(data);
      w.resultType = resultType;
      w.updates++;
      w.history.push(w.json);
      if (w.history.length > 100) {
        w.history.shift();
      }
    });
    w.expect = ctx === null ? undefined : () => oracle(spec, ctx, perms);
    this.watches.push(w);
    return w;
  }

  destroy(w) {
    w.view.destroy();
    w.destroyed = true;
  }

  /** Waits until the view is `complete` and equal, row by row, to the oracle. */
  async converge(w, timeoutMs = WAIT_MS) {
    check(w.expect, `${w.label}: no expected result`);
    let want;
    let lastQueried = 0;
    try {
      await waitUntil(
        async () => {
          if (Date.now() - lastQueried > 300) {
            want = normalize(await w.expect());
            lastQueried = Date.now();
          }
          return w.resultType === 'complete' && JSON.stringify(w.json) === JSON.stringify(want);
        },
        w.label,
        timeoutMs,
      );
    } catch (e) {
      if (!(e instanceof Fail)) {
        throw e;
      }
      const diff = firstDiff(w.json, want) ?? 'same rows';
      throw new Fail(`${w.label} did not converge with Postgres (resultType=${w.resultType}): ${diff}`);
    }
    return w.json;
  }

  async convergeAll(ws = this.watches) {
    for (const w of ws) {
      if (!w.destroyed && w.expect) {
        await this.converge(w);
      }
    }
  }

  /** End-of-scenario check: views match, clients connected, no unexpected error frames. */
  async verifyAll() {
    await this.convergeAll();
    for (const e of this.zeros) {
      if (e.closed) {
        continue;
      }
      if (e.expectConnected) {
        const st = e.z.connection.state.current;
        check(st.name === 'connected', `${e.label}: connection state is ${short(st)} at the end`);
      }
      const errors = wireOf(e.z.clientID).errors;
      check(errors.length === e.expectedErrors, () => `${e.label}: unexpected error frames ${short(errors, 600)}`);
    }
    check(this.events.length === 0, () => `unexpected client callbacks: ${short(this.events)}`);
  }

  async closeAll() {
    await Promise.all(this.zeros.map(e => this.close(e.z)));
    for (const f of this.cleanup) {
      await f().catch(e => debug(`cleanup: ${e.message}`));
    }
  }

  dumpLogs() {
    for (const e of this.zeros) {
      for (const line of e.logs.slice(-40)) {
        console.error('    ' + line);
      }
    }
  }
}

function connectionState(z) {
  return z.connection.state.current;
}

async function waitConnected(z, label) {
  await waitUntil(() => connectionState(z).name === 'connected', () => `${label} to be connected (state ${short(connectionState(z))})`);
}

async function upstreamLMID(z) {
  const [row] = await sql`
    SELECT "lastMutationID" FROM ${sql(UPSTREAM_SCHEMA)}.clients
    WHERE "clientGroupID" = ${await z.clientGroupID} AND "clientID" = ${z.clientID}`;
  return row === undefined ? 0 : Number(row.lastMutationID);
}

// ---------------------------------------------------------------------------
// CRUD helper: run one legacy CRUD mutation and wait until the server confirmed
// it (a poke's lastMutationIDChanges reaches its id). `w` (optional) is a view
// that should show the optimistic change: `optimistic(json)` must hold for
// one of its states after the local write.

async function crud(s, z, what, run, {w, optimistic} = {}) {
  const e = s.entry(z);
  const id = ++e.mutations;
  const seenBefore = w ? w.history.length : 0;
  await withTimeout(Promise.resolve(run(z.mutate)), WAIT_MS, `${what}: local write`);
  if (w && optimistic) {
    await waitUntil(
      () => w.history.slice(seenBefore).some(optimistic) || wireOf(z.clientID).lmid >= id,
      `${what}: the optimistic change in ${w.label}`,
    );
    check(
      w.history.slice(seenBefore).some(optimistic),
      () => `${what}: the optimistic change never showed in ${w.label} (states ${short(w.history.slice(seenBefore), 400)})`,
    );
  }
  await waitUntil(
    () => wireOf(z.clientID).lmid >= id,
    () => `${what}: lastMutationIDChanges for mutation ${id} (client has ${wireOf(z.clientID).lmid})`,
  );
  const up = await upstreamLMID(z);
  check(up === id, `${what}: ${UPSTREAM_SCHEMA}.clients.lastMutationID is ${up}, want ${id}`);
  debug(`${what}: confirmed as mutation ${id}`);
  return id;
}

// ---------------------------------------------------------------------------
// Permissions: what is deployed upstream, and waiting for the server to use it.

async function deployedPermissions() {
  const rows = await sql`SELECT permissions, hash FROM ${sql(APP_ID)}.permissions`.catch(() => []);
  return rows[0]?.permissions ?? null;
}

/**
 * Waits until a fresh client group reading `user` (readable by anyone when the
 * permissions are deployed) sees rows (`deployed`) or no rows (not deployed).
 * Each attempt is a new group: the server transforms a query when it is added.
 */
async function waitServerPermissions(deployed) {
  const deadline = Date.now() + WAIT_MS * 2;
  for (let attempt = 1; ; attempt++) {
    const s = new Scope('probe');
    try {
      const z = s.zero({userID: 'u1', label: `probe${attempt}`});
      const w = s.watch(z, {table: 'user'}, null);
      await waitUntil(() => w.resultType === 'complete', 'probe query to complete', WAIT_MS);
      if ((w.json.length > 0) === deployed) {
        debug(`server uses ${deployed ? 'the deployed' : 'no'} permissions (probe ${attempt})`);
        return;
      }
    } finally {
      await s.closeAll();
    }
    if (Date.now() > deadline) {
      throw new Fail(`the server does not ${deployed ? 'use the deployed permissions' : 'drop the permissions'} (probe read of "user")`);
    }
    await sleep(300);
  }
}

// ---------------------------------------------------------------------------
// Scenarios

const scenarios = [];
function scenario(name, fn, {needsPermissions = true} = {}) {
  scenarios.push({name, fn, needsPermissions});
}

const USERS = {u1: {sub: 'u1'}, u2: {sub: 'u2'}, u3: {sub: 'u3'}, anon: {}};

// a. Reads: every ad-hoc query, its related subqueries and its EXISTS subqueries
// are filtered by the select rules of the user's token; live upstream changes
// move rows in and out of what the user may read.
scenario('read-rules', async s => {
  const specs = {
    all: {table: 'issue', orderBy: [['id', 'asc']]},
    nested: {
      table: 'issue',
      orderBy: [['modified', 'desc']],
      related: [{rel: 'owner'}, {rel: 'comments', orderBy: [['created', 'asc']], related: [{rel: 'author'}]}],
    },
    byU3: {table: 'issue', exists: [{rel: 'comments', where: [['authorID', '=', 'u3']]}]},
    onU2Issues: {table: 'comment', exists: [{rel: 'issue', where: [['ownerID', '=', 'u2']]}], orderBy: [['created', 'desc']]},
    comments: {table: 'comment', related: [{rel: 'issue'}]},
    i06: {table: 'issue', where: [['id', '=', 'i06']], one: true},
    top3: {table: 'issue', orderBy: [['modified', 'desc']], limit: 3},
    users: {table: 'user'},
  };
  const views = {};
  for (const [u, ctx] of Object.entries(USERS)) {
    const z = s.zero({userID: u === 'anon' ? undefined : u, label: u});
    views[u] = {};
    for (const [name, spec] of Object.entries(specs)) {
      views[u][name] = s.watch(z, spec, ctx, {label: `${u} ${name}`});
    }
  }
  await s.convergeAll();

  // The seed data makes the rules matter (see seed.sql).
  const ids = w => (Array.isArray(w.json) ? w.json.map(r => r.id) : w.json?.id);
  const has = (w, id) => ids(w).includes(id);
  check(has(views.u2.all, 'i03') && has(views.u2.all, 'i02'), 'u2 does not read i02/i03 through its comments (EXISTS rule)');
  check(!has(views.u2.all, 'i06') && !has(views.u2.all, 'i08'), 'u2 reads i06/i08');
  check(ids(views.anon.all).join() === 'i01,i04,i07,i10', `anonymous reads ${ids(views.anon.all)}`);
  const u2i03 = views.u2.nested.json.find(i => i.id === 'i03');
  check(u2i03?.comments?.map(c => c.id).join() === 'c03', `u2's related comments of i03: ${short(u2i03?.comments)}`);
  check(!has(views.u2.byU3, 'i03') && has(views.u2.byU3, 'i09'), `u2 whereExists(comments by u3): ${ids(views.u2.byU3)}`);
  // c06/c08 (on u2's private i05/i09) only for readers of those issues' comments.
  check(has(views.u2.onU2Issues, 'c08') && !has(views.u1.onU2Issues, 'c08'), `whereExists(issue owned by u2): u1 ${ids(views.u1.onU2Issues)}`);
  check(views.u1.i06.json === null && views.u3.i06.json?.id === 'i06', 'one(i06): u1 reads it or u3 does not');
  check(views.anon.users.json.length === 4, 'users not readable by everyone');

  // Live: rows enter and leave what a user may read.
  const cid = `${RUN}-rr-c`;
  try {
    await sql`UPDATE issue SET public = true WHERE id = 'i06'`;
    await s.convergeAll();
    check(has(views.u1.all, 'i06') && views.u1.i06.json?.id === 'i06', 'i06 made public not readable by u1');
    await sql`INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES (${cid}, 'i08', 'u2', 'Bob joins', ${stamp()})`;
    await s.convergeAll();
    check(has(views.u2.all, 'i08'), 'u2 does not read i08 after commenting');
    await sql`DELETE FROM comment WHERE id = 'c10'`;
    await sql`UPDATE issue SET "ownerID" = 'u3' WHERE id = 'i05'`;
    await s.convergeAll();
    check(!has(views.u2.all, 'i02'), 'u2 still reads i02 after its comment was deleted');
  } finally {
    await sql`UPDATE issue SET public = false WHERE id = 'i06'`;
    await sql`UPDATE issue SET "ownerID" = 'u2' WHERE id = 'i05'`;
    await sql`DELETE FROM comment WHERE id = ${cid}`;
    await sql`INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES ('c10', 'i02', 'u2', 'Bob peeks at the notes', 2090) ON CONFLICT DO NOTHING`;
  }
  await s.convergeAll();
});

// b. CRUD writes: allowed ones reach Postgres; refused ones are skipped by the
// server (the LMID still advances, no error frame) and the client's optimistic
// change is rolled back by the next poke.
scenario('crud', async s => {
  const z = s.zero({userID: 'u1', label: 'u1'});
  const ctx = USERS.u1;
  const X1 = `${RUN}-x1`;
  const X2 = `${RUN}-x2`;
  const X3 = `${RUN}-x3`;
  const bobOnI04 = `${RUN}-cb`;
  const C1 = `${RUN}-c1`;
  const C2 = `${RUN}-c2`;
  const C3 = `${RUN}-c3`;
  const U = `${RUN}-u`;
  await sql`INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES (${bobOnI04}, 'i04', 'u2', 'Bob on his own bug', ${stamp()})`;
  const issueIDs = [X1, X2, X3, 'i01', 'i04', 'i06'];
  const issues = s.watch(z, {table: 'issue', where: [['id', 'IN', issueIDs]], related: [{rel: 'comments'}]}, ctx, {label: 'issues'});
  const comments = s.watch(z, {table: 'comment', where: [['issueID', 'IN', issueIDs]]}, ctx, {label: 'comments'});
  const users = s.watch(z, {table: 'user'}, ctx, {label: 'users'});
  const all = [issues, comments, users];
  await s.convergeAll(all);
  await waitConnected(z, 'u1');

  const row = (w, id) => (w.json ?? []).find(r => r.id === id);
  const pgIssue = async id => (await sql`SELECT id, title, "ownerID", public FROM issue WHERE id = ${id}`)[0];
  const pgComment = async id => (await sql`SELECT id, "authorID" FROM comment WHERE id = ${id}`)[0];

  try {
    // Allowed: insert, update, upsert (insert path and update path) of own issues.
    await crud(s, z, 'insert own issue', m => m.issue.insert({id: X1, title: 'mine', ownerID: 'u1', public: false, modified: stamp()}), {
      w: issues,
      optimistic: j => j.some(r => r.id === X1),
    });
    check((await pgIssue(X1))?.title === 'mine', 'allowed insert not in Postgres');
    await s.convergeAll(all);
    await crud(s, z, 'update own issue', m => m.issue.update({id: X1, title: 'mine, renamed'}));
    check((await pgIssue(X1))?.title === 'mine, renamed', 'allowed update not in Postgres');
    await crud(s, z, 'upsert (insert) own issue', m => m.issue.upsert({id: X2, title: 'upserted', ownerID: 'u1', public: true, modified: stamp()}));
    check((await pgIssue(X2))?.title === 'upserted', 'allowed upsert (insert) not in Postgres');
    await crud(s, z, 'upsert (update) own issue', m => m.issue.upsert({id: X2, title: 'upserted again', ownerID: 'u1', public: true, modified: stamp()}));
    check((await pgIssue(X2))?.title === 'upserted again', 'allowed upsert (update) not in Postgres');
    await s.convergeAll(all);

    // Refused: insert for another owner (insert rule).
    await crud(s, z, 'insert issue owned by u2', m => m.issue.insert({id: X3, title: 'not mine', ownerID: 'u2', public: true, modified: stamp()}), {
      w: issues,
      optimistic: j => j.some(r => r.id === X3),
    });
    check((await pgIssue(X3)) === undefined, 'refused insert reached Postgres');
    await s.convergeAll(all);
    check(!row(issues, X3), 'refused insert not rolled back on the client');

    // Refused: update of a readable issue owned by u2 (update.preMutation).
    await crud(s, z, "update u2's public issue", m => m.issue.update({id: 'i04', title: 'hijacked'}), {
      w: issues,
      optimistic: j => j.some(r => r.id === 'i04' && r.title === 'hijacked'),
    });
    check((await pgIssue('i04'))?.title === 'Bob public bug', 'refused update reached Postgres');
    await s.convergeAll(all);
    check(row(issues, 'i04')?.title === 'Bob public bug', 'refused update not rolled back on the client');

    // Refused: giving an own issue away (update.postMutation).
    await crud(s, z, 'give own issue to u2', m => m.issue.update({id: X1, ownerID: 'u2'}), {
      w: issues,
      optimistic: j => j.some(r => r.id === X1 && r.ownerID === 'u2'),
    });
    check((await pgIssue(X1))?.ownerID === 'u1', 'refused postMutation update reached Postgres');
    await s.convergeAll(all);

    // Comments: insert on a public issue (allowed), on a private unreadable
    // issue (refused: the rule's EXISTS), as somebody else (refused).
    await crud(s, z, 'comment on public i04', m => m.comment.insert({id: C1, issueID: 'i04', authorID: 'u1', body: 'ok', created: stamp()}));
    check((await pgComment(C1))?.authorID === 'u1', 'allowed comment not in Postgres');
    await crud(s, z, "comment on u3's private i06", m => m.comment.insert({id: C2, issueID: 'i06', authorID: 'u1', body: 'no', created: stamp()}), {
      w: comments,
      optimistic: j => j.some(r => r.id === C2),
    });
    check((await pgComment(C2)) === undefined, 'refused comment (EXISTS rule) reached Postgres');
    await crud(s, z, 'comment as u2', m => m.comment.insert({id: C3, issueID: X1, authorID: 'u2', body: 'forged', created: stamp()}), {
      w: comments,
      optimistic: j => j.some(r => r.id === C3),
    });
    check((await pgComment(C3)) === undefined, 'forged comment reached Postgres');
    await s.convergeAll(all);
    check(!row(comments, C2) && !row(comments, C3), 'refused comments not rolled back on the client');

    // Deletes: u2's comment on u1's issue (allowed: issue owner), u2's comment on
    // u2's issue (refused), own issue (allowed).
    await crud(s, z, "delete u2's comment c01 on own i01", m => m.comment.delete({id: 'c01'}));
    check((await pgComment('c01')) === undefined, 'allowed delete (onOwnIssue) not in Postgres');
    await crud(s, z, "delete u2's comment on u2's i04", m => m.comment.delete({id: bobOnI04}), {
      w: comments,
      optimistic: j => !j.some(r => r.id === bobOnI04),
    });
    check((await pgComment(bobOnI04))?.authorID === 'u2', 'refused delete reached Postgres');
    await s.convergeAll(all);
    check(row(comments, bobOnI04), 'refused delete not rolled back on the client');
    await crud(s, z, 'delete own issue', m => m.issue.delete({id: X2}));
    check((await pgIssue(X2)) === undefined, 'allowed delete not in Postgres');

    // No write rules at all for `user`: refused.
    await crud(s, z, 'insert a user', m => m.user.insert({id: U, name: 'Mallory'}), {
      w: users,
      optimistic: j => j.some(r => r.id === U),
    });
    check((await sql`SELECT 1 FROM "user" WHERE id = ${U}`).length === 0, 'user insert reached Postgres');
    await s.convergeAll(all);

    // Every mutation, refused or not, advanced the LMID by one, and no error
    // frame was sent for the refusals.
    const n = s.entry(z).mutations;
    check((await upstreamLMID(z)) === n, `lastMutationID upstream is not ${n}`);
    check(wireOf(z.clientID).errors.length === 0, () => `error frames: ${short(wireOf(z.clientID).errors)}`);
  } finally {
    await sql`DELETE FROM issue WHERE id IN (${X1}, ${X2}, ${X3})`;
    await sql`DELETE FROM comment WHERE id IN (${C1}, ${C2}, ${C3}, ${bobOnI04})`;
    await sql`DELETE FROM "user" WHERE id = ${U}`;
    await sql`INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES ('c01', 'i01', 'u2', 'Bob on the roadmap', 2000) ON CONFLICT DO NOTHING`;
  }
});

// b'. CRUD ops the server cannot run: an update of a row that does not exist
// (no pre-mutation row) and an insert of an existing primary key. zero-cache
// re-runs the mutation in "error mode" (only the LMID bump) and sends a
// transient `["error",{"kind":"MutationFailed",…}]` without closing; the
// client logs it, drops the connection, reconnects (a few seconds later) and
// re-pushes; the already-processed mutation is skipped.
scenario('crud-errors', async s => {
  const z = s.zero({userID: 'u1', label: 'u1'});
  const e = s.entry(z);
  const missing = `${RUN}-missing`;
  const issues = s.watch(z, {table: 'issue', where: [['id', 'IN', ['i01', missing]]]}, USERS.u1, {label: 'issues'});
  await s.convergeAll();
  await waitConnected(z, 'u1');
  const errors = wireOf(z.clientID).errors;

  await crud(s, z, 'update of a missing row', m => m.issue.update({id: missing, title: 'ghost'}));
  check(errors.length === 1, () => `update of a missing row: error frames ${short(errors)}`);
  check(errors[0].kind === 'MutationFailed' && errors[0].origin === 'zeroCache', () => `update of a missing row: ${short(errors[0])}`);
  debug(`update of a missing row: ${short(errors[0])}`);
  check((await sql`SELECT 1 FROM issue WHERE id = ${missing}`).length === 0, 'update of a missing row created it');
  await waitConnected(z, 'u1 after MutationFailed');

  await crud(s, z, 'insert of an existing primary key', m => m.issue.insert({id: 'i01', title: 'duplicate', ownerID: 'u1', public: true, modified: 1}));
  check(errors.length === 2, () => `insert of an existing row: error frames ${short(errors)}`);
  check(errors[1].kind === 'MutationFailed' && errors[1].origin === 'zeroCache', () => `insert of an existing row: ${short(errors[1])}`);
  debug(`insert of an existing row: ${short(errors[1])}`);
  const [i01] = await sql`SELECT title FROM issue WHERE id = 'i01'`;
  check(i01?.title === 'Public roadmap', `insert of an existing row changed it: ${short(i01)}`);
  e.expectedErrors = 2;
  await waitConnected(z, 'u1 after MutationFailed');
  await s.converge(issues);
});

// d. Tokens the server must refuse. The client ends in `needs-auth` after an
// `error` frame; `kind` is what zero-cache 1.9.0 sends (checked), `message`
// the start of its message text (recorded, not checked).
scenario('tokens', async s => {
  const now = Math.floor(Date.now() / 1000);
  const variants = [
    {
      name: 'bad-signature',
      token: tamperSignature(tokenFor('u1')),
      kind: 'AuthInvalidated',
      message: 'Failed to decode auth token: JWSSignatureVerificationFailed: signature verification failed',
    },
    {
      name: 'expired',
      token: signHS256({alg: 'HS256', typ: 'JWT'}, {sub: 'u1', iat: now - 7200, exp: now - 3600}, AUTH_SECRET),
      kind: 'AuthInvalidated',
      message: 'Failed to decode auth token: JWTExpired: "exp" claim timestamp check failed',
    },
    {
      name: 'wrong-key',
      token: mintToken('u1', {secret: `${AUTH_SECRET}-but-not-quite`}),
      kind: 'AuthInvalidated',
      message: 'Failed to decode auth token: JWSSignatureVerificationFailed: signature verification failed',
    },
    {
      name: 'wrong-sub',
      token: tokenFor('u2'),
      kind: 'AuthInvalidated',
      message: 'Failed to decode auth token: JWTClaimValidationFailed: unexpected "sub" claim value',
    },
    {
      name: 'not-a-jwt',
      token: 'not-a-jwt',
      kind: 'AuthInvalidated',
      message: 'Failed to decode auth token: JWSInvalid: Invalid Compact JWS',
    },
  ];
  const clients = [];
  for (const v of variants) {
    const z = s.zero({userID: 'u1', token: v.token, label: v.name});
    const e = s.entry(z);
    e.expectConnected = false;
    const w = s.watch(z, {table: 'issue'}, null, {label: `${v.name} issues`});
    clients.push({v, z, e, w});
  }
  // Every variant is checked; the problems of all of them are reported together.
  const problems = [];
  for (const {v, z, e, w} of clients) {
    try {
      await waitUntil(
        () => connectionState(z).name === 'needs-auth',
        () => `${v.name}: connection state needs-auth (now ${short(connectionState(z))}, error frames ${short(wireOf(z.clientID).errors)})`,
      );
      const errors = wireOf(z.clientID).errors;
      e.expectedErrors = errors.length;
      debug(`${v.name}: ${short({errors, state: connectionState(z), closes: wireOf(z.clientID).sockets.map(x => x.closeCode)}, 600)}`);
      check(errors.length >= 1, `${v.name}: needs-auth without an error frame`);
      const [err] = errors;
      check(err.kind === v.kind, `${v.name}: error kind ${short(err)}, want ${v.kind}`);
      check(err.origin === 'zeroCache', `${v.name}: error origin ${short(err)}`);
      // The message is informational (the client shows it as the needs-auth
      // reason); only the kind is checked. zero-cache's text is in `v.message`.
      check(typeof err.message === 'string' && err.message.length > 0, `${v.name}: error without a message`);
      const reason = connectionState(z).reason;
      check(reason?.type === 'zero-cache' && reason?.reason === err.message, `${v.name}: needs-auth reason ${short(reason)}`);
      if (!err.message.startsWith(v.message)) {
        debug(`${v.name}: message differs from zero-cache's: ${short(err.message)} vs ${short(v.message)}`);
      }
      check(w.resultType !== 'complete' && Array.isArray(w.json) && w.json.length === 0, `${v.name}: rows or completion with a refused token: ${short(w.json)}`);
      // zero-cache sends the error frame right after the upgrade (no `connected`
      // frame first) and closes the socket with code 3000, reason = the message.
      const sock = wireOf(z.clientID).sockets[0];
      await waitUntil(() => sock.closeCode !== undefined, `${v.name}: the socket to close`);
      check(sock.closeCode === 3000, `${v.name}: close code ${sock.closeCode}, want 3000`);
      check(sock.closeReason === err.message, `${v.name}: close reason ${short(sock.closeReason)}`);
    } catch (err) {
      if (!(err instanceof Fail)) {
        throw err;
      }
      problems.push(err.message);
    }
  }
  check(problems.length === 0, () => problems.join('; '));
  // They stay in needs-auth (no reconnect loop).
  await sleep(1500);
  for (const {v, z, w} of clients) {
    check(connectionState(z).name === 'needs-auth', `${v.name}: state moved on by itself: ${short(connectionState(z))}`);
    check(Array.isArray(w.json) && w.json.length === 0, `${v.name}: rows leaked: ${short(w.json)}`);
  }
  // A valid token then resumes syncing with u1's rules.
  const {z, e, w} = clients.find(c => c.v.name === 'expired');
  e.expectConnected = true;
  w.expect = () => oracle({table: 'issue'}, USERS.u1);
  await withTimeout(z.connection.connect({auth: tokenFor('u1')}), WAIT_MS, 'connect with a valid token');
  await waitConnected(z, 'client after re-auth');
  await s.converge(w);
});

// e. Property: random rows and random queries against the `doc`/`share` rules
// (owner, open level, EXISTS share, admin claim), for several users.
scenario('property', async s => {
  const rnd = prng(SEED);
  const batch = `${RUN}-p`;
  const owners = ['u1', 'u2', 'u3', 'u4', 'u9'];
  const titles = [null, 'alpha', 'beta', 'Beta', 'gamma', 'Ω'];
  const docs = [];
  const shares = [];
  let seq = 0;
  const newDoc = () => ({
    id: `${batch}-d${String(seq++).padStart(3, '0')}`,
    batch,
    ownerID: rnd.pick(owners),
    level: rnd.int(4),
    archived: rnd.chance(0.3),
    title: rnd.pick(titles),
  });
  const shareTargets = [...owners, 'everyone'];
  const newShare = () => ({id: `${batch}-s${String(seq++).padStart(3, '0')}`, batch, docID: rnd.pick(docs).id, userID: rnd.pick(shareTargets)});
  for (let i = 0; i < 40; i++) {
    docs.push(newDoc());
  }
  for (let i = 0; i < 30; i++) {
    shares.push(newShare());
  }
  await sql`INSERT INTO doc ${sql(docs)}`;
  await sql`INSERT INTO share ${sql(shares)}`;
  s.cleanup.push(async () => {
    await sql`DELETE FROM share WHERE batch = ${batch}`;
    await sql`DELETE FROM doc WHERE batch = ${batch}`;
  });

  const randomConds = () => {
    const out = [['batch', '=', batch]];
    const n = rnd.int(3);
    for (let i = 0; i < n; i++) {
      switch (rnd.int(6)) {
        case 0:
          out.push(['level', rnd.pick(['=', '!=', '<', '<=', '>', '>=']), rnd.int(4)]);
          break;
        case 1:
          out.push(['archived', '=', rnd.chance(0.5)]);
          break;
        case 2:
          out.push(['ownerID', '=', rnd.pick(owners)]);
          break;
        case 3:
          out.push(['ownerID', 'IN', [rnd.pick(owners), rnd.pick(owners)]]);
          break;
        case 4:
          out.push(['title', rnd.pick(['IS', 'IS NOT']), null]);
          break;
        default:
          out.push(['title', rnd.pick(['=', '>']), rnd.pick(titles.filter(t => t !== null))]);
      }
    }
    return out;
  };
  const randomSpec = () => {
    const spec = {table: 'doc', where: randomConds()};
    if (rnd.chance(0.4)) {
      const e = {rel: 'shares'};
      if (rnd.chance(0.6)) {
        e.where = [['userID', '=', rnd.pick(shareTargets)]];
      }
      spec.exists = [e];
    }
    if (rnd.chance(0.7)) {
      spec.orderBy = [[rnd.pick(['level', 'title', 'ownerID', 'archived', 'id']), rnd.pick(['asc', 'desc'])]];
    }
    if (rnd.chance(0.5)) {
      spec.limit = rnd.pick([1, 3, 7]);
    }
    if (rnd.chance(0.5)) {
      spec.related = [{rel: 'shares', orderBy: rnd.chance(0.5) ? [['userID', 'asc']] : undefined}];
      if (rnd.chance(0.5)) {
        spec.related.push({rel: 'owner'});
      }
    }
    return spec;
  };

  const readers = {u1: {sub: 'u1'}, u2: {sub: 'u2'}, u4: {sub: 'u4', role: 'admin'}, anon: {}};
  const views = [];
  for (const [u, ctx] of Object.entries(readers)) {
    const z = s.zero({userID: u === 'anon' ? undefined : u, label: u});
    // A fixed sanity query per user, then random ones.
    views.push(s.watch(z, {table: 'doc', where: [['batch', '=', batch]], related: [{rel: 'shares'}]}, ctx, {label: `${u} all docs`}));
    views.push(s.watch(z, {table: 'share', where: [['batch', '=', batch]], related: [{rel: 'doc'}]}, ctx, {label: `${u} all shares`}));
    for (let i = 0; i < 5; i++) {
      const spec = randomSpec();
      views.push(s.watch(z, spec, ctx, {label: `${u} #${i} ${describeSpec(spec)}`}));
    }
  }
  debug(`property: seed ${SEED}, ${views.length} views`);
  await s.convergeAll(views);
  debug(`property: rows per view ${views.map(v => (Array.isArray(v.json) ? v.json.length : v.json ? 1 : 0)).join(' ')}`);
  // The rules must have mattered: each non-admin user reads fewer docs than the admin.
  const count = label => views.find(v => v.label === label).json.length;
  check(count('u4 all docs') === docs.length, `admin reads ${count('u4 all docs')} of ${docs.length} docs`);
  check(count('anon all docs') < count('u1 all docs') && count('u1 all docs') < docs.length, 'docs rules filtered nothing');
  // A doc readable by u1 only because it is published: its `everyone` share was
  // read by the rule on the server, and must not have reached u1's store (u1's
  // `all shares` view would show it: client views run over the whole store).
  const u1Docs = views.find(v => v.label === 'u1 all docs').json;
  const published = u1Docs.filter(d => d.ownerID !== 'u1' && !(d.level <= 1 && !d.archived) && d.shares.length === 0);
  check(published.length > 0, 'no doc readable by u1 only through a hidden `everyone` share (change ZC_E2E_SEED)');

  // Random upstream changes; every view follows.
  for (let round = 0; round < PROPERTY_ROUNDS; round++) {
    await sql.begin(async tx => {
      for (let k = 0; k < 6; k++) {
        const d = rnd.pick(docs);
        switch (rnd.int(6)) {
          case 0:
            await tx`UPDATE doc SET level = ${rnd.int(4)} WHERE id = ${d.id}`;
            break;
          case 1:
            await tx`UPDATE doc SET archived = NOT archived WHERE id = ${d.id}`;
            break;
          case 2:
            await tx`UPDATE doc SET "ownerID" = ${rnd.pick(owners)}, title = ${rnd.pick(titles)} WHERE id = ${d.id}`;
            break;
          case 3: {
            const sh = newShare();
            shares.push(sh);
            await tx`INSERT INTO share ${tx(sh)}`;
            break;
          }
          case 4: {
            const sh = rnd.pick(shares);
            await tx`DELETE FROM share WHERE id = ${sh.id}`;
            break;
          }
          default: {
            const nd = newDoc();
            docs.push(nd);
            await tx`INSERT INTO doc ${tx(nd)}`;
          }
        }
      }
    });
    await s.convergeAll(views);
  }
  await sql`DELETE FROM share WHERE batch = ${batch}`;
  await sql`DELETE FROM doc WHERE batch = ${batch}`;
  await s.convergeAll(views);
});

// c. No permissions deployed (the upstream permissions row is NULL): ad-hoc
// queries complete with no rows; CRUD writes are skipped but the LMID advances.
// If permissions are deployed when it starts, it sets the row to NULL and puts
// it back at the end: the server reloads permissions when the replicated row
// changes, and re-hydrates the queries of connected groups (checked).
scenario(
  'noperms',
  async s => {
    const saved = await deployedPermissions();
    if (saved !== null) {
      debug('noperms: clearing the deployed permissions for this scenario');
      await sql`UPDATE ${sql(APP_ID)}.permissions SET permissions = NULL`;
    }
    const X = `${RUN}-np`;
    let restored = false;
    try {
      await waitServerPermissions(false);
      const z = s.zero({userID: 'u1', label: 'u1'});
      const none = {perms: false};
      const views = [
        s.watch(z, {table: 'issue'}, USERS.u1, {...none, label: 'issues'}),
        s.watch(z, {table: 'issue', related: [{rel: 'comments'}]}, USERS.u1, {...none, label: 'issues+comments'}),
        s.watch(z, {table: 'comment', exists: [{rel: 'issue'}]}, USERS.u1, {...none, label: 'comments with issue'}),
        s.watch(z, {table: 'user'}, USERS.u1, {...none, label: 'users'}),
      ];
      await s.convergeAll(views);
      for (const w of views) {
        check(Array.isArray(w.json) && w.json.length === 0 && w.resultType === 'complete', `${w.label}: ${short(w.json)}`);
      }
      const mine = views[0];
      await crud(s, z, 'insert without permissions', m => m.issue.insert({id: X, title: 'nope', ownerID: 'u1', public: true, modified: stamp()}), {
        w: mine,
        optimistic: j => j.some(r => r.id === X),
      });
      check((await sql`SELECT 1 FROM issue WHERE id = ${X}`).length === 0, 'insert without permissions reached Postgres');
      await crud(s, z, 'update without permissions', m => m.issue.update({id: 'i02', title: 'nope'}));
      await crud(s, z, 'delete without permissions', m => m.comment.delete({id: 'c05'}));
      const [i02] = await sql`SELECT title FROM issue WHERE id = 'i02'`;
      check(i02?.title === 'Alice private notes', 'update without permissions reached Postgres');
      check((await sql`SELECT 1 FROM comment WHERE id = 'c05'`).length === 1, 'delete without permissions reached Postgres');
      await s.convergeAll(views);
      check(mine.json.length === 0, 'optimistic insert not rolled back');
      check(wireOf(z.clientID).errors.length === 0, () => `error frames: ${short(wireOf(z.clientID).errors)}`);

      if (saved !== null) {
        // Putting the permissions back: zero-cache resets the pipelines of every
        // client group when the replicated permissions row changes, so the
        // views of this (still connected) client re-hydrate with the rules.
        await sql`UPDATE ${sql(APP_ID)}.permissions SET permissions = ${sql.json(saved)}`;
        restored = true;
        for (const w of views) {
          w.perms = true;
          w.expect = () => oracle(w.spec, w.ctx, true);
        }
        await s.convergeAll(views);
        check(views[3].json.length > 0, 'users not readable after the permissions came back');
      }
    } finally {
      await sql`DELETE FROM issue WHERE id = ${X}`;
      if (saved !== null && !restored) {
        await sql`UPDATE ${sql(APP_ID)}.permissions SET permissions = ${sql.json(saved)}`;
      }
      if (saved !== null) {
        await waitServerPermissions(true);
      }
    }
  },
  {needsPermissions: false},
);

// ---------------------------------------------------------------------------
// Runner

async function main() {
  const unknown = [...FILTER, ...SKIP].filter(f => !scenarios.some(s => s.name === f));
  if (unknown.length) {
    console.error(`scenarios: unknown scenario(s) ${unknown.join(', ')}; known: ${scenarios.map(s => s.name).join(', ')}`);
    process.exit(2);
  }
  await waitForPort(cacheURL, Number(env.ZC_E2E_STARTUP_MS ?? 60_000));
  await sql`SELECT 1`;
  const selected = scenarios.filter(({name}) => (!FILTER.length || FILTER.includes(name)) && !SKIP.includes(name));

  const deployed = (await deployedPermissions()) !== null;
  debug(`permissions ${deployed ? 'deployed' : 'not deployed'} upstream`);
  let permsLive = false;
  let passed = 0;
  let failed = 0;
  for (const {name, fn, needsPermissions} of selected) {
    const scope = new Scope(name);
    currentScenario = name;
    const t0 = Date.now();
    try {
      await withTimeout(
        (async () => {
          if (needsPermissions) {
            check(deployed, `no permissions deployed upstream (${APP_ID}.permissions is NULL): run zero-deploy-permissions first`);
            if (!permsLive) {
              await waitServerPermissions(true);
              permsLive = true;
            }
          }
          await fn(scope);
          await scope.verifyAll();
        })(),
        SCENARIO_TIMEOUT_MS,
        'scenario',
      );
      console.log(`SCENARIO ${name} ok`);
      passed++;
    } catch (e) {
      const reason = e instanceof Fail ? e.message : `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
      console.log(`SCENARIO ${name} FAIL ${reason.replace(/\s+/g, ' ')}`);
      if (!(e instanceof Fail)) {
        console.error(e);
      }
      scope.dumpLogs();
      failed++;
    } finally {
      console.error(`  (${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
      await scope.closeAll();
    }
  }
  console.log(`e2e-legacy: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  console.error('scenarios: setup failed:', e);
} finally {
  await sql.end({timeout: 5}).catch(() => {});
  framesFile?.end();
}
process.exit(ok ? 0 : 1);
