import { createHash } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import test, { type ExecutionContext } from 'ava';
import { loadConfig, type Config } from '../../server/config.js';
import { InvalidArgumentError, PolicyDeniedError, UnauthenticatedError } from '../../proto/errors.js';
import { Policy, type DestinationCheck, type Identity } from '../../server/policy.js';

const TOKEN_ALICE = 'alice-token-0123456789abcdef';
const TOKEN_BOB = 'bob-secret-token-fedcba9876543210';
const BOB_CN = 'bob.clients.example';

const sha256hex = (s: string): string => createHash('sha256').update(s).digest('hex');

/** The embedded default with `overrides` merged over it (arrays replace), validated. */
function configWith(overrides: Record<string, unknown>): Config {
  return loadConfig({ overrides });
}

const IDENTITIES = [
  { name: 'alice', tokens: [TOKEN_ALICE], admin: true, max_sockets: 10, transports: ['tcp', 'shm', 'rdma'] },
  { name: 'bob', tokens_sha256: [sha256hex(TOKEN_BOB)], mtls_cn: BOB_CN, uids: [1000] },
  { name: 'carol', uids: [1001], mtls_cn: 'carol' },
];

const RULES = [
  { name: 'deny-metadata', action: 'deny', destinations: ['169.254.169.254'], ports: [80] },
  { name: 'deny-private-db', action: 'deny', destinations: ['10.1.0.0/16'] },
  { name: 'allow-private', action: 'allow', destinations: ['10.0.0.0/8', 'fd00::/8'], ports: ['1024-65535', 443] },
  { name: 'allow-web', action: 'allow', protocols: ['tcp'], destinations: ['*.example.com', 'api.test'], ports: [443] },
  { name: 'allow-dns', action: 'allow', protocols: ['udp'], destinations: ['8.8.8.8', '2001:4860:4860::8888'], ports: [53] },
  { name: 'bob-loopback', action: 'allow', identities: ['bob'], directions: ['connect'], destinations: ['127.0.0.0/8', '::1'] },
  { name: 'alice-listen-any', action: 'allow', identities: ['alice'], directions: ['listen', 'bind'], destinations: ['0.0.0.0/0', '::/0'], ports: ['0-65535'] },
  { name: 'carol-listen-loopback', action: 'allow', identities: ['carol'], directions: ['listen'], destinations: ['127.0.0.0/8', '0.0.0.0/8'], ports: ['0-65535'] },
];

function basePolicy(extra: Record<string, unknown> = {}): Policy {
  return new Policy(
    configWith({
      transports: { enabled: ['shm', 'tcp', 'grpc'] },
      limits: { max_sockets_per_identity: 77 },
      anonymous: { enabled: false },
      identities: IDENTITIES,
      rules: RULES,
      ...extra,
    }),
  );
}

const policy = basePolicy();
const alice = policy.identify({ authorization: `Bearer ${TOKEN_ALICE}` });
const bob = policy.identify({ authorization: `Bearer ${TOKEN_BOB}` });
const carol = policy.identify({ peerUid: 1001 });

function dest(over: Partial<DestinationCheck> & { address: string }): DestinationCheck {
  return { direction: 'connect', protocol: 'tcp', host: over.address, port: 8080, ...over };
}

function allowed(t: ExecutionContext, p: Policy, id: Identity, d: DestinationCheck, rule: string): void {
  t.deepEqual(p.check(id, d), { rule }, `${d.direction} ${d.protocol} ${d.host}(${d.address}):${d.port} for ${id.name}`);
}

function denied(t: ExecutionContext, p: Policy, id: Identity, d: DestinationCheck, rule: string): PolicyDeniedError {
  const err = t.throws(() => p.check(id, d), { instanceOf: PolicyDeniedError }, `${d.direction} ${d.protocol} ${d.host}(${d.address}):${d.port} for ${id.name}`);
  t.is(err?.rule, rule);
  return err!;
}

