// Helpers of bench.mjs: clocks, statistics, /proc process trees (RSS, CPU),
// child processes, TCP polling, a seeded PRNG, formatting.
import {spawn} from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** Wall-clock ms with sub-ms precision, comparable across processes. */
export const now = () => performance.timeOrigin + performance.now();
export const sleep = ms => new Promise(r => setTimeout(r, ms));

export class Timeout extends Error {}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    Promise.resolve(promise).finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Timeout(`${what}: timed out after ${Math.round(ms / 1000)} s`)), ms);
    }),
  ]);
}

// ---------------------------------------------------------------------------
// Statistics

/** Nearest-rank percentile of an ascending array (Infinity entries allowed). */
export function percentile(sorted, p) {
  if (sorted.length === 0) {
    return null;
  }
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function summarize(values) {
  const sorted = Float64Array.from(values).sort();
  const finite = sorted.filter(Number.isFinite);
  const sum = finite.reduce((a, b) => a + b, 0);
  const r = x => (x === null ? null : Number.isFinite(x) ? Math.round(x * 10) / 10 : null);
  return {
    samples: sorted.length,
    p50Ms: r(percentile(sorted, 50)),
    p90Ms: r(percentile(sorted, 90)),
    p99Ms: r(percentile(sorted, 99)),
    maxMs: r(finite.length ? finite[finite.length - 1] : null),
    meanMs: r(finite.length ? sum / finite.length : null),
    // p99 as a number for comparisons: Infinity when more than 1% never arrived.
    p99Raw: percentile(sorted, 99),
  };
}

// ---------------------------------------------------------------------------
// /proc: process trees, RSS, CPU

const PAGE = 4096;
const TICKS = 100; // USER_HZ on Linux

function readStat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return {ppid: Number(f[1]), cpuTicks: Number(f[11]) + Number(f[12]), childTicks: Number(f[13]) + Number(f[14])};
  } catch {
    return undefined;
  }
}

/** pid -> ppid of every live process. */
function processTable() {
  const table = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (d.charCodeAt(0) >= 48 && d.charCodeAt(0) <= 57) {
      const st = readStat(d);
      if (st) {
        table.set(Number(d), st.ppid);
      }
    }
  }
  return table;
}

/** The live pids of the tree rooted at `root` (root included when alive). */
export function treePids(root) {
  const table = processTable();
  if (!table.has(root)) {
    return [];
  }
  const children = new Map();
  for (const [pid, ppid] of table) {
    if (!children.has(ppid)) {
      children.set(ppid, []);
    }
    children.get(ppid).push(pid);
  }
  const out = [];
  const stack = [root];
  while (stack.length) {
    const p = stack.pop();
    out.push(p);
    for (const c of children.get(p) ?? []) {
      stack.push(c);
    }
  }
  return out;
}

export function rssBytes(pid) {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * PAGE;
  } catch {
    return 0;
  }
}

