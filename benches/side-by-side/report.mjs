// Markdown rendering of a results JSON of bench.mjs (also usable alone:
// `node report.mjs results/<file>.json` prints the tables again).
import fs from 'node:fs';
import {fileURLToPath} from 'node:url';

const get = (o, p) => p.split('.').reduce((a, k) => (a === undefined || a === null ? undefined : a[k]), o);

const fmtMs = v => (v === null || v === undefined ? '—' : v >= 10_000 ? `${(v / 1000).toFixed(1)} s` : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v * 10) / 10} ms`);
const fmtBytes = v => (v === null || v === undefined ? '—' : v >= 1 << 30 ? `${(v / (1 << 30)).toFixed(2)} GiB` : v >= 1 << 20 ? `${(v / (1 << 20)).toFixed(1)} MiB` : `${(v / 1024).toFixed(1)} KiB`);
const fmtRate = v => (v === null || v === undefined ? '—' : `${v}/s`);
const fmtCpu = v => (v === null || v === undefined ? '—' : `${v} ms`);
const fmtNum = v => (v === null || v === undefined ? '—' : String(v));

// [label, path in a run, formatter, 'lower' | 'higher' is better]
const FIGURES = [
  ['Initial sync: start → first hydration complete (fresh replica)', 'initialSyncMs', fmtMs, 'lower'],
  ['Cold start: start → port answers (fresh replica)', 'coldStartPortMs', fmtMs, 'lower'],
  ['Initial copy done (server log line, from start)', 'logMarkersColdMs.copied', fmtMs, 'lower'],
  ['Warm restart: start → port answers (existing replica)', 'warmRestartPortMs', fmtMs, 'lower'],
  ['Warm restart: start → first hydration complete', 'warmRestartReadyMs', fmtMs, 'lower'],
  ['Idle memory (RSS, all processes, after warm restart, no clients)', 'idleRssBytes', fmtBytes, 'lower'],
  ['Idle memory, PSS (shared pages split between processes)', 'idlePssBytes', fmtBytes, 'lower'],
  ['Idle memory right after the initial sync', 'idleAfterSyncRssBytes', fmtBytes, 'lower'],
  ['Peak memory (RSS, all processes, whole run)', 'peakRssBytes', fmtBytes, 'lower'],
  ['Peak memory during cold start + initial sync', 'peakRssInitialSyncBytes', fmtBytes, 'lower'],
  ['Replica size after the initial sync (all files)', 'replicaBytes', fmtBytes, 'lower'],
  ['Replica size at the end of the run', 'replicaEndBytes', fmtBytes, 'lower'],
  ['Hydration, 1 client (connect → complete; median of the samples)', 'hydrationMs', fmtMs, 'lower'],
  ['Hydration, 1 client: server part (connect → last pokeEnd before complete; median)', 'hydrationServerMs', fmtMs, 'lower'],
  ['Hydration, 1 client: the warm-up ones (client processes compiling; median, not counted)', 'hydrationWarmupMs', fmtMs, 'lower'],
  ['Update latency p50, 1 client', 'latency1.p50Ms', fmtMs, 'lower'],
  ['Update latency p99, 1 client', 'latency1.p99Ms', fmtMs, 'lower'],
  ['Hydration of N clients at once (until all complete)', 'hydrateManyMs', fmtMs, 'lower'],
  ['Hydration of N clients: server CPU', 'hydrateManyCpuMs.server', fmtCpu, 'lower'],
  ['Hydration of N clients: PostgreSQL CPU (includes CVR writes)', 'hydrateManyCpuMs.postgres', fmtCpu, 'lower'],
  ['Hydration of N clients: app server CPU (query endpoint)', 'hydrateManyCpuMs.appServer', fmtCpu, 'lower'],
  ['Hydration of N clients: client processes CPU (summed)', 'hydrateManyCpuMs.clients', fmtCpu, 'lower'],
  ['Update latency p50, N clients', 'latencyMany.p50Ms', fmtMs, 'lower'],
  ['Update latency p99, N clients', 'latencyMany.p99Ms', fmtMs, 'lower'],
  ['Memory per additional client group (RSS delta / N)', 'rssPerGroupBytes', fmtBytes, 'lower'],
  ['Memory per additional client group (PSS delta / N)', 'pssPerGroupBytes', fmtBytes, 'lower'],
  ['Highest sustained write rate, p99 lag under the limit, 1 client', 'maxSustainedWritesPerSec1', fmtRate, 'higher'],
  ['Highest sustained write rate, p99 lag under the limit, N+1 clients', 'maxSustainedWritesPerSecMany', fmtRate, 'higher'],
  ['Server CPU per write (1 client, fixed rate)', 'latency1.serverCpuMsPerWrite', fmtCpu, 'lower'],
  ['Server CPU per write (N clients, fixed rate)', 'latencyMany.serverCpuMsPerWrite', fmtCpu, 'lower'],
  ['PostgreSQL CPU per write (N clients, fixed rate; includes CVR writes)', 'latencyMany.pgCpuMsPerWrite', fmtCpu, 'lower'],
];

function ratio(a, b) {
  if (typeof a !== 'number' || typeof b !== 'number' || b === 0) {
    return '—';
  }
  const r = a / b;
  return r >= 10 ? r.toFixed(1) : r >= 0.1 ? r.toFixed(2) : r.toFixed(3);
}

export function renderMarkdown(results) {
  const out = [];
  const c = results.config ?? {};
  const v = results.versions ?? {};
  const m = results.machine ?? {};
  out.push(`# zc vs zero-cache ${v.zeroCache ?? '1.9.0'}: side-by-side benchmark, ${results.date?.slice(0, 10)}`);
  out.push('');
  out.push(
    `Machine: ${m.cpus} CPUs (${m.cpuModel}), ${fmtBytes(m.memBytes)} RAM, Linux ${m.kernel}, load average at start ${m.loadAvgAtStart?.join(' / ')}. ` +
      `zc: ${v.zcBinary?.path} (built ${v.zcBinary?.modified}, tree at ${v.zcGitHead}${v.zcGitDirty ? ' with uncommitted changes' : ''}). ` +
      `zero-cache ${v.zeroCache} on Node ${v.zeroCacheNode}; client @rocicorp/zero ${v.zeroClient} on Node ${v.clientNode}; ${String(v.postgres ?? '').split(' on ')[0]}.`,
  );
  out.push('');
  out.push(
    `Workload: N = ${c.clients} client groups (${c.clientProcs} client processes), ` +
      `fixed-rate phases at ${c.rate} writes/s for ${c.latencySecs} s, ramp steps ${c.ramp?.join(', ')} writes/s with 1 client and ${(c.rampMany ?? c.ramp)?.join(', ')} with ${c.clients + 1}, ${c.rampStepSecs} s each, ` +
      `lag limit p99 < ${c.lagLimitMs} ms; servers at ZERO_LOG_LEVEL=${c.logLevel ?? 'info'}. Ratios are zc / zero-cache (below 1 = zc smaller, i.e. better for every figure but the write rate). See README.md for what each figure means.`,
  );
  for (const [size, runs] of Object.entries(results.runs ?? {})) {
    const servers = Object.keys(runs);
    const seed = results.seeds?.[size] ?? {};
    out.push('');
    out.push(`## ${Number(size).toLocaleString('en-US')} issues`);
    out.push('');
    if (seed.issues !== undefined) {
      out.push(
        `Data: ${seed.users} users, ${seed.issues} issues (${seed.open_issues} open), ${seed.comments} comments, ${seed.labels} labels, ` +
          `${seed.issue_labels} issue labels, ${seed.notifications} notifications; ${fmtBytes(seed.bytes)} in Postgres; seeded in ${seed.seconds} s.`,
      );
      out.push('');
    }
    const both = servers.includes('zc') && servers.includes('zero-cache');
    out.push(`| figure | ${servers.join(' | ')} |${both ? ' zc / zero-cache |' : ''}`);
    out.push(`| --- | ${servers.map(() => '---:').join(' | ')} |${both ? ' ---: |' : ''}`);
    for (const [label, p, fmt, better] of FIGURES) {
      const vals = servers.map(s => get(runs[s], p));
      if (vals.every(x => x === undefined)) {
        continue;
      }
      const cells = servers.map((s, i) => {
        let cell = fmt(vals[i]);
        const rampOf = {maxSustainedWritesPerSec1: 'rampOne', maxSustainedWritesPerSecMany: 'rampMany'}[p];
        if (rampOf && runs[s][rampOf]?.steps?.length && runs[s][rampOf].steps.every(st => st.pass)) {
          cell = `≥ ${cell}`;
        }
        return cell;
      });
      const name = label.replaceAll('N+1 clients', `${c.clients + 1} clients`).replaceAll('N clients', `${c.clients} clients`).replaceAll('/ N', `/ ${c.clients}`) + (better === 'higher' ? ' (higher is better)' : '');
      out.push(`| ${name} | ${cells.join(' | ')} |${both ? ` ${ratio(get(runs.zc, p), get(runs['zero-cache'], p))} |` : ''}`);
    }
    for (const [rampKey, s] of servers.flatMap(s => ['rampOne', 'rampMany'].map(k => [k, s]))) {
      const rmp = runs[s][rampKey];
      const steps = rmp?.steps ?? [];
      if (steps.length) {
        out.push('');
        out.push(`Write-rate ramp, ${s}, ${rmp.clients} client${rmp.clients === 1 ? '' : 's'} watching (${rmp.stepSecs} s a step; backlog drained ${fmtMs(rmp.drainMs)} after the last step):`);
        out.push('');
        out.push('| target | achieved | p50 lag | p99 lag | max lag | p50 lag, first → last quarter | never seen | CPU / write: server, Postgres | client loop delay p99 | client CPU | sustained |');
        out.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |');
        for (const st of steps) {
          out.push(
            `| ${st.targetRate}/s | ${st.achievedRate}/s | ${fmtMs(st.p50Ms)} | ${st.p99Ms === null ? '∞' : fmtMs(st.p99Ms)} | ${fmtMs(st.maxMs)} | ${fmtMs(st.firstQuarterP50Ms)} → ${fmtMs(st.lastQuarterP50Ms)}${st.growing ? ' (growing)' : ''} | ${st.missing} of ${(st.trackedWrites ?? st.issued) * st.clients} | ${fmtNum(st.serverCpuMsPerWrite)} ms, ${fmtNum(st.pgCpuMsPerWrite)} ms | ${fmtMs(st.client?.loopDelayP99Ms)} | ${fmtNum(st.client?.cpuFractionMax)} | ${st.pass ? 'yes' : 'no'} |`,
          );
        }
      }
    }
    const notes = [];
    for (const s of servers) {
      const r = runs[s];
      for (const e of r.errors ?? []) {
        notes.push(`- ${s}: ${e}`);
      }
      for (const k of ['latency1', 'latencyMany']) {
        if (r[k]?.missing) {
          notes.push(`- ${s}: ${k}: ${r[k].missing} (client, write) pairs never seen within the drain time (counted as infinitely late)`);
        }
      }
      if (r.coldStop && !r.coldStop.graceful) {
        notes.push(`- ${s}: did not stop within the grace period after SIGTERM (killed)`);
      }
    }
    if (notes.length) {
      out.push('');
      out.push('Notes:');
      out.push('');
      out.push(...notes);
    }
  }
  out.push('');
  return out.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(renderMarkdown(JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))));
}