function constructionError(t: ExecutionContext, overrides: Record<string, unknown>, message: RegExp | string): void {
  const config = configWith({ anonymous: { enabled: false }, ...overrides });
  const err = t.throws(() => new Policy(config), { instanceOf: InvalidArgumentError });
  if (typeof message === 'string') t.is(err?.message, message);
  else t.regex(err?.message ?? '', message);
}

// ---- identify ----

test('a clear bearer token maps to its identity with its limits and transports', (t) => {
  t.is(alice.name, 'alice');
  t.is(alice.source, 'token');
  t.true(alice.admin);
  t.is(alice.maxSockets, 10);
  // Her own list [tcp, shm, rdma] intersected with the enabled [shm, tcp, grpc].
  t.deepEqual([...alice.transports].sort(), ['shm', 'tcp']);
});

test('the Bearer scheme is case-insensitive and surrounding spaces are tolerated', (t) => {
  for (const auth of [`bearer ${TOKEN_ALICE}`, `BEARER ${TOKEN_ALICE}`, `Bearer   ${TOKEN_ALICE}  `]) {
    t.is(policy.identify({ authorization: auth }).name, 'alice', auth);
  }
});

test('a token configured by sha256 digest maps to its identity with default limits', (t) => {
  t.is(bob.name, 'bob');
  t.is(bob.source, 'token');
  t.false(bob.admin);
  t.is(bob.maxSockets, 77);
  t.deepEqual([...bob.transports].sort(), ['grpc', 'shm', 'tcp']);
});

test('an unknown token is refused without echoing it, even when other credentials would match', (t) => {
  const secret = 'not-a-known-token-5f2b9c0d1e';
  for (const creds of [
    { authorization: `Bearer ${secret}` },
    { authorization: `Bearer ${secret}`, tlsCommonName: BOB_CN, peerUid: 1001 },
    { authorization: `Bearer ${TOKEN_ALICE}x` },
    { authorization: `Bearer ${TOKEN_ALICE.slice(0, -1)}` },
  ]) {
    const err = t.throws(() => policy.identify(creds), { instanceOf: UnauthenticatedError });
    t.is(err?.grpcStatus, status.UNAUTHENTICATED);
    t.false(err!.message.includes(creds.authorization.slice('Bearer '.length)));
  }
});

test('a malformed authorization header is refused, even with anonymous access enabled', (t) => {
  const anonPolicy = basePolicy({ anonymous: { enabled: true } });
  for (const authorization of ['', 'Bearer', 'Bearer ', `Basic ${TOKEN_ALICE}`, `Token ${TOKEN_ALICE}`, `Bearer ${TOKEN_ALICE} extra`, TOKEN_ALICE, `Bearer x${'y'.repeat(10000)}`]) {
    for (const p of [policy, anonPolicy]) {
      const err = t.throws(() => p.identify({ authorization }), { instanceOf: UnauthenticatedError }, JSON.stringify(authorization.slice(0, 40)));
      t.false(err!.message.includes(TOKEN_ALICE));
    }
  }
});

test('the token is taken before the mTLS common name and the peer uid', (t) => {
  const id = policy.identify({ authorization: `Bearer ${TOKEN_ALICE}`, tlsCommonName: BOB_CN, peerUid: 1001 });
  t.is(id.name, 'alice');
  t.is(id.source, 'token');
});

test('an mTLS common name maps to its identity, before the peer uid', (t) => {
  const id = policy.identify({ tlsCommonName: BOB_CN });
  t.is(id.name, 'bob');
  t.is(id.source, 'mtls');
  t.is(id.maxSockets, 77);
  const both = policy.identify({ tlsCommonName: BOB_CN, peerUid: 1001 });
  t.is(both.name, 'bob');
  t.is(both.source, 'mtls');
});

