// A child process (forked by bench.mjs) that hosts real @rocicorp/zero 1.9.0
// clients (Node, `ws` as the WebSocket, in-memory storage) and reports, over
// IPC, when their view of the measured query is hydrated and when each
// benchmark write becomes visible in it.
//
// Commands (parent -> child), each answered with {id, ...}:
//   {cmd: 'open', clients: [{key, storageKey, userID}], cacheURL, timeoutMs}
//       creates the clients, materializes openIssues on each; answers once every
//       one is `complete` (or the timeout passes) with per-client times
//   {cmd: 'close', keys}        closes these clients (all when keys is absent)
//   {cmd: 'stats'}              event-loop delay and CPU since the last 'stats'
//   {cmd: 'sample', every}      report only writes whose seq is a multiple of `every`
//   {cmd: 'flush'}              send the pending observations now
// Events (child -> parent):
//   {evt: 'obs', o: [key, seq, t, key, seq, t, ...]}  a write `seq` first seen by client `key` at t
//
// Times are wall-clock milliseconds with sub-ms precision
// (performance.timeOrigin + performance.now()), comparable across processes.
import {setMaxListeners} from 'node:events';
import {monitorEventLoopDelay} from 'node:perf_hooks';
import WS from 'ws';
import {Zero} from '@rocicorp/zero';
import {OPEN_ISSUES_LIMIT, WRITE_BASE, mutators, queries, schema} from './schema.mjs';

// `ws` emits 'error' as an EventEmitter event: a socket that fails after the
// client dropped its handlers (e.g. connection refused during a retry) would
// otherwise crash this process.
// When each client's WebSocket last received a pokeEnd, by client ID (from the
// connect URL): with the time of `complete`, this splits a hydration into the
// server's part (connect → the poke that completes it has arrived) and the
// client's (applying that poke and running the query locally).
const lastPokeEnd = new Map();
// When each client last created its WebSocket, and when that socket's first message
// arrived: the server part above then splits into the client's own start-up, the
// socket's opening and the server's answer.
const socketAt = new Map();
const firstMessageAt = new Map();
// The first messages each client's socket sent and received (short ones whole, others
// by tag and size, a run of poke parts counted), reported for a client that did not
// complete.
const traces = new Map();
class BenchWebSocket extends WS {
  send(data, ...rest) {
    const trace = traces.get(this.clientID);
    if (trace && trace.length < 24) {
      const text = String(data);
      trace.push({tag: '>', n: 1, text: `> ${text.slice(0, 120)}`});
    }
    return super.send(data, ...rest);
  }

  constructor(...args) {
    super(...args);
    this.on('error', () => {});
    let id;
    try {
      id = new URL(String(args[0])).searchParams.get('clientID');
    } catch {
      id = undefined;
    }
    if (id) {
      this.clientID = id;
      socketAt.set(id, now());
      firstMessageAt.delete(id);
      const trace = [];
      traces.set(id, trace);
      this.on('message', data => {
        if (trace.length < 24) {
          const tag = data.toString('utf8', 2, Math.min(data.length, 40)).split('"')[0];
          const last = trace.at(-1);
          if (last?.tag === tag && tag === 'pokePart') {
            last.n++;
          } else {
            trace.push({tag, n: 1, text: data.length < 200 ? data.toString('utf8') : `${tag}@${data.length}`});
          }
        }
        if (!firstMessageAt.has(id)) {
          firstMessageAt.set(id, now());
        }
        // Cheap prefix test: messages are JSON arrays ["<tag>", body].
        if (data.length < 256 && data.toString('utf8', 0, 11) === '["pokeEnd",') {
          lastPokeEnd.set(id, now());
        }
      });
    }
  }
}
globalThis.WebSocket = BenchWebSocket;
// Many clients in one process share timers/abort signals: not a leak.
setMaxListeners(1000);

