/**
 * The layering rule of README's Design section, checked on every hand-written
 * import (static, dynamic and `import type`) under proto/, native/, server/
 * and clients/: proto/ imports nothing of ours; native/ only proto/; server/
 * and clients/ import proto/ and native/; clients/ never server/; in server/
 * only the CLI (server/cli/, the composition root) imports clients/, and only
 * their index.ts; and no two files import each other, however indirectly.
 */
import test from 'ava';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, posix, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** The repository root (this file runs from dist/test/deploy/). */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const LAYERS = ['proto', 'native', 'server', 'clients'] as const;
/** Generated or built, not hand-written. */
const SKIP_DIRS = new Set(['proto/gen', 'native/build', 'node_modules']);
/** The public entry points the CLI may import. */
const CLIENT_ENTRY = /^clients\/[^/]+\/index\.ts$/;

type Edge = { from: string; to: string };

function toPosix(p: string): string {
  return p.split(sep).join('/');
}

function sources(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(join(ROOT, dir))) {
    const rel = posix.join(dir, name);
    if (SKIP_DIRS.has(rel)) continue;
    if (statSync(join(ROOT, rel)).isDirectory()) sources(rel, out);
    else if (rel.endsWith('.ts') && !rel.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

/** Our imports of one file, as repo-relative .ts paths (packages are not ours and are left out). */
function importsOf(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
  return info.importedFiles
    .map((i) => i.fileName)
    .filter((spec) => spec.startsWith('.'))
    .map((spec) => toPosix(relative(ROOT, resolve(ROOT, dirname(file), spec.replace(/\.js$/, '.ts')))));
}

function layerOf(path: string): string {
  if (path.startsWith('server/cli/')) return 'cli';
  return path.split('/')[0]!;
}

/** What breaks the rule, one line per import. */
function layerViolations(edges: readonly Edge[]): string[] {
  const out: string[] = [];
  for (const { from, to } of edges) {
    const [a, b] = [layerOf(from), layerOf(to)];
    const bad =
      (b === 'test' && 'product code imports nothing from test/') ||
      (a === 'proto' && b !== 'proto' && 'proto/ imports nothing of ours') ||
      (a === 'native' && b !== 'native' && b !== 'proto' && 'native/ imports only proto/') ||
      (a === 'clients' && (b === 'server' || b === 'cli') && 'clients/ never imports server/') ||
      (a === 'server' && b === 'clients' && 'only server/cli/ imports clients/') ||
      (a === 'cli' && b === 'clients' && !CLIENT_ENTRY.test(to) && 'server/cli/ imports clients/ only through their index.ts');
    if (bad) out.push(`${from} -> ${to}: ${bad}`);
  }
  return out;
}

/** Every import cycle (strongly connected set of files), each as a path `a -> b -> ... -> a`. */
function importCycles(edges: readonly Edge[]): string[] {
  const next = new Map<string, string[]>();
  for (const { from, to } of edges) {
    if (!next.has(from)) next.set(from, []);
    if (!next.has(to)) next.set(to, []);
    next.get(from)!.push(to);
  }
  // Tarjan's strongly connected components (recursion is fine: the graph has a few hundred files).
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v)!) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc = new Set<string>();
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.add(w);
    } while (w !== v);
    if (scc.size > 1 || next.get(v)!.includes(v)) cycles.push(cyclePath(v, scc, next));
  };
  for (const v of next.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

/** One concrete cycle through `start` inside its component, by breadth-first search back to it. */
function cyclePath(start: string, scc: Set<string>, next: Map<string, string[]>): string {
  const parent = new Map<string, string>();
  const queue = [start];
  while (queue.length) {
    const v = queue.shift()!;
    for (const w of next.get(v)!) {
      if (w === start) {
        const path = [start];
        for (let u = v; u !== start; u = parent.get(u)!) path.splice(1, 0, u);
        return [...path, start].join(' -> ');
      }
      if (scc.has(w) && !parent.has(w)) {
        parent.set(w, v);
        queue.push(w);
      }
    }
  }
  return [...scc].join(', ');
}

function repoEdges(): { files: string[]; edges: Edge[] } {
  const files = LAYERS.flatMap((l) => sources(l));
  return { files, edges: files.flatMap((from) => importsOf(from).map((to) => ({ from, to }))) };
}

test('the checker flags each broken rule and a cycle (synthetic imports)', (t) => {
  t.deepEqual(
    layerViolations([
      { from: 'proto/wire.ts', to: 'server/x.ts' },
      { from: 'native/index.ts', to: 'server/x.ts' },
      { from: 'native/index.ts', to: 'clients/sdk/index.ts' },
      { from: 'clients/sdk/gateway.ts', to: 'server/x.ts' },
      { from: 'clients/sdk/gateway.ts', to: 'server/cli/index.ts' },
      { from: 'server/peers.ts', to: 'clients/sdk/index.ts' },
      { from: 'server/cli/index.ts', to: 'clients/sdk/gateway.ts' },
      { from: 'server/x.ts', to: 'test/helpers/harness.ts' },
    ]).length,
    8,
  );
  t.deepEqual(
    layerViolations([
      { from: 'server/x.ts', to: 'proto/errors.ts' },
      { from: 'server/x.ts', to: 'native/index.ts' },
      { from: 'clients/sdk/x.ts', to: 'native/trace.ts' },
      { from: 'native/pump-hub.ts', to: 'native/index.ts' },
      { from: 'native/index.ts', to: 'proto/errors.ts' },
      { from: 'server/cli/index.ts', to: 'clients/sidecar/index.ts' },
      { from: 'server/cli/index.ts', to: 'server/gateway.ts' },
    ]),
    [],
  );
  t.deepEqual(
    importCycles([
      { from: 'a.ts', to: 'b.ts' },
      { from: 'b.ts', to: 'c.ts' },
      { from: 'c.ts', to: 'a.ts' },
      { from: 'c.ts', to: 'd.ts' },
      { from: 'e.ts', to: 'e.ts' },
    ]).sort(),
    ['a.ts -> b.ts -> c.ts -> a.ts', 'e.ts -> e.ts'],
  );
  t.deepEqual(importCycles([{ from: 'a.ts', to: 'b.ts' }, { from: 'a.ts', to: 'c.ts' }, { from: 'b.ts', to: 'c.ts' }]), []);
});

test('every import under proto/, native/, server/ and clients/ points down the layers', (t) => {
  const { files, edges } = repoEdges();
  // Not vacuous: the scan sees the tree and the imports everyone knows are there.
  t.true(files.length > 50, `only ${files.length} files scanned`);
  t.true(edges.some((e) => e.from === 'server/cli/index.ts' && e.to === 'clients/sdk/index.ts'));
  t.true(edges.some((e) => e.from === 'native/index.ts' && e.to === 'proto/errors.ts'));
  for (const e of edges) t.true(existsSync(join(ROOT, e.to)), `${e.from} imports ${e.to}, which does not exist`);
  const bad = layerViolations(edges);
  t.deepEqual(bad, [], `imports that break the layering:\n${bad.join('\n')}`);
});

test('no import cycles between files', (t) => {
  const cycles = importCycles(repoEdges().edges);
  t.deepEqual(cycles, [], `import cycles:\n${cycles.join('\n')}`);
});