test('a peer uid maps to its identity; an unknown common name is refused, never falls through to it', (t) => {
  t.is(carol.name, 'carol');
  t.is(carol.source, 'peercred');
  const id = policy.identify({ peerUid: 1000 });
  t.is(id.name, 'bob');
  t.is(id.source, 'peercred');
  // Issue 12: a client certificate whose CN maps to no identity used to fall through to the uid (or anonymous).
  const err = t.throws(() => policy.identify({ tlsCommonName: 'stranger', peerUid: 1000 }), { instanceOf: UnauthenticatedError });
  t.regex(err?.message ?? '', /client certificate CN "stranger" maps to no identity/);
});

test('without recognized credentials and with anonymous disabled, identify throws', (t) => {
  for (const creds of [{}, { tlsCommonName: 'stranger' }, { peerUid: 4242 }, { tlsCommonName: '' }]) {
    const err = t.throws(() => policy.identify(creds), { instanceOf: UnauthenticatedError });
    t.is(err?.grpcStatus, status.UNAUTHENTICATED);
  }
});

test('with anonymous enabled, callers without credentials are "anonymous"', (t) => {
  for (const admin of [true, false]) {
    const p = basePolicy({ anonymous: { enabled: true, admin } });
    // An unmapped client certificate is refused even here (issue 12): it is never silently anonymous.
    for (const tlsCommonName of ['stranger', '']) t.throws(() => p.identify({ tlsCommonName }), { instanceOf: UnauthenticatedError });
    for (const creds of [{}, { peerUid: 4242 }]) {
      const id = p.identify(creds);
      t.is(id.name, 'anonymous');
      t.is(id.source, 'anonymous');
      t.is(id.admin, admin);
      t.is(id.maxSockets, 77);
      t.deepEqual([...id.transports].sort(), ['grpc', 'shm', 'tcp']);
    }
    // Real credentials still win.
    t.is(p.identify({ peerUid: 1001 }).name, 'carol');
  }
});

test('allowsTransport follows the identity list intersected with the enabled transports', (t) => {
  t.true(policy.allowsTransport(alice, 'tcp'));
  t.true(policy.allowsTransport(alice, 'shm'));
  t.false(policy.allowsTransport(alice, 'rdma'), 'in her list but not enabled');
  t.false(policy.allowsTransport(alice, 'grpc'), 'enabled but not in her list');
  t.true(policy.allowsTransport(bob, 'grpc'));
  t.false(policy.allowsTransport(bob, 'rdma'));
});

// ---- check ----

test('an IPv4 CIDR allows addresses inside it, on the rule ports only', (t) => {
  allowed(t, policy, alice, dest({ address: '10.2.3.4', port: 8080 }), 'allow-private');
  allowed(t, policy, alice, dest({ address: '10.255.255.255', port: 1024 }), 'allow-private');
  allowed(t, policy, alice, dest({ address: '10.0.0.1', port: 443 }), 'allow-private');
  allowed(t, policy, alice, dest({ address: '10.0.0.1', port: 65535 }), 'allow-private');
  denied(t, policy, alice, dest({ address: '10.0.0.1', port: 1023 }), 'default-deny');
  denied(t, policy, alice, dest({ address: '10.0.0.1', port: 444 }), 'default-deny');
  denied(t, policy, alice, dest({ address: '11.0.0.1', port: 8080 }), 'default-deny');
  denied(t, policy, alice, dest({ address: '9.255.255.255', port: 8080 }), 'default-deny');
});

test('a deny rule before an allow rule wins, and the error carries rule, code and status', (t) => {
  const err = denied(t, policy, alice, dest({ address: '10.1.2.3', port: 8080 }), 'deny-private-db');
  t.is(err.message, 'connect tcp://10.1.2.3:8080 denied for identity "alice" by rule "deny-private-db"');
  t.is(err.grpcStatus, status.PERMISSION_DENIED);
  t.is(err.code, 'ERR_SOCKGATE_POLICY_DENIED');
  // Outside the /16 the later allow applies.
  allowed(t, policy, alice, dest({ address: '10.2.0.1', port: 8080 }), 'allow-private');
  // A deny rule with a port list only denies those ports.
  denied(t, policy, alice, dest({ address: '169.254.169.254', port: 80 }), 'deny-metadata');
});