const now = () => performance.timeOrigin + performance.now();
const clients = new Map(); // key -> client state
let pendingObs = [];
// Only writes with seq % sampleEvery === 0 are reported (set per phase by the
// parent, so that high write rates do not drown the IPC channel).
let sampleEvery = 1;

const loopDelay = monitorEventLoopDelay({resolution: 10});
loopDelay.enable();
let lastCpu = process.cpuUsage();
let lastStatsAt = now();

process.on('unhandledRejection', e => {
  // A closing client may reject late promises; not interesting here.
  if (process.env.BENCH_VERBOSE === '1') {
    console.error('clients: unhandled rejection', e?.message ?? e);
  }
});

function flushObs() {
  if (pendingObs.length > 0) {
    process.send({evt: 'obs', o: pendingObs});
    pendingObs = [];
  }
}
setInterval(flushObs, 100).unref();

/**
 * Called on every listener callback of a client's view. Rows are ordered by
 * `modified` desc and the benchmark's writes set modified = WRITE_BASE + seq,
 * so the written issues are at the top. A write is "visible" once its row is in
 * the view, or once the whole window consists of newer writes (at high rates a
 * row can enter and leave the window between two snapshots the client sees).
 */
function observe(c, data, t) {
  const n = data.length;
  let consecutiveOld = 0;
  for (let i = 0; i < n; i++) {
    const m = data[i].modified;
    if (m < WRITE_BASE) {
      break;
    }
    const seq = m - WRITE_BASE;
    if (seq <= c.floor || c.seen.has(seq)) {
      if (++consecutiveOld >= 20) {
        break;
      }
      continue;
    }
    consecutiveOld = 0;
    c.seen.add(seq);
    if (seq % sampleEvery === 0) {
      pendingObs.push(c.key, seq, t);
    }
  }
  if (n >= OPEN_ISSUES_LIMIT && data[n - 1].modified >= WRITE_BASE) {
    const minSeq = data[n - 1].modified - WRITE_BASE;
    for (let s = c.floor + 1; s < minSeq; s++) {
      if (s % sampleEvery === 0 && !c.seen.has(s)) {
        pendingObs.push(c.key, s, t);
      }
    }
    if (minSeq - 1 > c.floor) {
      c.floor = minSeq - 1;
      for (const s of c.seen) {
        if (s <= c.floor) {
          c.seen.delete(s);
        }
      }
    }
  }
}

function openOne({key, storageKey, userID}, cacheURL) {
  const c = {key, seen: new Set(), floor: 0, tStart: now(), tComplete: undefined, errors: [], resultType: 'unknown'};
  let resolveComplete;
  c.complete = new Promise(r => (resolveComplete = r));
  c.z = new Zero({
    cacheURL,
    schema,
    mutators,
    userID,
    auth: `tok:${userID}`,
    storageKey,
    kvStore: 'mem',
    context: {location: 'client', userID},
    logLevel: 'error',
    logSink: {
      log(level, _ctx, ...args) {
        if (c.errors.length < 5) {
          c.errors.push(`${level} ${args.map(a => (a instanceof Error ? a.message : typeof a === 'string' ? a : JSON.stringify(a))).join(' ').slice(0, 300)}`);
        }
      },
    },
  });
  c.view = c.z.materialize(queries.openIssues({limit: OPEN_ISSUES_LIMIT}));
  c.view.addListener((data, resultType) => {
    const t = now();
    c.resultType = resultType;
    if (resultType === 'complete' && c.tComplete === undefined) {
      c.tComplete = t;
      c.tPokeEnd = lastPokeEnd.get(c.z.clientID);
      c.tSocket = socketAt.get(c.z.clientID);
      c.tFirstMessage = firstMessageAt.get(c.z.clientID);
      c.rows = data.length;
      resolveComplete();
    }
    observe(c, data, t);
  });
  clients.set(key, c);
  return c;
}

