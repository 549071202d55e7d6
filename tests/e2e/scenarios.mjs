// End-to-end scenarios: the real @rocicorp/zero 1.9.0 client (in Node, `ws` as
// its WebSocket) against a Zero sync server, with the upstream Postgres as the
// oracle. See README.md.
//
// Environment:
//   ZC_E2E_CACHE_URL        sync server, http://host:port (the client's cacheURL)   [required]
//   ZC_E2E_PG_URL           upstream Postgres URL (same DB the server replicates)   [required]
//   ZC_E2E_SCENARIO         optional filter: comma-separated scenario names
//   ZC_E2E_TIMEOUT_MS       per-scenario timeout (default 90000)
//   ZC_E2E_WAIT_MS          max wait for one convergence / expected event (default 20000)
//   ZC_E2E_STARTUP_MS       max wait for the sync server's port to accept connections (default 60000)
//   ZC_E2E_UPSTREAM_SCHEMA  shard schema holding clients/mutations (default zero_0)
//   ZC_E2E_VERBOSE=1        progress and client logs on stderr
//   ZC_E2E_FRAMES=<file>    append every frame of the Zero clients (JSON lines)
//
// Output: one line `SCENARIO <name> ok` or `SCENARIO <name> FAIL <reason>` per
// scenario on stdout, then `e2e: N passed, M failed`. Exit code 1 if any failed.
import fs from 'node:fs';
import net from 'node:net';
import postgres from 'postgres';
import WS from 'ws';
import {Zero} from '@rocicorp/zero';
import {
  FAILING_MUTATOR_MESSAGE,
  REJECTED_QUERY_MESSAGE,
  mutators,
  queries,
  schema,
} from './schema.mjs';

// ---------------------------------------------------------------------------
// Configuration

const env = process.env;
const CACHE_URL = env.ZC_E2E_CACHE_URL;
const PG_URL = env.ZC_E2E_PG_URL;
if (!CACHE_URL || !PG_URL) {
  console.error('scenarios: ZC_E2E_CACHE_URL and ZC_E2E_PG_URL are required');
  process.exit(2);
}
const FILTER = (env.ZC_E2E_SCENARIO ?? '')
  .split(',')
  .map(s => s.trim())
  .filter(Boolean);
const SCENARIO_TIMEOUT_MS = Number(env.ZC_E2E_TIMEOUT_MS ?? 90_000);
const WAIT_MS = Number(env.ZC_E2E_WAIT_MS ?? 20_000);
const UPSTREAM_SCHEMA = env.ZC_E2E_UPSTREAM_SCHEMA ?? 'zero_0';
const VERBOSE = env.ZC_E2E_VERBOSE === '1';
// Unique per run, so a database can be reused for several runs.
const RUN = Date.now().toString(36);

const cacheURL = new URL(CACHE_URL);
const wsBase = `${cacheURL.protocol === 'https:' ? 'wss:' : 'ws:'}//${cacheURL.host}${cacheURL.pathname.replace(/\/$/, '')}`;

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
// WebSocket seen by the client: `ws`, recording every URL it opens.