test('no matching rule is a denial by "default-deny" that says no rule allows it', (t) => {
  const err = denied(t, policy, alice, dest({ address: '192.0.2.1', host: 'host.invalid', port: 22 }), 'default-deny');
  t.regex(err.message, /no rule allows it/);
  t.regex(err.message, /connect tcp:\/\/host\.invalid:22/);
  t.regex(err.message, /"alice"/);
  t.is(err.grpcStatus, status.PERMISSION_DENIED);
});

test('an IPv6 CIDR allows addresses inside it', (t) => {
  allowed(t, policy, alice, dest({ address: 'fd12:3456::1', port: 5000 }), 'allow-private');
  allowed(t, policy, alice, dest({ address: 'FDFF:FFFF::FFFF', port: 5000 }), 'allow-private');
  denied(t, policy, alice, dest({ address: 'fe80::1', port: 5000 }), 'default-deny');
  denied(t, policy, alice, dest({ address: 'fc00::1', port: 5000 }), 'default-deny');
});

test('IPv4-mapped IPv6 addresses are judged as the IPv4 address', (t) => {
  allowed(t, policy, alice, dest({ address: '::ffff:10.2.3.4', port: 8080 }), 'allow-private');
  denied(t, policy, alice, dest({ address: '::ffff:10.1.0.5', port: 8080 }), 'deny-private-db');
  denied(t, policy, alice, dest({ address: '::ffff:a9fe:a9fe', port: 80 }), 'deny-metadata');
  allowed(t, policy, bob, dest({ address: '::ffff:127.0.0.1', port: 22 }), 'bob-loopback');
  // A mapped prefix in a rule is an IPv4 prefix.
  const p = basePolicy({ rules: [{ name: 'mapped', action: 'allow', destinations: ['::ffff:192.168.0.0/112'] }] });
  allowed(t, p, alice, dest({ address: '192.168.3.4' }), 'mapped');
  allowed(t, p, alice, dest({ address: '::ffff:192.168.3.4' }), 'mapped');
  denied(t, p, alice, dest({ address: '192.169.0.1' }), 'default-deny');
});

test('address matching is family-correct', (t) => {
  const v6only = basePolicy({ rules: [{ name: 'v6', action: 'allow', destinations: ['::/0'] }] });
  allowed(t, v6only, alice, dest({ address: '2001:db8::1' }), 'v6');
  denied(t, v6only, alice, dest({ address: '1.2.3.4' }), 'default-deny');
  denied(t, v6only, alice, dest({ address: '::ffff:1.2.3.4' }), 'default-deny');
  const v4only = basePolicy({ rules: [{ name: 'v4', action: 'allow', destinations: ['0.0.0.0/0'] }] });
  allowed(t, v4only, alice, dest({ address: '1.2.3.4' }), 'v4');
  allowed(t, v4only, alice, dest({ address: '::ffff:1.2.3.4' }), 'v4');
  denied(t, v4only, alice, dest({ address: '::1' }), 'default-deny');
  // ::a00:1 is not 10.0.0.1 (only the ::ffff: form is folded).
  denied(t, policy, alice, dest({ address: '::a00:1', port: 8080 }), 'default-deny');
});

test('host names match case-insensitively, ignoring a trailing dot', (t) => {
  for (const host of ['api.test', 'API.Test', 'api.test.']) {
    allowed(t, policy, alice, dest({ host, address: '203.0.113.7', port: 443 }), 'allow-web');
  }
  denied(t, policy, alice, dest({ host: 'x.api.test', address: '203.0.113.7', port: 443 }), 'default-deny');
  denied(t, policy, alice, dest({ host: 'api.testing', address: '203.0.113.7', port: 443 }), 'default-deny');
  // A host-name entry does not match an address literal host.
  denied(t, policy, alice, dest({ address: '203.0.113.7', port: 443 }), 'default-deny');
});

