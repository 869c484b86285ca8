import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { parse as parseYaml } from 'yaml';
import {
  DEFAULT_CONFIG_YAML,
  loadConfig,
  mergeConfig,
  splitListenAddress,
  validateConfig,
  type LoadConfigOptions,
} from '../../server/config.js';
import { InvalidArgumentError } from '../../proto/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'sockgate-config-test-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

let fileCounter = 0;
/** Write `text` to a fresh YAML file and return its path. */
function yamlFile(text: string): string {
  const path = join(dir, `config-${++fileCounter}.yaml`);
  writeFileSync(path, text);
  return path;
}

/** Expect loadConfig(options) to throw an InvalidArgumentError whose message matches every pattern. */
function fails(t: ExecutionContext, options: LoadConfigOptions, ...patterns: RegExp[]): string {
  const err = t.throws(() => loadConfig(options), { instanceOf: InvalidArgumentError });
  for (const p of patterns) t.regex(err?.message ?? '', p);
  return err?.message ?? '';
}

const LOOPBACK_DESTINATIONS = new Set(['127.0.0.0/8', '::1/128', 'localhost']);

test('the embedded default loads and listens on loopback only', (t) => {
  const c = loadConfig();
  for (const [name, addr] of Object.entries(c.listen)) {
    const split = splitListenAddress(addr);
    t.true('host' in split, name);
    if ('host' in split) t.is(split.host, '127.0.0.1', `listen.${name}`);
  }
  t.deepEqual(splitListenAddress(c.listen.control), { host: '127.0.0.1', port: 7070 });
  t.deepEqual(splitListenAddress(c.listen.data), { host: '127.0.0.1', port: 7071 });
  t.deepEqual(splitListenAddress(c.listen.metrics), { host: '127.0.0.1', port: 9464 });
  t.is(c.tls, undefined);
  t.deepEqual(c.identities, []);
});

test('the embedded default rules allow loopback destinations only', (t) => {
  const c = loadConfig();
  t.true(c.rules.length > 0);
  for (const rule of c.rules) {
    if (rule.action !== 'allow') continue;
    for (const d of rule.destinations) t.true(LOOPBACK_DESTINATIONS.has(d), `rule "${rule.name}" allows ${d}`);
  }
  // (Two rules since issue 12: loopback connects, and IPv4-loopback listens; the union is still exactly loopback.)
  t.deepEqual([...new Set(c.rules.flatMap((r) => r.destinations))].sort(), [...LOOPBACK_DESTINATIONS].sort());
  // Schema defaults are filled in for the rule.
  t.deepEqual(c.rules[0]!.identities, ['*']);
  t.deepEqual(c.rules[0]!.ports, ['1-65535']);
});

test('the embedded default is what DEFAULT_CONFIG_YAML says, validated', (t) => {
  t.deepEqual(loadConfig(), validateConfig(parseYaml(DEFAULT_CONFIG_YAML), 'test'));
  t.is(loadConfig().limits.max_sockets, 65536);
});

test('a file overrides the default key by key; lists replace', (t) => {
  const file = yamlFile(`
limits:
  max_sockets: 10
listen:
  control: "[::1]:8080"
rules:
  - name: only-dns
    action: allow
    protocols: [udp]
    destinations: [10.0.0.53]
    ports: [53]
`);
  const c = loadConfig({ file });
  t.is(c.limits.max_sockets, 10);
  t.is(c.limits.max_sockets_per_identity, 4096, 'sibling key kept from the default');
  t.is(c.listen.control, '[::1]:8080');
  t.is(c.listen.data, '127.0.0.1:7071');
  t.is(c.rules.length, 1);
  t.is(c.rules[0]!.name, 'only-dns');
  t.deepEqual(c.rules[0]!.directions, ['connect', 'listen', 'bind']);
});

test('an empty file changes nothing', (t) => {
  t.deepEqual(loadConfig({ file: yamlFile('') }), loadConfig());
  t.deepEqual(loadConfig({ file: yamlFile('# only a comment\n') }), loadConfig());
});

test('SOCKGATE_SECTION__KEY environment variables override the file', (t) => {
  t.is(loadConfig({ env: { SOCKGATE_LIMITS__MAX_SOCKETS: '5' } }).limits.max_sockets, 5);
  const file = yamlFile('limits:\n  max_sockets: 10\n  max_sockets_per_identity: 3\n');
  const c = loadConfig({ file, env: { SOCKGATE_LIMITS__MAX_SOCKETS: '5' } });
  t.is(c.limits.max_sockets, 5);
  t.is(c.limits.max_sockets_per_identity, 3);
  const e = loadConfig({
    env: {
      SOCKGATE_LISTEN__CONTROL: '0.0.0.0:7070',
      SOCKGATE_TRANSPORTS__ENABLED: '[tcp, grpc]',
      SOCKGATE_ANONYMOUS__ENABLED: 'false',
      // Not config: no "__", or not ours.
      SOCKGATE_TRACE: 'all',
      LIMITS__MAX_SOCKETS: '1',
      PATH: '/usr/bin',
    },
  });
  t.is(e.listen.control, '0.0.0.0:7070');
  t.deepEqual(e.transports.enabled, ['tcp', 'grpc']);
  t.false(e.anonymous.enabled);
  t.is(e.limits.max_sockets, 65536);
});

