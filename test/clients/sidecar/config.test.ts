/**
 * The sidecar's config schema: defaults, and errors that name the bad key by
 * its path (and the listener or cluster it is in).
 */
import test from 'ava';
import { InvalidArgumentError } from '../../../proto/errors.js';
import { parseListenerAddress, parseSidecarConfig, validateSidecarConfig } from '../../../clients/sidecar/sidecar-config.js';

const MINIMAL = `
gateway: { target: 127.0.0.1:7070 }
listeners:
  - { name: db, address: 15432, cluster: db }
clusters:
  - name: db
    endpoints: [tcp://10.0.0.1:5432, tcp://10.0.0.2:5432]
`;

function base(): Record<string, any> {
  return {
    gateway: { target: '127.0.0.1:7070' },
    listeners: [{ name: 'db', address: '127.0.0.1:15432', cluster: 'db' }],
    clusters: [{ name: 'db', endpoints: ['tcp://10.0.0.1:5432'] }],
  };
}

function errorOf(tree: unknown): string {
  try {
    validateSidecarConfig(tree, 'test');
  } catch (err) {
    if (!(err instanceof InvalidArgumentError)) throw err;
    return err.message;
  }
  throw new Error('config was accepted');
}

test('a minimal config gets Envoy-like defaults and a loopback listener', (t) => {
  const cfg = parseSidecarConfig(MINIMAL, 'inline');
  const c = cfg.clusters[0]!;
  t.is(c.lb_policy, 'round_robin');
  t.is(c.connect_timeout_ms, 5000);
  t.is(c.retries, 0);
  t.is(c.healthy_panic_threshold, 50);
  t.deepEqual(c.circuit_breakers, { max_connections: 1024, max_pending: 1024 });
  t.is(c.maglev.table_size, 65537);
  t.is(c.health_check, undefined);
  t.is(cfg.listeners[0]!.idle_timeout_ms, 3_600_000);
  t.deepEqual(parseListenerAddress(cfg.listeners[0]!.address), { host: '127.0.0.1', port: 15432 });
  t.is(cfg.shutdown.drain_timeout_ms, 10_000);
  t.is(cfg.telemetry.metrics, '127.0.0.1:9901');
});

test('sub-section defaults fill in', (t) => {
  const tree = base();
  tree['clusters'][0].health_check = { interval_ms: 100, send: { hex: '0a0b' }, expect: { text: 'ok' } };
  tree['clusters'][0].outlier_detection = {};
  const c = validateSidecarConfig(tree, 'test').clusters[0]!;
  t.deepEqual(c.health_check, { interval_ms: 100, timeout_ms: 1000, unhealthy_threshold: 3, healthy_threshold: 2, send: { hex: '0a0b' }, expect: { text: 'ok' } });
  t.deepEqual(c.outlier_detection, { consecutive_failures: 5, base_ejection_ms: 30_000, max_ejection_ms: 300_000, max_ejection_percent: 10 });
});

const BAD: Array<[string, (t: Record<string, any>) => void, RegExp]> = [
  ['unknown lb policy', (c) => (c['clusters'][0].lb_policy = 'random'), /clusters\.0\.lb_policy: .*\(cluster "db"\)/],
  ['misspelt key', (c) => (c['clusters'][0].conect_timeout_ms = 5), /clusters\.0\.conect_timeout_ms: unknown key/],
  ['listener naming a missing cluster', (c) => (c['listeners'][0].cluster = 'nope'), /listeners\.0\.cluster: no cluster named "nope"/],
  ['maglev table not prime', (c) => (c['clusters'][0].maglev = { table_size: 65536 }), /clusters\.0\.maglev\.table_size: must be a prime/],
  ['endpoint that is not a tcp URI', (c) => (c['clusters'][0].endpoints = ['udp://10.0.0.1:53']), /clusters\.0\.endpoints\.0: .*tcp/],
  ['endpoint without port', (c) => (c['clusters'][0].endpoints = ['tcp://10.0.0.1']), /clusters\.0\.endpoints\.0:/],
  ['both endpoints and dns', (c) => (c['clusters'][0].dns = { name: 'db.internal', port: 5432 }), /clusters\.0\.endpoints: give exactly one of endpoints/],
  ['neither endpoints nor dns', (c) => delete c['clusters'][0].endpoints, /clusters\.0\.endpoints: give exactly one/],
  ['bad listener address', (c) => (c['listeners'][0].address = 'localhost'), /listeners\.0\.address: .*host:port/],
  ['negative retries', (c) => (c['clusters'][0].retries = -1), /clusters\.0\.retries:/],
  ['zero health-check interval', (c) => (c['clusters'][0].health_check = { interval_ms: 0 }), /clusters\.0\.health_check\.interval_ms:/],
  ['payload with both text and hex', (c) => (c['clusters'][0].health_check = { send: { text: 'a', hex: '00' } }), /clusters\.0\.health_check\.send: give exactly one of text or hex/],
  ['odd hex payload', (c) => (c['clusters'][0].health_check = { expect: { hex: 'abc' } }), /clusters\.0\.health_check\.expect\.hex: expected an even number/],
  ['max ejection below base', (c) => (c['clusters'][0].outlier_detection = { base_ejection_ms: 1000, max_ejection_ms: 10 }), /clusters\.0\.outlier_detection\.max_ejection_ms:/],
  ['duplicate cluster', (c) => c['clusters'].push({ name: 'db', endpoints: ['tcp://a:1'] }), /clusters\.1\.name: duplicate cluster name "db"/],
  ['two listeners on one address', (c) => c['listeners'].push({ name: 'b', address: '127.0.0.1:15432', cluster: 'db' }), /listeners\.1\.address: address 127\.0\.0\.1:15432 is also used by listeners\.0/],
  ['missing gateway target', (c) => delete c['gateway'].target, /gateway\.target:/],
  ['unknown transport', (c) => (c['gateway'].transports = ['carrier-pigeon']), /gateway\.transports\.0:/],
];

for (const [what, mutate, pattern] of BAD) {
  test(`rejected, naming the key: ${what}`, (t) => {
    const tree = base();
    mutate(tree);
    t.regex(errorOf(tree), pattern);
  });
}

test('every problem is listed, not only the first', (t) => {
  const tree = base();
  tree['clusters'][0].lb_policy = 'random';
  tree['listeners'][0].idle_timeout_ms = -5;
  const msg = errorOf(tree);
  t.regex(msg, /clusters\.0\.lb_policy/);
  t.regex(msg, /listeners\.0\.idle_timeout_ms/);
});

test('YAML syntax errors name the line', (t) => {
  const err = t.throws(() => parseSidecarConfig('gateway: {target: x\nlisteners: [', 'bad.yaml'));
  t.regex(err!.message, /cannot parse bad\.yaml at line \d+/);
});
