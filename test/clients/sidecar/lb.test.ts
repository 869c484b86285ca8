/**
 * Load-balancing policies and outlier ejection as units: the Maglev table
 * over many synthetic keys (balance, stickiness, minimal disruption), round
 * robin and least connections over synthetic endpoints, and the growth of
 * ejection times.
 */
import test from 'ava';
import { Endpoint } from '../../../clients/sidecar/endpoint.js';
import { LeastConnectionsLoadBalancer, RoundRobinLoadBalancer } from '../../../clients/sidecar/lb.js';
import { MaglevLoadBalancer, MaglevTable } from '../../../clients/sidecar/lb-maglev.js';
import { OutlierDetector } from '../../../clients/sidecar/outlier.js';

/** Synthetic client addresses: enough for shares to be within a percent or two. */
const KEY_COUNT = 60_000;
const KEYS = Array.from({ length: KEY_COUNT }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
const BACKENDS = ['tcp://10.1.0.1:5432', 'tcp://10.1.0.2:5432', 'tcp://10.1.0.3:5432'];
const TABLE_SIZE = 65537;

function shares(table: MaglevTable, keys: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const k of keys) {
    const b = table.lookup(k)!;
    counts.set(b, (counts.get(b) ?? 0) + 1);
  }
  return counts;
}

function endpoints(n: number): Endpoint[] {
  return Array.from({ length: n }, (_, i) => new Endpoint(`tcp://10.2.0.${i + 1}:80`, 'unit', false, () => {}));
}

test('maglev: every slot filled, each backend owns about a third of the table', (t) => {
  const table = new MaglevTable(BACKENDS, TABLE_SIZE);
  const slots = new Map<number, number>();
  for (let s = 0; s < TABLE_SIZE; s++) {
    const b = table.at(s);
    t.true(b >= 0, `slot ${s} empty`);
    slots.set(b, (slots.get(b) ?? 0) + 1);
  }
  for (const [, n] of slots) t.true(Math.abs(n / TABLE_SIZE - 1 / 3) < 0.01, `share ${n / TABLE_SIZE}`);
});

test('maglev: keys spread evenly (each backend within 3 points of 1/3)', (t) => {
  const counts = shares(new MaglevTable(BACKENDS, TABLE_SIZE), KEYS);
  t.is(counts.size, 3);
  for (const [b, n] of counts) t.true(Math.abs(n / KEY_COUNT - 1 / 3) < 0.03, `${b}: ${n}`);
});

test('maglev: the same key always maps to the same backend, whatever the order backends are listed in', (t) => {
  const a = new MaglevTable(BACKENDS, TABLE_SIZE);
  const b = new MaglevTable([...BACKENDS].reverse(), TABLE_SIZE);
  let same = 0;
  for (const k of KEYS) if (a.lookup(k) === b.lookup(k) && a.lookup(k) === a.lookup(k)) same++;
  t.is(same, KEY_COUNT);
});

test('maglev: removing one of three backends remaps about a third of the keys, almost only its own', (t) => {
  const before = new MaglevTable(BACKENDS, TABLE_SIZE);
  const removed = BACKENDS[1]!;
  const after = new MaglevTable(BACKENDS.filter((b) => b !== removed), TABLE_SIZE);
  let moved = 0;
  let movedFromSurvivors = 0;
  let onSurvivors = 0;
  for (const k of KEYS) {
    const was = before.lookup(k)!;
    const now = after.lookup(k)!;
    t.not(now, removed);
    if (was !== now) moved++;
    if (was !== removed) {
      onSurvivors++;
      if (was !== now) movedFromSurvivors++;
    }
  }
  const fraction = moved / KEY_COUNT;
  t.true(fraction > 0.29 && fraction < 0.4, `moved ${fraction}`);
  // Maglev is not perfectly minimal, but with 65537 slots over 3 backends nearly so.
  t.true(movedFromSurvivors / onSurvivors < 0.03, `survivors' keys moved: ${movedFromSurvivors / onSurvivors}`);
});

test('maglev: adding a fourth backend moves about a quarter of the keys', (t) => {
  const before = new MaglevTable(BACKENDS, TABLE_SIZE);
  const after = new MaglevTable([...BACKENDS, 'tcp://10.1.0.4:5432'], TABLE_SIZE);
  let moved = 0;
  for (const k of KEYS) if (before.lookup(k) !== after.lookup(k)) moved++;
  t.true(moved / KEY_COUNT > 0.2 && moved / KEY_COUNT < 0.32, `moved ${moved / KEY_COUNT}`);
});