test('*.domain matches any subdomain but not the domain itself', (t) => {
  for (const host of ['www.example.com', 'a.b.example.com', 'WWW.EXAMPLE.COM.']) {
    allowed(t, policy, alice, dest({ host, address: '203.0.113.7', port: 443 }), 'allow-web');
  }
  for (const host of ['example.com', 'notexample.com', 'example.com.evil.net', 'www.example.co']) {
    denied(t, policy, alice, dest({ host, address: '203.0.113.7', port: 443 }), 'default-deny');
  }
});

test('an address rule still applies to a host name, by the resolved address', (t) => {
  denied(t, policy, alice, dest({ host: 'db.internal', address: '10.1.0.9', port: 5432 }), 'deny-private-db');
  allowed(t, policy, alice, dest({ host: 'app.internal', address: '10.9.0.9', port: 5432 }), 'allow-private');
  // The name allowed by allow-web is still denied if it resolves into the deny range first.
  denied(t, policy, alice, dest({ host: 'www.example.com', address: '10.1.0.1', port: 443 }), 'deny-private-db');
});

test('rules restricted to a protocol do not match the other one', (t) => {
  allowed(t, policy, alice, dest({ protocol: 'udp', address: '8.8.8.8', port: 53 }), 'allow-dns');
  allowed(t, policy, alice, dest({ protocol: 'udp', address: '2001:4860:4860::8888', port: 53 }), 'allow-dns');
  denied(t, policy, alice, dest({ protocol: 'tcp', address: '8.8.8.8', port: 53 }), 'default-deny');
  denied(t, policy, alice, dest({ protocol: 'udp', host: 'api.test', address: '203.0.113.7', port: 443 }), 'default-deny');
});

test('rules restricted to a direction do not match the others', (t) => {
  allowed(t, policy, bob, dest({ address: '127.0.0.1', port: 8080 }), 'bob-loopback');
  denied(t, policy, bob, dest({ direction: 'listen', address: '127.0.0.1', port: 8080 }), 'default-deny');
  denied(t, policy, bob, dest({ direction: 'bind', protocol: 'udp', address: '127.0.0.1', port: 8080 }), 'default-deny');
  allowed(t, policy, carol, dest({ direction: 'listen', address: '127.0.0.1', port: 0 }), 'carol-listen-loopback');
  denied(t, policy, carol, dest({ direction: 'bind', address: '127.0.0.1', port: 0 }), 'default-deny');
});

test('rules restricted to identities apply to those identities only', (t) => {
  allowed(t, policy, bob, dest({ address: '127.0.0.1', port: 22 }), 'bob-loopback');
  allowed(t, policy, bob, dest({ address: '::1', port: 22 }), 'bob-loopback');
  denied(t, policy, alice, dest({ address: '127.0.0.1', port: 22 }), 'default-deny');
  denied(t, policy, carol, dest({ address: '127.0.0.1', port: 22 }), 'default-deny');
  // Identity names the same as bob's from another source are still bob.
  allowed(t, policy, policy.identify({ peerUid: 1000 }), dest({ address: '127.0.0.1', port: 22 }), 'bob-loopback');
  // "anonymous" may be named by a rule.
  const p = basePolicy({
    anonymous: { enabled: true },
    rules: [{ name: 'anon-only', action: 'allow', identities: ['anonymous'], destinations: ['192.0.2.0/24'] }],
  });
  allowed(t, p, p.identify({}), dest({ address: '192.0.2.1' }), 'anon-only');
  denied(t, p, alice, dest({ address: '192.0.2.1' }), 'default-deny');
});