const openedSockets = [];
const framesFile = env.ZC_E2E_FRAMES ? fs.createWriteStream(env.ZC_E2E_FRAMES, {flags: 'a'}) : undefined;
let currentScenario = '';
function logFrame(clientID, dir, data) {
  framesFile?.write(JSON.stringify({t: Date.now(), scenario: currentScenario, clientID, dir, data}) + '\n');
}
class RecordingWebSocket extends WS {
  constructor(url, protocols) {
    super(url, protocols);
    const u = new URL(String(url));
    this.clientID = u.searchParams.get('clientID');
    const entry = {url: String(url), at: Date.now(), ws: this, closeCode: undefined};
    openedSockets.push(entry);
    this.on('close', code => {
      entry.closeCode = code;
    });
    if (framesFile) {
      const p = Array.isArray(protocols) ? protocols[0] : protocols;
      let secProtocol = p;
      try {
        secProtocol = JSON.parse(Buffer.from(decodeURIComponent(p), 'base64').toString('utf8'));
      } catch {
        // keep it raw
      }
      logFrame(this.clientID, 'open', {url: String(url), secProtocol});
      this.on('message', (d, isBinary) => logFrame(this.clientID, 'down', isBinary ? {binary: d.length} : d.toString('utf8')));
      this.on('close', (code, reason) => logFrame(this.clientID, 'close', {code, reason: reason.toString()}));
    }
  }
  send(data, ...rest) {
    logFrame(this.clientID, 'up', String(data));
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = RecordingWebSocket;

function connectURLsOf(clientID) {
  return openedSockets
    .map(s => new URL(s.url))
    .filter(u => u.searchParams.get('clientID') === clientID);
}

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
    throw new Fail(message);
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

// ---------------------------------------------------------------------------
// Expected results: each named query of schema.mjs, computed with SQL.
// Zero orders by the query's orderBy followed by the primary key; strings
// compare by code point, which is COLLATE "C" in a UTF-8 database.

const issueCols = sql`id, title, open, modified, "creatorID", description`;

async function userRow(id) {
  const [u] = await sql`SELECT id, name FROM "user" WHERE id = ${id}`;
  return u;
}

async function commentsOf(issueID, withAuthor) {
  const rows = await sql`
    SELECT id, "issueID", "authorID", body, created FROM comment
    WHERE "issueID" = ${issueID} ORDER BY created ASC, id COLLATE "C" ASC`;
  if (!withAuthor) {
    return [...rows];
  }
  return Promise.all(rows.map(async c => ({...c, author: await userRow(c.authorID)})));
}

async function labelsOf(issueID) {
  return [
    ...(await sql`
      SELECT l.id, l.name FROM "issueLabel" il JOIN label l ON l.id = il."labelID"
      WHERE il."issueID" = ${issueID}
      ORDER BY il."labelID" COLLATE "C" ASC`),
  ];
}

const expected = {
  openIssues: limit => async () => {
    const rows = await sql`
      SELECT ${issueCols} FROM issue WHERE open
      ORDER BY modified DESC, id COLLATE "C" ASC LIMIT ${limit}`;
    return Promise.all(
      rows.map(async i => ({...i, creator: await userRow(i.creatorID), comments: await commentsOf(i.id, false)})),
    );
  },
  issuesWithComments: () => async () => [
    ...(await sql`
      SELECT ${issueCols} FROM issue i
      WHERE EXISTS (SELECT 1 FROM comment c WHERE c."issueID" = i.id)
      ORDER BY id COLLATE "C" ASC`),
  ],
  issueByID: id => async () => {
    const [i] = await sql`SELECT ${issueCols} FROM issue WHERE id = ${id}`;
    if (!i) {
      return undefined;
    }
    return {...i, creator: await userRow(i.creatorID), comments: await commentsOf(i.id, true), labels: await labelsOf(i.id)};
  },
  allUsers: () => async () => [...(await sql`SELECT id, name FROM "user" ORDER BY id COLLATE "C" ASC`)],
};

// ---------------------------------------------------------------------------
// Scope: the clients, views and raw sockets of one scenario (closed at its end).

const clientSchema = buildClientSchema(schema);

/** The clientSchema the 1.9.0 client sends in initConnection (tables/columns/PK sorted). */
function buildClientSchema(s) {
  const tables = {};
  for (const name of Object.keys(s.tables).sort()) {
    const t = s.tables[name];
    const columns = {};
    for (const c of Object.keys(t.columns).sort()) {
      columns[t.columns[c].serverName ?? c] = {type: t.columns[c].type};
    }
    tables[t.serverName ?? name] = {
      columns,
      primaryKey: t.primaryKey.map(k => t.columns[k].serverName ?? k).sort(),
    };
  }
  return {tables};
}

class Scope {
  constructor(name) {
    this.name = name;
    this.zeros = [];
    this.watches = [];
    this.sockets = [];
    this.events = [];
  }

  /** A new Zero client. Same storageKey + userID ⇒ same (in-memory) client group. */
  zero({storageKey, userID = 'u1', auth = `tok:${userID}`, label = storageKey}) {
    const logs = [];
    const events = this.events;
    const z = new Zero({
      cacheURL: CACHE_URL,
      schema,
      mutators,
      userID,
      auth,
      storageKey,
      kvStore: 'mem',
      context: {location: 'client', userID},
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
    });
    this.zeros.push({z, label, logs, closed: false, expectConnected: true});
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
   * Materialize a query and track its latest state. `expect` (optional) computes
   * the same result from Postgres; it is checked by converge() and at the end.
   */
  watch(z, request, expect, label) {
    const w = {z, label, expect, json: null, resultType: 'unknown', error: undefined, updates: 0, destroyed: false};
    w.view = z.materialize(request);
    w.view.addListener((data, resultType, error) => {
      w.json = normalize(data);
      w.resultType = resultType;
      w.error = error;
      w.updates++;
    });
    this.watches.push(w);
    return w;
  }

  /** Waits until the view is `complete` and equal, row by row, to Postgres. */
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
      throw new Fail(
        `${w.label} did not converge with Postgres (resultType=${w.resultType}${w.error ? ' ' + short(w.error, 200) : ''}): ${diff}`,
      );
    }
    return w.json;
  }

  /** End-of-scenario check: every live view with an expectation matches Postgres. */
  async verifyAll() {
    for (const w of this.watches) {
      if (!w.destroyed && w.expect) {
        await this.converge(w);
      }
    }
    for (const e of this.zeros) {
      if (!e.closed && e.expectConnected) {
        const st = e.z.connection.state.current;
        check(st.name === 'connected', `${e.label}: connection state is ${short(st)} at the end`);
      }
    }
    check(this.events.length === 0, `unexpected client callbacks: ${short(this.events)}`);
  }

  async closeAll() {
    for (const s of this.sockets) {
      s.terminate();
    }
    await Promise.all(this.zeros.map(e => this.close(e.z)));
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

// ---------------------------------------------------------------------------
// Raw protocol socket (for malformed input)

function encodeSecProtocol(obj) {
  return encodeURIComponent(Buffer.from(JSON.stringify(obj), 'utf8').toString('base64'));
}

function rawSocket(scope, {clientID, clientGroupID, userID = 'u1', auth = `tok:${userID}`}) {
  const params = new URLSearchParams({
    clientID,
    clientGroupID,
    userID,
    baseCookie: '',
    ts: String(Math.floor(performance.now())),
    lmid: '0',
    wsid: `ws-${clientID}`,
  });
  const proto = encodeSecProtocol({
    initConnectionMessage: ['initConnection', {desiredQueriesPatch: [], clientSchema}],
    authToken: auth,
  });
  const ws = new WS(`${wsBase}/sync/v51/connect?${params}`, proto);
  scope.sockets.push(ws);
  const s = {ws, frames: [], closed: undefined, echoedProtocol: undefined};
  ws.on('upgrade', res => {
    s.echoedProtocol = res.headers['sec-websocket-protocol'];
  });
  ws.on('message', (data, isBinary) => {
    let msg;
    try {
      msg = isBinary ? {binary: data.length} : JSON.parse(data.toString('utf8'));
    } catch {
      msg = {unparsable: data.toString('utf8').slice(0, 200)};
    }
    s.frames.push(msg);
  });
  ws.on('close', (code, reason) => {
    s.closed = {code, reason: reason.toString()};
  });
  ws.on('error', err => {
    s.error = err.message;
  });
  s.sentProtocol = proto;
  return s;
}

// ---------------------------------------------------------------------------
// Scenarios

const scenarios = [];
function scenario(name, fn) {
  scenarios.push({name, fn});
}

// a. Hydration of named queries with related rows and an EXISTS filter.
scenario('hydrate', async s => {
  const z = s.zero({storageKey: `hydrate-${RUN}`});
  const open = s.watch(z, queries.openIssues({limit: 5}), expected.openIssues(5), 'openIssues(5)');
  const withComments = s.watch(z, queries.issuesWithComments(), expected.issuesWithComments(), 'issuesWithComments');
  const i07 = s.watch(z, queries.issueByID({id: 'i07'}), expected.issueByID('i07'), 'issueByID(i07)');
  const i10 = s.watch(z, queries.issueByID({id: 'i10'}), expected.issueByID('i10'), 'issueByID(i10)');
  const missing = s.watch(z, queries.issueByID({id: 'nope'}), expected.issueByID('nope'), 'issueByID(nope)');
  const users = s.watch(z, queries.allUsers(), expected.allUsers(), 'allUsers');
  for (const w of [open, withComments, i07, i10, missing, users]) {
    await s.converge(w);
  }
  // The comparisons above are only meaningful if the data exercises relations.
  check(open.json.length === 5, `openIssues(5) has ${open.json.length} rows`);
  check(open.json.some(i => i.comments.length > 0), 'openIssues: no issue with comments');
  check(open.json.some(i => i.creator), 'openIssues: no issue with a creator');
  check(withComments.json.length > 0, 'issuesWithComments is empty');
  check(i07.json?.comments?.length >= 2 && i07.json.comments.every(c => c.author), 'issueByID(i07): comments/authors missing');
  check(i10.json?.labels?.length === 2, 'issueByID(i10): labels via junction missing');
  check(missing.json === null, 'issueByID(nope) is not empty');
  await waitConnected(z, 'client');
});

// b. Upstream writes by another connection reach the client.
scenario('live', async s => {
  const z = s.zero({storageKey: `live-${RUN}`});
  const LIMIT = 3;
  const open = s.watch(z, queries.openIssues({limit: LIMIT}), expected.openIssues(LIMIT), 'openIssues(3)');
  const withComments = s.watch(z, queries.issuesWithComments(), expected.issuesWithComments(), 'issuesWithComments');
  const id = `${RUN}-live`;
  const one = s.watch(z, queries.issueByID({id}), expected.issueByID(id), `issueByID(${id})`);
  await s.converge(open);
  await s.converge(withComments);
  await s.converge(one);

  // INSERT: a new newest issue enters the window at the top.
  await sql`INSERT INTO issue (id, title, open, modified, "creatorID", description)
            VALUES (${id}, 'Live insert', true, ${stamp()}, 'u2', NULL)`;
  await s.converge(open);
  check(open.json[0].id === id, `inserted issue is not first: ${short(open.json.map(i => i.id))}`);
  await s.converge(one);

  // UPDATE of a row in the window.
  await sql`UPDATE issue SET title = 'Live update', description = 'now with text' WHERE id = ${id}`;
  await s.converge(open);
  check(open.json[0].title === 'Live update', 'title update not seen');
  await s.converge(one);

  // A related row changes: a comment on the top issue (also enters the EXISTS query).
  await sql`INSERT INTO comment (id, "issueID", "authorID", body, created)
            VALUES (${id + '-c1'}, ${id}, 'u3', 'first!', ${stamp()})`;
  await s.converge(open);
  await s.converge(withComments);
  check(withComments.json.some(i => i.id === id), 'issue with new comment not in issuesWithComments');
  await s.converge(one);

  // A row leaves the limit window and the next one enters.
  const before = await expected.openIssues(LIMIT + 1)();
  const leaving = before[0].id;
  const entering = before[LIMIT].id;
  await sql`UPDATE issue SET open = false WHERE id = ${leaving}`;
  await s.converge(open);
  check(!open.json.some(i => i.id === leaving), `${leaving} did not leave the window`);
  check(open.json.some(i => i.id === entering), `${entering} did not enter the window`);
  // ... and back: it re-enters, the last one is pushed out.
  await sql`UPDATE issue SET open = true WHERE id = ${leaving}`;
  await s.converge(open);
  check(open.json[0].id === leaving && !open.json.some(i => i.id === entering), 'window not restored');

  // DELETE: the comment, then the issue.
  await sql`DELETE FROM comment WHERE id = ${id + '-c1'}`;
  await s.converge(withComments);
  check(!withComments.json.some(i => i.id === id), 'issue without comments still in issuesWithComments');
  await sql`DELETE FROM issue WHERE id = ${id}`;
  await s.converge(open);
  check(!open.json.some(i => i.id === id), 'deleted issue still visible');
  await s.converge(one);
  check(one.json === null, 'deleted issue still returned by issueByID');

  // Several changes in one upstream transaction arrive together.
  const ids = [`${RUN}-live-t1`, `${RUN}-live-t2`];
  await sql.begin(async tx => {
    for (const i of ids) {
      await tx`INSERT INTO issue (id, title, open, modified, "creatorID") VALUES (${i}, 'tx', true, ${stamp()}, 'u1')`;
    }
    await tx`UPDATE "user" SET name = 'Alice (renamed)' WHERE id = 'u1'`;
  });
  await s.converge(open);
  check(ids.every(i => open.json.some(r => r.id === i)), 'transaction rows missing');
});

// c. Custom mutators round-trip through the API server to Postgres.
scenario('mutate', async s => {
  const z = s.zero({storageKey: `mutate-${RUN}`});
  const id = `${RUN}-mut`;
  const open = s.watch(z, queries.openIssues({limit: 5}), expected.openIssues(5), 'openIssues(5)');
  const one = s.watch(z, queries.issueByID({id}), expected.issueByID(id), `issueByID(${id})`);
  await s.converge(open);
  await s.converge(one);
  const clientGroupID = await z.clientGroupID;

  const run = async (request, what) => {
    const r = z.mutate(request);
    await withTimeout(r.client, WAIT_MS, `${what}: client`);
    return withTimeout(
      r.server.then(
        v => v,
        e => ({rejected: String(e)}),
      ),
      WAIT_MS,
      `${what}: server confirmation`,
    );
  };

  const created = await run(
    mutators.issue.create({id, title: 'Created by mutator', creatorID: 'u1', modified: stamp(), description: 'via API server'}),
    'issue.create',
  );
  check(created?.type === 'success', `issue.create server result: ${short(created)}`);
  const [row] = await sql`SELECT title, open, "creatorID" FROM issue WHERE id = ${id}`;
  check(row?.title === 'Created by mutator' && row.open === true, `issue.create not in Postgres: ${short(row)}`);
  await s.converge(one);
  await s.converge(open);
  check(open.json[0].id === id, 'created issue not first in openIssues');

  const renamed = await run(mutators.issue.setTitle({id, title: 'Renamed by mutator', modified: stamp()}), 'issue.setTitle');
  check(renamed?.type === 'success', `issue.setTitle server result: ${short(renamed)}`);
  const [row2] = await sql`SELECT title FROM issue WHERE id = ${id}`;
  check(row2?.title === 'Renamed by mutator', `issue.setTitle not in Postgres: ${short(row2)}`);
  await s.converge(one);

  const commented = await run(
    mutators.comment.add({id: `${id}-c1`, issueID: id, authorID: 'u2', body: 'Comment by mutator', created: stamp()}),
    'comment.add',
  );
  check(commented?.type === 'success', `comment.add server result: ${short(commented)}`);
  await s.converge(one);
  check(one.json?.comments?.length === 1, 'comment not visible in issueByID');

  // A mutator that throws on the server: optimistic change rolled back, error reported.
  const failed = await run(mutators.issue.failOnServer({id, title: 'must not stick'}), 'issue.failOnServer');
  check(
    failed?.type === 'error' && failed.error?.type === 'app' && failed.error?.message === FAILING_MUTATOR_MESSAGE,
    `issue.failOnServer server result: ${short(failed)}`,
  );
  const [row3] = await sql`SELECT title FROM issue WHERE id = ${id}`;
  check(row3?.title === 'Renamed by mutator', `failed mutation reached Postgres: ${short(row3)}`);
  await s.converge(one);
  check(one.json?.title === 'Renamed by mutator', 'optimistic change of the failed mutation not rolled back');

  // The API server's bookkeeping: four mutations confirmed for this client.
  const [lmid] = await sql`
    SELECT "lastMutationID" FROM ${sql(UPSTREAM_SCHEMA)}.clients
    WHERE "clientGroupID" = ${clientGroupID} AND "clientID" = ${z.clientID}`;
  check(Number(lmid?.lastMutationID) === 4, `lastMutationID in ${UPSTREAM_SCHEMA}.clients is ${short(lmid)}, want 4`);
  // The error result row is deleted once the client acknowledged it (cleanup push).
  await waitUntil(
    async () => {
      const rows = await sql`
        SELECT 1 FROM ${sql(UPSTREAM_SCHEMA)}.mutations
        WHERE "clientGroupID" = ${clientGroupID} AND "clientID" = ${z.clientID}`;
      return rows.length === 0;
    },
    `the failed mutation's result row in ${UPSTREAM_SCHEMA}.mutations to be cleaned up`,
  );
});

// d. Close, change upstream, reopen with the same client group: catch up.
scenario('reconnect', async s => {
  const storageKey = `reconnect-${RUN}`;
  const id = `${RUN}-rc`;
  const z1 = s.zero({storageKey, label: 'first'});
  const open1 = s.watch(z1, queries.openIssues({limit: 4}), expected.openIssues(4), 'first openIssues(4)');
  const one1 = s.watch(z1, queries.issueByID({id: 'i07'}), expected.issueByID('i07'), 'first issueByID(i07)');
  await s.converge(open1);
  await s.converge(one1);
  const group1 = await z1.clientGroupID;
  // The client copies its in-memory state to the (shared, by-name) store only
  // after 1 s without changes (Replicache persist); closing earlier would leave
  // the next client of the group without a cookie.
  await sleep(2000);
  await s.close(z1);

  // Upstream changes while no client of the group is connected.
  const top = open1.json[0].id;
  await sql`UPDATE issue SET title = 'Changed while offline' WHERE id = ${top}`;
  await sql`INSERT INTO issue (id, title, open, modified, "creatorID") VALUES (${id}, 'Inserted while offline', true, ${stamp()}, 'u3')`;
  await sql`DELETE FROM comment WHERE id = 'c06'`;
  await sql`UPDATE comment SET body = 'Edited while offline' WHERE id = 'c04'`;
  await sql`DELETE FROM "issueLabel" WHERE "issueID" = 'i07'`;

  const z2 = s.zero({storageKey, label: 'second'});
  const group2 = await z2.clientGroupID;
  check(group1 === group2, `not the same client group: ${group1} vs ${group2}`);
  check(z2.clientID !== z1.clientID, 'same clientID after reopening');
  const open2 = s.watch(z2, queries.openIssues({limit: 4}), expected.openIssues(4), 'second openIssues(4)');
  const one2 = s.watch(z2, queries.issueByID({id: 'i07'}), expected.issueByID('i07'), 'second issueByID(i07)');
  await s.converge(open2);
  await s.converge(one2);
  check(open2.json[0].id === id, 'row inserted while offline is not first');
  const urls = connectURLsOf(z2.clientID);
  check(urls.length > 0, 'no connection of the second client recorded');
  const cookie = urls[0].searchParams.get('baseCookie');
  check(cookie, 'second client connected without a baseCookie (group state not reused)');
  check(urls[0].searchParams.get('clientGroupID') === group1, 'second client used another clientGroupID');
  debug(`reconnected with baseCookie=${cookie}`);

  // Still live after catching up.
  await sql`UPDATE issue SET title = 'Changed after reconnect' WHERE id = ${id}`;
  await s.converge(open2);

  // The socket drops under a live client: it reconnects by itself (same
  // clientID, its current cookie) and catches up with what changed meanwhile.
  const sockets = openedSockets.filter(o => new URL(o.url).searchParams.get('clientID') === z2.clientID);
  const before = sockets.length;
  sockets.at(-1).ws.terminate();
  await sql`UPDATE issue SET title = 'Changed during the drop' WHERE id = ${id}`;
  await sql`INSERT INTO comment (id, "issueID", "authorID", body, created) VALUES (${id + '-c'}, ${id}, 'u2', 'during the drop', ${stamp()})`;
  await waitUntil(() => connectURLsOf(z2.clientID).length > before, 'the client to reconnect after the socket dropped');
  const again = connectURLsOf(z2.clientID).at(-1);
  check(again.searchParams.get('baseCookie'), 'reconnect after a drop sent no baseCookie');
  await waitConnected(z2, 'second client after the drop');
  await s.converge(open2);
  await s.converge(one2);
});

// e. Two client groups with overlapping queries.
scenario('two-groups', async s => {
  const za = s.zero({storageKey: `groupA-${RUN}`, userID: 'u1', label: 'A'});
  const zb = s.zero({storageKey: `groupB-${RUN}`, userID: 'u2', label: 'B'});
  const ga = await za.clientGroupID;
  const gb = await zb.clientGroupID;
  check(ga !== gb, 'both clients are in the same group');
  const aOpen = s.watch(za, queries.openIssues({limit: 4}), expected.openIssues(4), 'A openIssues(4)');
  const aUsers = s.watch(za, queries.allUsers(), expected.allUsers(), 'A allUsers');
  const bOpen = s.watch(zb, queries.openIssues({limit: 4}), expected.openIssues(4), 'B openIssues(4)');
  const bWith = s.watch(zb, queries.issuesWithComments(), expected.issuesWithComments(), 'B issuesWithComments');
  const bUsers = s.watch(zb, queries.allUsers(), expected.allUsers(), 'B allUsers');
  const all = [aOpen, aUsers, bOpen, bWith, bUsers];
  for (const w of all) {
    await s.converge(w);
  }

  const uid = `${RUN}-u`;
  const iid = `${RUN}-tg`;
  await sql`INSERT INTO "user" (id, name) VALUES (${uid}, 'Eve')`;
  await sql`INSERT INTO issue (id, title, open, modified, "creatorID") VALUES (${iid}, 'Seen by both', true, ${stamp()}, ${uid})`;
  for (const w of all) {
    await s.converge(w);
  }
  check(aOpen.json[0].creator?.name === 'Eve' && bOpen.json[0].creator?.name === 'Eve', 'new creator not related in both groups');

  // A mutation from group A is seen by group B, and the other way round.
  const r1 = za.mutate(mutators.comment.add({id: `${iid}-c`, issueID: iid, authorID: 'u1', body: 'from A', created: stamp()}));
  check((await withTimeout(r1.server, WAIT_MS, 'A comment.add'))?.type === 'success', 'A comment.add failed');
  const r2 = zb.mutate(mutators.issue.setTitle({id: iid, title: 'Renamed by B', modified: stamp()}));
  check((await withTimeout(r2.server, WAIT_MS, 'B issue.setTitle'))?.type === 'success', 'B issue.setTitle failed');
  for (const w of all) {
    await s.converge(w);
  }
  check(bWith.json.some(i => i.id === iid), "B does not see A's comment");
  check(aOpen.json[0].title === 'Renamed by B', "A does not see B's rename");

  await sql`DELETE FROM issue WHERE id = ${iid}`;
  await sql`DELETE FROM comment WHERE "issueID" = ${iid}`;
  await sql`DELETE FROM "user" WHERE id = ${uid}`;
  for (const w of all) {
    await s.converge(w);
  }
});

// f. A token the API server refuses.
scenario('unauthorized', async s => {
  const z = s.zero({storageKey: `unauth-${RUN}`, userID: 'u1', auth: 'bad', label: 'bad-token'});
  s.entry(z).expectConnected = false;
  const open = s.watch(z, queries.openIssues({limit: 5}), undefined, 'openIssues(5) with bad token');
  await waitUntil(
    () => connectionState(z).name === 'needs-auth',
    () => `connection state needs-auth (now ${short(connectionState(z))})`,
  );
  const st = connectionState(z);
  debug('needs-auth reason:', short(st));
  check(
    st.reason?.status === 401 || st.reason?.type === 'zero-cache',
    `needs-auth without a 401 or zero-cache reason: ${short(st)}`,
  );
  await sleep(1000);
  check(open.resultType !== 'complete', 'view completed with a refused token');
  check(Array.isArray(open.json) && open.json.length === 0, `rows leaked with a refused token: ${short(open.json)}`);
  check(connectionState(z).name === 'needs-auth', `state moved on by itself: ${short(connectionState(z))}`);

  // Re-authenticating with a valid token resumes syncing.
  s.entry(z).expectConnected = true;
  open.expect = expected.openIssues(5);
  await withTimeout(z.connection.connect({auth: 'tok:u1'}), WAIT_MS, 'connect with a valid token');
  await waitConnected(z, 'client after re-auth');
  await s.converge(open);
});

// g. A named query that the API server refuses to transform.
scenario('rejected-query', async s => {
  const z = s.zero({storageKey: `rejected-${RUN}`});
  const bad = s.watch(z, queries.rejectedQuery(), undefined, 'rejectedQuery');
  const good = s.watch(z, queries.openIssues({limit: 5}), expected.openIssues(5), 'openIssues(5)');
  await waitUntil(() => bad.resultType === 'error', () => `rejectedQuery to report an error (resultType ${bad.resultType})`);
  check(bad.error?.error === 'app', `rejectedQuery error kind: ${short(bad.error)}`);
  check(String(bad.error?.message ?? '').includes(REJECTED_QUERY_MESSAGE), `rejectedQuery error message: ${short(bad.error)}`);
  check(bad.error?.name === 'rejectedQuery', `rejectedQuery error names ${short(bad.error?.name)}`);
  await s.converge(good);
  await waitConnected(z, 'client');

  // The other query keeps working.
  const id = `${RUN}-rq`;
  await sql`INSERT INTO issue (id, title, open, modified, "creatorID") VALUES (${id}, 'After the rejection', true, ${stamp()}, 'u1')`;
  await s.converge(good);
  check(good.json[0].id === id, 'live update missing after a rejected query');
  check(bad.resultType === 'error', `rejectedQuery left the error state: ${bad.resultType}`);
});

// h. Malformed upstream frames get an `error` frame and a close; others are unaffected.
scenario('malformed', async s => {
  const z = s.zero({storageKey: `malformed-${RUN}`});
  const open = s.watch(z, queries.openIssues({limit: 5}), expected.openIssues(5), 'openIssues(5)');
  await s.converge(open);

  const variants = [
    ['not-json', 'this is not json'],
    ['unknown-type', JSON.stringify(['frobnicate', {}])],
    ['bad-body', JSON.stringify(['changeDesiredQueries', {desiredQueriesPatch: 'nope'}])],
  ];
  for (const [what, frame] of variants) {
    const raw = rawSocket(s, {clientID: `raw${RUN}${what.replace(/-/g, '')}`, clientGroupID: `rawg-${RUN}-${what}`});
    await waitUntil(
      () => raw.frames.length > 0 || raw.closed || raw.error,
      () => `${what}: first frame (closed ${short(raw.closed)}, error ${raw.error})`,
    );
    check(raw.echoedProtocol === raw.sentProtocol, `${what}: Sec-WebSocket-Protocol not echoed`);
    check(raw.frames[0]?.[0] === 'connected', `${what}: first frame is ${short(raw.frames[0])}`);
    raw.ws.send(frame);
    await waitUntil(() => raw.closed, () => `${what}: server to close the socket (frames ${short(raw.frames.map(f => f[0]))})`);
    const err = raw.frames.find(f => Array.isArray(f) && f[0] === 'error');
    check(err, `${what}: no error frame before the close; frames ${short(raw.frames)}`);
    check(err[1]?.kind === 'InvalidMessage', `${what}: error kind ${short(err[1])}`);
    check(err[1]?.origin === 'zeroCache', `${what}: error origin ${short(err[1])}`);
    check(typeof err[1]?.message === 'string', `${what}: error without message`);
    debug(`${what}: ${short(err)} then close ${short(raw.closed)}`);
  }

  // The well-behaved client on the same server keeps receiving updates.
  const id = `${RUN}-mf`;
  await sql`INSERT INTO issue (id, title, open, modified, "creatorID") VALUES (${id}, 'After garbage', true, ${stamp()}, 'u4')`;
  await s.converge(open);
  check(open.json[0].id === id, 'live update missing after malformed clients');
  await waitConnected(z, 'client');
});

// i. zero.close() sends a Close frame (1000); the server answers it with its own
// Close frame (RFC 6455 §5.5.1), as zero-cache does; otherwise the client sees 1006.
scenario('close-handshake', async s => {
  const z = s.zero({storageKey: `close-${RUN}`});
  const open = s.watch(z, queries.openIssues({limit: 2}), expected.openIssues(2), 'openIssues(2)');
  await s.converge(open);
  await waitConnected(z, 'client');
  const socket = openedSockets.filter(o => new URL(o.url).searchParams.get('clientID') === z.clientID).at(-1);
  check(socket && socket.closeCode === undefined, 'no open socket recorded for the client');
  await s.close(z);
  await waitUntil(() => socket.closeCode !== undefined, 'the client socket to close', 10_000);
  check(socket.closeCode === 1000, `the client saw close code ${socket.closeCode} after zero.close(), want 1000`);
});

// ---------------------------------------------------------------------------
// Runner

async function main() {
  const unknown = FILTER.filter(f => !scenarios.some(s => s.name === f));
  if (unknown.length) {
    console.error(`scenarios: unknown scenario(s) ${unknown.join(', ')}; known: ${scenarios.map(s => s.name).join(', ')}`);
    process.exit(2);
  }
  await waitForPort(cacheURL, Number(env.ZC_E2E_STARTUP_MS ?? 60_000));
  await sql`SELECT 1`;

  let passed = 0;
  let failed = 0;
  for (const {name, fn} of scenarios) {
    if (FILTER.length && !FILTER.includes(name)) {
      continue;
    }
    const scope = new Scope(name);
    currentScenario = name;
    const t0 = Date.now();
    try {
      await withTimeout(
        (async () => {
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
  console.log(`e2e: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  console.error('scenarios: setup failed:', e);
} finally {
  await sql.end({timeout: 5}).catch(() => {});
}
process.exit(ok ? 0 : 1);