export function pssBytes(pid) {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export function cpuMs(pid) {
  const st = readStat(pid);
  return st ? (st.cpuTicks * 1000) / TICKS : 0;
}

/**
 * CPU ms used so far by a process tree whose root reaps its children (like the
 * postmaster): the live processes plus the root's waited-for children.
 */
export function treeCpuWithReapedMs(root) {
  const st = readStat(root);
  if (!st) {
    return 0;
  }
  let ticks = st.childTicks;
  for (const p of treePids(root)) {
    ticks += readStat(p)?.cpuTicks ?? 0;
  }
  return (ticks * 1000) / TICKS;
}

/**
 * Samples the summed RSS of a process tree every `intervalMs`: the current
 * value, the peak since start and the peak since the last mark().
 */
export class TreeSampler {
  constructor(root, intervalMs = 200) {
    this.root = root;
    this.peak = 0;
    this.markPeak = 0;
    this.current = 0;
    this.seen = new Set();
    this.cpuByPid = new Map();
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  sample() {
    const pids = treePids(this.root);
    let rss = 0;
    for (const p of pids) {
      this.seen.add(p);
      rss += rssBytes(p);
      this.cpuByPid.set(p, cpuMs(p));
    }
    this.current = rss;
    this.pids = pids;
    this.peak = Math.max(this.peak, rss);
    this.markPeak = Math.max(this.markPeak, rss);
    return rss;
  }

  /** Resets the phase peak; returns the previous one. */
  mark() {
    const p = this.markPeak;
    this.markPeak = this.current;
    return p;
  }

  /** CPU ms of the tree (processes that exited keep their last sampled value). */
  cpuMs() {
    this.sample();
    let t = 0;
    for (const v of this.cpuByPid.values()) {
      t += v;
    }
    return t;
  }

  pss() {
    return treePids(this.root).reduce((a, p) => a + pssBytes(p), 0);
  }

  stop() {
    clearInterval(this.timer);
  }
}

// ---------------------------------------------------------------------------
// Child processes

/**
 * Spawns a command with its output appended to `logFile` and every line passed
 * to `onLine(line, t)` (ANSI colours stripped).
 */
export function spawnLogged(cmd, args, {env, cwd, logFile, onLine}) {
  const out = fs.createWriteStream(logFile, {flags: 'a'});
  const child = spawn(cmd, args, {env, cwd, stdio: ['ignore', 'pipe', 'pipe']});
  for (const stream of [child.stdout, child.stderr]) {
    let buf = '';
    stream.on('data', d => {
      const t = now();
      out.write(d);
      if (!onLine) {
        return;
      }
      buf += d.toString('utf8');
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        // eslint-disable-next-line no-control-regex
        onLine(buf.slice(0, i).replace(/\x1b\[[0-9;]*m/g, ''), t);
        buf = buf.slice(i + 1);
      }
      if (buf.length > 1 << 20) {
        buf = '';
      }
    });
  }
  child.exited = new Promise(r => child.on('exit', (code, signal) => r({code, signal})));
  child.on('exit', () => out.end());
  return child;
}

/** SIGTERM to the root, then SIGKILL to whatever is left of the tree after `graceMs`. */
export async function stopTree(child, extraPids = [], graceMs = 20_000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) {
    killAll(extraPids);
    return {graceful: true, ms: 0};
  }
  const t0 = now();
  const pids = new Set([...treePids(child.pid), ...extraPids]);
  child.kill('SIGTERM');
  const ok = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
  // Children of a tree may outlive its root for a moment.
  for (let i = 0; i < 50 && [...pids].some(alive); i++) {
    await sleep(100);
  }
  const left = [...pids].filter(alive);
  killAll(left);
  if (!ok) {
    child.kill('SIGKILL');
  }
  return {graceful: ok && left.length === 0, ms: Math.round(now() - t0)};
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    // A zombie is not alive for our purpose.
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

function killAll(pids) {
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

// ---------------------------------------------------------------------------
// Network

export function portAnswers(port, host = '127.0.0.1') {
  return new Promise(resolve => {
    const s = net.connect({host, port});
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function waitForPort(port, timeoutMs, stillRunning = () => true) {
  const deadline = now() + timeoutMs;
  for (;;) {
    if (await portAnswers(port)) {
      return now();
    }
    if (!stillRunning()) {
      throw new Error(`the server exited before port ${port} answered`);
    }
    if (now() > deadline) {
      throw new Timeout(`port ${port} did not answer within ${Math.round(timeoutMs / 1000)} s`);
    }
    await sleep(25);
  }
}

// ---------------------------------------------------------------------------
// Misc

/** mulberry32: a small deterministic PRNG, so both servers get the same writes. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Total size of the files in `dir` whose name starts with `base` (replica + -wal/-shm/...). */
export function filesSize(dir, base) {
  const files = {};
  let total = 0;
  for (const f of fs.readdirSync(dir)) {
    if (f.startsWith(base)) {
      const st = fs.statSync(path.join(dir, f));
      if (st.isFile()) {
        files[f] = st.size;
        total += st.size;
      }
    }
  }
  return {bytes: total, files};
}

export const round = x => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x));
export const mib = b => (b === null || b === undefined ? null : Math.round((b / 1048576) * 10) / 10);