test('binding 0.0.0.0 or :: is covered by the whole-family network only', (t) => {
  allowed(t, policy, alice, dest({ direction: 'listen', address: '0.0.0.0', port: 0 }), 'alice-listen-any');
  allowed(t, policy, alice, dest({ direction: 'bind', protocol: 'udp', address: '::', port: 5353 }), 'alice-listen-any');
  allowed(t, policy, alice, dest({ direction: 'listen', address: '192.0.2.5', port: 80 }), 'alice-listen-any');
  // carol's rule lists 127.0.0.0/8 and 0.0.0.0/8: neither covers every interface.
  denied(t, policy, carol, dest({ direction: 'listen', address: '0.0.0.0', port: 8080 }), 'default-deny');
  denied(t, policy, carol, dest({ direction: 'listen', address: '::ffff:0.0.0.0', port: 8080 }), 'default-deny');
  const p = basePolicy({
    rules: [
      { name: 'lo4', action: 'allow', directions: ['listen'], destinations: ['127.0.0.0/8'], ports: ['0-65535'] },
      { name: 'lo6', action: 'allow', directions: ['listen'], destinations: ['::1/128', '::/1'], ports: ['0-65535'] },
    ],
  });
  denied(t, p, alice, dest({ direction: 'listen', address: '0.0.0.0', port: 0 }), 'default-deny');
  denied(t, p, alice, dest({ direction: 'listen', address: '::', port: 0 }), 'default-deny');
  allowed(t, p, alice, dest({ direction: 'listen', address: '127.0.0.1', port: 0 }), 'lo4');
  // An explicit 0.0.0.0 entry does cover binding it.
  const explicit = basePolicy({ rules: [{ name: 'any', action: 'allow', directions: ['bind'], destinations: ['0.0.0.0'], ports: ['0-65535'] }] });
  allowed(t, explicit, alice, dest({ direction: 'bind', address: '0.0.0.0', port: 0 }), 'any');
  denied(t, explicit, alice, dest({ direction: 'bind', address: '0.0.0.1', port: 0 }), 'default-deny');
});

test('connecting to 0.0.0.0 or :: is judged as loopback, where it really goes', (t) => {
  const p = basePolicy({
    rules: [
      { name: 'no-loopback', action: 'deny', destinations: ['127.0.0.0/8', '::1'] },
      { name: 'anywhere', action: 'allow', destinations: ['0.0.0.0/0', '::/0'] },
    ],
  });
  denied(t, p, alice, dest({ address: '0.0.0.0' }), 'no-loopback');
  denied(t, p, alice, dest({ address: '::' }), 'no-loopback');
  denied(t, p, alice, dest({ address: '::ffff:0.0.0.0' }), 'no-loopback');
  allowed(t, p, alice, dest({ address: '192.0.2.1' }), 'anywhere');
});

test('port 0 matches only rules whose ports include 0', (t) => {
  denied(t, policy, alice, dest({ address: '10.0.0.1', port: 0 }), 'default-deny');
  allowed(t, policy, alice, dest({ direction: 'bind', address: '10.0.0.1', port: 0 }), 'alice-listen-any');
});

test('a destination address that is not an IP address is refused', (t) => {
  for (const address of ['', 'example.com', '127.1', '10.0.0.0/8', '999.0.0.1']) {
    t.throws(() => policy.check(alice, dest({ address, host: 'x.test' })), { instanceOf: InvalidArgumentError }, address);
  }
});

