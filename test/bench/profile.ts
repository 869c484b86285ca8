/**
 * Summarise a V8 .cpuprofile (as written by `node --cpu-prof`): where the busy
 * (non-idle) time went, by function (self and inclusive) and by module.
 *
 *   node dist/test/bench/profile.js <file.cpuprofile>... [--top N] [--skip-ms MS]
 *
 * --skip-ms leaves out the first MS ms of the profile (the process's start-up:
 * module loading and the like), so the summary shows the steady state.
 *
 * The runner calls summarizeProfile() itself when BENCH_PROFILE=1.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { realpathSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  key: string;
  /** Microseconds. */
  us: number;
}

export interface ProfileSummary {
  file: string;
  skippedMs: number;
  totalMs: number;
  idleMs: number;
  busyMs: number;
  gcMs: number;
  topSelf: ProfileEntry[];
  topInclusive: ProfileEntry[];
  byModule: ProfileEntry[];
}

const PSEUDO = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);

function frameKey(f: CallFrame): string {
  const name = f.functionName || '(anonymous)';
  if (!f.url) return name;
  return `${name} ${shortUrl(f.url)}:${f.lineNumber + 1}`;
}

function shortUrl(url: string): string {
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) return url.slice(nm + '/node_modules/'.length);
  const dist = url.lastIndexOf('/dist/');
  if (dist >= 0) return url.slice(dist + '/dist/'.length);
  return url.replace(/^file:\/\//, '');
}

/** The module a frame belongs to: a node core module, an npm package, a sockgate folder, or native/pseudo. */
export function moduleOf(f: CallFrame): string {
  if (PSEUDO.has(f.functionName)) return f.functionName;
  const url = f.url;
  if (!url) return '(native / builtin)';
  if (url.startsWith('node:')) return url;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const parts = url.slice(nm + '/node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  const dist = url.lastIndexOf('/dist/');
  if (dist >= 0) return `sockgate ${url.slice(dist + '/dist/'.length)}`;
  return url;
}

function top(map: Map<string, number>, n: number): ProfileEntry[] {
  return [...map]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([key, us]) => ({ key, us }));
}

export function summarizeProfile(file: string, n = 25, skipMs = 0): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of prof.nodes) {
    byId.set(node.id, node);
    for (const c of node.children ?? []) parent.set(c, node.id);
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const byModule = new Map<string, number>();
  let idle = 0;
  let gc = 0;
  let total = 0;
  const deltas = prof.timeDeltas;
  let t = 0;
  let skipped = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    // A sample lasts until the next one; the last one gets the previous delta.
    const dt = Math.max(0, deltas[i + 1] ?? deltas[i] ?? 0);
    t += Math.max(0, deltas[i] ?? 0);
    if (t < skipMs * 1000) {
      skipped += dt;
      continue;
    }
    total += dt;
    const node = byId.get(prof.samples[i]!);
    if (!node) continue;
    const f = node.callFrame;
    if (f.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    if (f.functionName === '(garbage collector)') gc += dt;
    const k = frameKey(f);
    self.set(k, (self.get(k) ?? 0) + dt);
    const m = moduleOf(f);
    byModule.set(m, (byModule.get(m) ?? 0) + dt);
    // Inclusive: each function once per stack, however often it recurses.
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const fr = byId.get(id)!.callFrame;
      if (fr.functionName === '(root)') continue;
      const key = frameKey(fr);
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + dt);
    }
  }
  return {
    file,
    skippedMs: skipped / 1000,
    totalMs: total / 1000,
    idleMs: idle / 1000,
    busyMs: (total - idle) / 1000,
    gcMs: gc / 1000,
    topSelf: top(self, n),
    topInclusive: top(inclusive, n),
    byModule: top(byModule, n),
  };
}

export function formatSummary(s: ProfileSummary): string {
  const busyUs = s.busyMs * 1000 || 1;
  const pct = (us: number) => `${((100 * us) / busyUs).toFixed(1).padStart(5)}%`;
  const ms = (us: number) => `${(us / 1000).toFixed(0).padStart(7)} ms`;
  const lines = [
    `profile ${basename(s.file)}: ${s.totalMs.toFixed(0)} ms sampled${s.skippedMs ? ` after skipping the first ${s.skippedMs.toFixed(0)} ms (start-up)` : ''}, ${s.busyMs.toFixed(0)} ms busy (${s.idleMs.toFixed(0)} ms idle), GC ${s.gcMs.toFixed(0)} ms`,
    `  top self time (% of busy):`,
    ...s.topSelf.map((e) => `    ${ms(e.us)} ${pct(e.us)}  ${e.key}`),
    `  self time by module:`,
    ...s.byModule.map((e) => `    ${ms(e.us)} ${pct(e.us)}  ${e.key}`),
    `  top inclusive time:`,
    ...s.topInclusive.map((e) => `    ${ms(e.us)} ${pct(e.us)}  ${e.key}`),
  ];
  return lines.join('\n');
}

function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isMain()) {
  const args = process.argv.slice(2);
  let n = 25;
  let skip = 0;
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--top') n = Number(args[++i]);
    else if (args[i] === '--skip-ms') skip = Number(args[++i]);
    else files.push(args[i]!);
  }
  if (!files.length || !Number.isFinite(n) || !Number.isFinite(skip)) {
    process.stderr.write('usage: node dist/test/bench/profile.js <file.cpuprofile>... [--top N] [--skip-ms MS]\n');
    process.exit(2);
  }
  for (const f of files) process.stdout.write(formatSummary(summarizeProfile(f, n, skip)) + '\n\n');
}