test('maglev: a table size not above the backend count is refused', (t) => {
  t.throws(() => new MaglevTable(['a', 'b', 'c'], 3), { instanceOf: RangeError });
});

test('maglev balancer: sticky per key, and a retry goes to another endpoint', (t) => {
  const eps = endpoints(3);
  const lb = new MaglevLoadBalancer(TABLE_SIZE);
  for (const k of KEYS.slice(0, 500)) {
    const first = lb.pick(eps, { hashKey: k })!;
    t.is(lb.pick(eps, { hashKey: k }), first);
    const retry = lb.pick(eps, { hashKey: k, exclude: new Set([first]) })!;
    t.not(retry, first);
    t.is(lb.pick(eps, { hashKey: k, exclude: new Set([first, retry]) }), eps.find((e) => e !== first && e !== retry));
  }
  t.is(lb.pick(eps, { hashKey: 'x', exclude: new Set(eps) }), undefined);
  t.is(lb.pick([], { hashKey: 'x' }), undefined);
});

test('round robin: exact shares and retries skip the tried endpoint', (t) => {
  const eps = endpoints(3);
  const lb = new RoundRobinLoadBalancer();
  const counts = new Map<Endpoint, number>();
  for (let i = 0; i < 300; i++) {
    const e = lb.pick(eps, { hashKey: '' })!;
    counts.set(e, (counts.get(e) ?? 0) + 1);
  }
  t.deepEqual([...counts.values()], [100, 100, 100]);
  const first = lb.pick(eps, { hashKey: '' })!;
  t.not(lb.pick(eps, { hashKey: '', exclude: new Set([first]) }), first);
  t.is(lb.pick(eps, { hashKey: '', exclude: new Set(eps) }), undefined);
});

test('least connections: picks the least loaded, ties in rotation', (t) => {
  const eps = endpoints(3);
  const lb = new LeastConnectionsLoadBalancer();
  eps[0]!.stats.active = 5;
  eps[1]!.stats.active = 2;
  eps[2]!.stats.active = 2;
  eps[2]!.stats.pending = 1;
  t.is(lb.pick(eps, { hashKey: '' }), eps[1]);
  t.is(lb.pick(eps, { hashKey: '', exclude: new Set([eps[1]!]) }), eps[2]);
  for (const e of eps) e.stats.active = e.stats.pending = 0;
  const seen = new Set<Endpoint>();
  for (let i = 0; i < 3; i++) seen.add(lb.pick(eps, { hashKey: '' })!);
  t.is(seen.size, 3);
});

test('outlier detection: ejection time grows with each ejection up to the cap, and decays', (t) => {
  let now = 1_000_000;
  const eps = endpoints(3);
  const ep = eps[0]!;
  const ejections: number[] = [];
  const det = new OutlierDetector(
    { consecutive_failures: 2, base_ejection_ms: 1000, max_ejection_ms: 3500, max_ejection_percent: 10 },
    () => eps,
    { onEject: (_e, ms) => ejections.push(ms), onUneject: () => {} },
    () => now,
  );
  t.teardown(() => det.stop());
  for (let round = 0; round < 5; round++) {
    t.false(det.onFailure(ep));
    t.true(det.onFailure(ep));
    t.true(ep.ejected);
    t.false(ep.available);
    det.uneject(ep, 'test');
    t.false(ep.ejected);
  }
  t.deepEqual(ejections, [1000, 2000, 3000, 3500, 3500]);
  t.is(ep.stats.ejections, 5);
  // Five base periods of good behaviour take the multiplier from 5 to 0.
  now += 5 * 1000;
  det.onFailure(ep);
  det.onFailure(ep);
  t.is(ejections.at(-1), 1000);
  det.uneject(ep, 'test');
  // A success resets the consecutive count.
  det.onFailure(ep);
  det.onSuccess(ep);
  t.false(det.onFailure(ep));
});

test('outlier detection: at most max_ejection_percent ejected, but always one may be', (t) => {
  const eps = endpoints(3);
  const det = new OutlierDetector({ consecutive_failures: 1, base_ejection_ms: 60_000, max_ejection_ms: 60_000, max_ejection_percent: 10 }, () => eps, {
    onEject: () => {},
    onUneject: () => {},
  });
  t.teardown(() => det.stop());
  t.true(det.onFailure(eps[0]!));
  t.false(det.onFailure(eps[1]!));
  t.false(eps[1]!.ejected);
  det.update({ consecutive_failures: 1, base_ejection_ms: 60_000, max_ejection_ms: 60_000, max_ejection_percent: 100 });
  t.true(det.onFailure(eps[1]!));
});