test('--set flags override the environment', (t) => {
  const c = loadConfig({ env: { SOCKGATE_LIMITS__MAX_SOCKETS: '5' }, sets: ['limits.max_sockets=7'] });
  t.is(c.limits.max_sockets, 7);
  const d = loadConfig({ sets: ['telemetry.log_level=debug', 'transports.enabled=[tcp]', 'listen.metrics=""'] });
  t.is(d.telemetry.log_level, 'debug');
  t.deepEqual(d.transports.enabled, ['tcp']);
  t.is(d.listen.metrics, '');
});

test('a --set without key=value is refused', (t) => {
  fails(t, { sets: ['limits.max_sockets'] }, /--set "limits\.max_sockets": expected key\.path=value/);
  fails(t, { sets: ['=5'] }, /expected key\.path=value/);
});

test('an unknown key is refused, naming its full path', (t) => {
  fails(t, { file: yamlFile('limits:\n  max_socket: 5\n') }, /limits\.max_socket: unknown key/);
  fails(t, { file: yamlFile('bogus: 1\n') }, /\n {2}bogus: unknown key/);
  fails(t, { env: { SOCKGATE_LIMTS__MAX_SOCKETS: '5' } }, /limts: unknown key/, /environment/);
  fails(t, { sets: ['socket.nodelay=true'] }, /socket\.nodelay: unknown key/, /--set flags/);
  fails(t, { overrides: { rules: [{ name: 'r', action: 'allow', destinations: ['1.1.1.1'], port: [80] }] } }, /rules\.0\.port: unknown key/);
});

test('a value of the wrong type is refused, naming the key path and the source', (t) => {
  const file = yamlFile('limits:\n  max_sockets: lots\n');
  fails(t, { file }, /limits\.max_sockets: /, new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  fails(t, { env: { SOCKGATE_LIMITS__MAX_SOCKETS: 'abc' } }, /limits\.max_sockets: /);
  fails(t, { sets: ['limits.max_sockets=-1'] }, /limits\.max_sockets: /);
  fails(t, { sets: ['limits.max_sockets=1.5'] }, /limits\.max_sockets: /);
  fails(t, { sets: ['anonymous.enabled=yes please'] }, /anonymous\.enabled: /);
  fails(t, { sets: ['transports.enabled=[tcp, carrier-pigeon]'] }, /transports\.enabled\.1: /);
  fails(t, { sets: ['transports.enabled=[]'] }, /transports\.enabled: /);
  fails(t, { overrides: { rules: [{ name: 'r', action: 'permit', destinations: ['1.1.1.1'] }] } }, /rules\.0\.action: /);
  fails(t, { overrides: { identities: [{ name: 'a', tokens: ['short'] }] } }, /identities\.0\.tokens\.0: .*16 characters/);
});

test('every bad key is listed, not just the first', (t) => {
  fails(t, { sets: ['limits.max_sockets=x', 'socket.connect_timeout_ms=0'] }, /limits\.max_sockets: /, /socket\.connect_timeout_ms: /);
});

test('a bad listen address is refused, naming the key', (t) => {
  for (const bad of ['127.0.0.1', '127.0.0.1:', ':7070', '127.0.0.1:99999', '127.0.0.1:65536', 'localhost:http', '::1:7070', '[::g]:7070', '[1.2.3.4]:7070', '[::1]', 'unix:', 'a b:1']) {
    fails(t, { overrides: { listen: { control: bad } } }, /listen\.control: expected host:port/);
  }
  for (const good of ['[::1]:7070', '0.0.0.0:0', '127.0.0.1:65535', 'gateway.local:7070', 'unix:/run/sockgate.sock', '']) {
    t.is(loadConfig({ overrides: { listen: { data: good } } }).listen.data, good, good);
  }
});

test('unparsable YAML names the file and the line', (t) => {
  const file = yamlFile('limits:\n  max_sockets: 5\n max_sockets_per_identity: 3\n');
  const message = fails(t, { file }, /cannot parse /, /at line 3\b/);
  t.true(message.includes(file));
  const dup = yamlFile('listen:\n  control: 127.0.0.1:1\n\nlisten:\n  data: 127.0.0.1:2\n');
  t.true(fails(t, { file: dup }, /at line 4\b/).includes(dup));
});

test('a YAML file that is not a mapping is refused at the top level', (t) => {
  fails(t, { file: yamlFile('- a\n- b\n') }, /\(top level\): /);
  fails(t, { file: yamlFile('just a string\n') }, /\(top level\): /);
});

test('an unreadable file is refused, naming it', (t) => {
  const missing = join(dir, 'does-not-exist.yaml');
  t.true(fails(t, { file: missing }, /cannot read config file/).includes(missing));
});

test('mergeConfig merges objects key by key and replaces everything else', (t) => {
  t.deepEqual(mergeConfig({ a: { b: 1, c: 2 }, d: [1, 2] }, { a: { c: 3 }, d: [9] }), { a: { b: 1, c: 3 }, d: [9] });
  t.deepEqual(mergeConfig({ a: 1 }, undefined), { a: 1 });
  t.deepEqual(mergeConfig({ a: { b: 1 } }, { a: null }), { a: null });
});