async function open({clients: specs, cacheURL, timeoutMs}) {
  const started = specs.map(s => openOne(s, cacheURL));
  let timer;
  await Promise.race([
    Promise.all(started.map(c => c.complete)),
    new Promise(r => (timer = setTimeout(r, timeoutMs))),
  ]);
  clearTimeout(timer);
  // A client that did not complete: what its local store holds (the raw key map of
  // its Replicache: `g/` got queries, `d/` desired queries, `e/` rows), to tell a poke
  // that never arrived or was not applied from a completion the client did not report.
  for (const c of started) {
    if (c.tComplete === undefined) {
      c.store = await Promise.race([
        storeSummary(c),
        new Promise(r => setTimeout(() => r('inspector did not answer'), 5000)),
      ]);
    }
  }
  return {
    results: started.map(c => ({
      key: c.key,
      tStart: c.tStart,
      tComplete: c.tComplete,
      tPokeEnd: c.tPokeEnd,
      tSocket: c.tSocket,
      tFirstMessage: c.tFirstMessage,
      rows: c.rows,
      resultType: c.resultType,
      connection: `${c.z.connection?.state?.current?.name} client ${c.z.clientID} resultType ${c.resultType} seen ${c.seen.size}${c.store ? ` store ${c.store}` : ''}`,
      errors: c.errors,
    })),
  };
}

async function storeSummary(c) {
  try {
    const map = await c.z.inspector.client.map();
    const keys = [...(map instanceof Map ? map.keys() : Object.keys(map))];
    const of = prefix => keys.filter(k => k.startsWith(prefix));
    const group = await c.z.clientGroupID;
    const trace = (traces.get(c.z.clientID) ?? []).map(t => (t.n > 1 ? `${t.text} x${t.n}` : t.text)).join(' ');
    return `group ${group}: got [${of('g/').join(' ')}] desired [${of('d/').join(' ')}] rows ${of('e/').length}; messages ${trace}`;
  } catch (e) {
    return `inspector failed: ${e?.message ?? e}`;
  }
}

async function close({keys}) {
  const list = keys ? keys.map(k => clients.get(k)).filter(Boolean) : [...clients.values()];
  await Promise.all(
    list.map(async c => {
      clients.delete(c.key);
      lastPokeEnd.delete(c.z.clientID);
      socketAt.delete(c.z.clientID);
      firstMessageAt.delete(c.z.clientID);
      traces.delete(c.z.clientID);
      try {
        c.view.destroy();
      } catch {
        // already gone
      }
      await Promise.race([c.z.close().catch(() => {}), new Promise(r => setTimeout(r, 5000))]);
    }),
  );
  return {closed: list.length};
}

function stats() {
  const t = now();
  const cpu = process.cpuUsage(lastCpu);
  const wallMs = t - lastStatsAt;
  const out = {
    loopDelayP50Ms: loopDelay.percentile(50) / 1e6,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
    cpuFraction: wallMs > 0 ? (cpu.user + cpu.system) / 1000 / wallMs : 0,
    cpuMs: (cpu.user + cpu.system) / 1000,
    rssBytes: process.memoryUsage.rss(),
    clients: clients.size,
  };
  loopDelay.reset();
  lastCpu = process.cpuUsage();
  lastStatsAt = t;
  return out;
}

process.on('message', async msg => {
  let reply;
  try {
    if (msg.cmd === 'open') {
      reply = await open(msg);
    } else if (msg.cmd === 'close') {
      reply = await close(msg);
    } else if (msg.cmd === 'stats') {
      reply = stats();
    } else if (msg.cmd === 'sample') {
      sampleEvery = msg.every;
      reply = {};
    } else if (msg.cmd === 'flush') {
      flushObs();
      reply = {};
    } else {
      reply = {error: `unknown command ${msg.cmd}`};
    }
  } catch (e) {
    reply = {error: String(e?.stack ?? e)};
  }
  flushObs();
  process.send({id: msg.id, ...reply});
});

process.on('disconnect', () => process.exit(0));
process.send({evt: 'ready'});