test('the embedded default allows loopback only', (t) => {
  const p = new Policy(loadConfig());
  const anon = p.identify({});
  t.is(anon.name, 'anonymous');
  // Issue 12: the embedded default keeps anonymous on (loopback quick start) but never admin.
  t.false(anon.admin);
  for (const protocol of ['tcp', 'udp'] as const) {
    allowed(t, p, anon, dest({ protocol, address: '127.0.0.1', port: 80 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, address: '127.255.0.9', port: 65535 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, address: '::1', port: 80 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, address: '::ffff:127.0.0.1', port: 80 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, host: 'localhost', address: '127.0.0.1', port: 80 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, host: 'LOCALHOST', address: '::1', port: 80 }), 'loopback-only');
    allowed(t, p, anon, dest({ protocol, direction: 'listen', address: '127.0.0.1', port: 9000 }), 'loopback-listen');
    for (const address of ['10.0.0.1', '8.8.8.8', '192.168.1.1', '::2', '2001:4860:4860::8888', '::ffff:8.8.8.8']) {
      denied(t, p, anon, dest({ protocol, address, port: 80 }), 'default-deny');
    }
    denied(t, p, anon, dest({ protocol, host: 'example.com', address: '93.184.215.14', port: 443 }), 'default-deny');
    denied(t, p, anon, dest({ protocol, host: 'localhost.example.com', address: '93.184.215.14', port: 443 }), 'default-deny');
  }
  // Listening on every interface is not loopback.
  denied(t, p, anon, dest({ direction: 'listen', address: '0.0.0.0', port: 9000 }), 'default-deny');
  denied(t, p, anon, dest({ direction: 'bind', protocol: 'udp', address: '::', port: 9000 }), 'default-deny');
});

test('check returns the same decision for repeated calls (compiled rules hold no per-call state)', (t) => {
  for (let i = 0; i < 1000; i++) {
    t.deepEqual(policy.check(alice, dest({ address: `10.2.${i % 256}.${(i * 7) % 256}`, port: 1024 + i })), { rule: 'allow-private' });
  }
  denied(t, policy, alice, dest({ address: '10.1.0.1' }), 'deny-private-db');
});

// ---- construction errors ----

test('duplicate identity names are refused, naming the key', (t) => {
  constructionError(t, { identities: [{ name: 'a', uids: [1] }, { name: 'b' }, { name: 'a', uids: [2] }] }, /^identities\[2\]\.name: .*"a".*identities\[0\]/);
});

test('a token used by two identities is refused without echoing it', (t) => {
  const config = configWith({
    identities: [{ name: 'a', tokens: [TOKEN_ALICE] }, { name: 'b', tokens_sha256: [sha256hex(TOKEN_ALICE)] }],
  });
  const err = t.throws(() => new Policy(config), { instanceOf: InvalidArgumentError });
  t.regex(err!.message, /^identities\[1\]\.tokens_sha256\[0\]: .*"a"/);
  t.false(err!.message.includes(TOKEN_ALICE));
  t.false(err!.message.includes(sha256hex(TOKEN_ALICE)));
  constructionError(t, { identities: [{ name: 'a', tokens: [TOKEN_BOB] }, { name: 'b', tokens: ['x'.repeat(20), TOKEN_BOB] }] }, /^identities\[1\]\.tokens\[1\]: /);
  // The same token listed twice for one identity is harmless.
  t.notThrows(() => new Policy(configWith({ identities: [{ name: 'a', tokens: [TOKEN_BOB], tokens_sha256: [sha256hex(TOKEN_BOB)] }] })));
});

test('the same mTLS common name or uid for two identities is refused', (t) => {
  constructionError(t, { identities: [{ name: 'a', mtls_cn: 'x' }, { name: 'b', mtls_cn: 'x' }] }, /^identities\[1\]\.mtls_cn: /);
  constructionError(t, { identities: [{ name: 'a', uids: [5] }, { name: 'b', uids: [6, 5] }] }, /^identities\[1\]\.uids\[1\]: uid 5 .*"a"/);
});

test('the reserved names "anonymous" and "default-deny" cannot be configured', (t) => {
  constructionError(t, { identities: [{ name: 'anonymous', tokens: [TOKEN_ALICE] }] }, /^identities\[0\]\.name: "anonymous" is reserved/);
  constructionError(t, { rules: [{ name: 'default-deny', action: 'deny', destinations: ['0.0.0.0/0'] }] }, /^rules\[0\]\.name: "default-deny" is reserved/);
  constructionError(t, { rules: [{ name: 'r', action: 'deny', destinations: ['1.1.1.1'] }, { name: 'r', action: 'allow', destinations: ['1.1.1.1'] }] }, /^rules\[1\]\.name: duplicate rule name "r"/);
});

test('a rule naming an unknown identity is refused; "*" and "anonymous" are fine', (t) => {
  constructionError(
    t,
    { identities: [{ name: 'alice' }], rules: [{ name: 'r', action: 'allow', identities: ['alice', 'mallory'], destinations: ['1.1.1.1'] }] },
    'rules[0].identities[1]: unknown identity "mallory"',
  );
  t.notThrows(() =>
    new Policy(
      configWith({ identities: [{ name: 'alice' }], rules: [{ name: 'r', action: 'allow', identities: ['*', 'anonymous', 'alice'], destinations: ['1.1.1.1'] }] }),
    ),
  );
});

test('bad destinations are refused, naming the key and the entry', (t) => {
  const rules = (destinations: string[]) => ({
    rules: [
      { name: 'r0', action: 'allow', destinations: ['127.0.0.1'] },
      { name: 'r1', action: 'allow', destinations: ['127.0.0.1'] },
      { name: 'r2', action: 'allow', destinations },
    ],
  });
  constructionError(t, rules(['10.0.0.0/8', '10.0.0.0/33']), 'rules[2].destinations[1]: "10.0.0.0/33" is not a valid CIDR');
  for (const bad of ['::/129', '10.0.0/8', '10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/8/8', 'example.com/24', '1.2.3.4/0x8', '10.0.0.0/ 8']) {
    constructionError(t, rules([bad]), `rules[2].destinations[0]: ${JSON.stringify(bad)} is not a valid CIDR`);
  }
  for (const bad of ['999.1.1.1', '1.2.3', 'exa mple.com', '-bad.com', 'foo..com', 'http:', '*', 'foo.*.com', '*example.com', '**.example.com', `${'a'.repeat(64)}.com`, '0x7f.1']) {
    constructionError(t, rules([bad]), new RegExp(`^rules\\[2\\]\\.destinations\\[0\\]: ${JSON.stringify(bad).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not a valid`));
  }
  t.notThrows(() =>
    new Policy(configWith(rules(['db.internal', 'localhost', 'Db.Internal.', '*.svc.cluster.local', 'fd00::/8', '192.168.1.1', '::1', '::ffff:10.0.0.0/104', '10.0.0.1/8', '0.0.0.0/0', 'under_score.test']))),
  );
});

test('bad port ranges are refused, naming the key', (t) => {
  const rule = (over: Record<string, unknown>) => ({ rules: [{ name: 'r', action: 'allow', destinations: ['127.0.0.1'], ...over }] });
  constructionError(t, rule({ ports: [80, '2000-1000'] }), /^rules\[0\]\.ports\[1\]: "2000-1000" is an empty range/);
  constructionError(t, rule({ ports: ['1-70000'] }), /^rules\[0\]\.ports\[0\]: "1-70000" is outside/);
  constructionError(t, rule({ ports: ['99999'] }), /^rules\[0\]\.ports\[0\]: "99999" is outside/);
  constructionError(t, rule({ ports: ['0-1023'] }), /^rules\[0\]\.ports\[0\]: "0-1023" includes port 0/);
  constructionError(t, rule({ ports: [0] }), /^rules\[0\]\.ports\[0\]: 0 includes port 0/);
  constructionError(t, rule({ directions: ['listen', 'connect'], ports: ['0-65535'] }), /^rules\[0\]\.ports\[0\]: .*port 0/);
  constructionError(t, rule({ ports: [] }), /^rules\[0\]\.ports: is empty/);
  constructionError(t, rule({ protocols: [] }), /^rules\[0\]\.protocols: is empty/);
  t.notThrows(() => new Policy(configWith(rule({ directions: ['listen', 'bind'], ports: ['0-65535', 0] }))));
  t.notThrows(() => new Policy(configWith(rule({ ports: ['1-65535', '443', 8080, '22-22'] }))));
});
