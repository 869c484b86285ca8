/**
 * Policy units for issue 12: the address judged is exactly the address the
 * socket uses (IPv4-compatible ::a.b.c.d is IPv6, only ::ffff:a.b.c.d is
 * IPv4), the gateway's own endpoints are never reached through a broad rule,
 * host-name entries never reach the always-denied set (link-local, the host's
 * own addresses) unless the rule lists the address itself, and the embedded
 * default denies privileged, wildcard and IPv6-loopback listens.
 */
import { networkInterfaces } from 'node:os';
import test, { type ExecutionContext } from 'ava';
import { addressBytes, dialAddress, formatAddress, parseAddress } from '../../server/address.js';
import { loadConfig } from '../../server/config.js';
import { PolicyDeniedError } from '../../proto/errors.js';
import { Policy, type DestinationCheck, type Identity } from '../../server/policy.js';

function policyWith(rules: unknown[], extra: Record<string, unknown> = {}): { p: Policy; anon: Identity } {
  const p = new Policy(loadConfig({ overrides: { anonymous: { enabled: true }, rules, ...extra } }));
  return { p, anon: p.identify({}) };
}

function dest(over: Partial<DestinationCheck> & { address: string }): DestinationCheck {
  return { direction: 'connect', protocol: 'tcp', host: over.address, port: 8080, ...over };
}

function allowed(t: ExecutionContext, p: Policy, id: Identity, d: DestinationCheck, rule: string): void {
  t.deepEqual(p.check(id, d), { rule }, `${d.direction} ${d.host}(${d.address}):${d.port}`);
}

function denied(t: ExecutionContext, p: Policy, id: Identity, d: DestinationCheck, rule: string, message?: RegExp): void {
  const err = t.throws(() => p.check(id, d), { instanceOf: PolicyDeniedError }, `${d.direction} ${d.host}(${d.address}):${d.port}`);
  t.is(err?.rule, rule, err?.message);
  if (message) t.regex(err!.message, message);
}

/** A non-loopback address of this host, if it has one. */
function hostAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const i of list ?? []) if (!i.internal && i.family === 'IPv4') return i.address;
  }
  return undefined;
}

test('address bytes: ::a.b.c.d is IPv4-compatible IPv6, only ::ffff:a.b.c.d folds to IPv4', (t) => {
  t.deepEqual(addressBytes('::10.1.2.3'), addressBytes('::a01:203'));
  t.deepEqual(addressBytes('::10.1.2.3'), addressBytes('0:0:0:0:0:0:a01:203'));
  t.is(parseAddress('::10.1.2.3')!.family, 6);
  t.is(formatAddress(parseAddress('::10.1.2.3')!), '::a01:203');
  t.deepEqual(parseAddress('::ffff:10.1.2.3'), { family: 4, bytes: Uint8Array.from([10, 1, 2, 3]) });
  t.deepEqual(parseAddress('0:0:0:0:0:ffff:a01:203'), { family: 4, bytes: Uint8Array.from([10, 1, 2, 3]) });
  t.is(formatAddress(parseAddress('2001:DB8:0:0:1:0:0:1')!), '2001:db8::1:0:0:1');
  t.is(formatAddress(parseAddress('fe80::1%eth0')!), 'fe80::1');
  t.is(formatAddress(parseAddress('1:2:3:4:5:6:7:8')!), '1:2:3:4:5:6:7:8');
  t.is(formatAddress(parseAddress('::')!), '::');
  t.is(parseAddress('example.com'), undefined);
  // The dial uses what was judged: mapped -> the IPv4 address, compatible -> the IPv6 literal.
  t.deepEqual(dialAddress('::ffff:127.0.0.1'), { address: '127.0.0.1', family: 4 });
  t.deepEqual(dialAddress('::127.0.0.1'), { address: '::127.0.0.1', family: 6 });
  t.deepEqual(dialAddress('10.1.2.3'), { address: '10.1.2.3', family: 4 });
});

test('finding 4: [::10.1.2.3] is judged as the IPv6 address it dials, in both spellings', (t) => {
  const { p, anon } = policyWith([
    { name: 'no-v6', action: 'deny', destinations: ['::/0'] },
    { name: 'v4-private', action: 'allow', destinations: ['10.0.0.0/8'] },
  ]);
  denied(t, p, anon, dest({ address: '::10.1.2.3', port: 443 }), 'no-v6');
  denied(t, p, anon, dest({ address: '::a01:203', port: 443 }), 'no-v6');
  denied(t, p, anon, dest({ address: '0:0:0:0:0:0:10.1.2.3', port: 443 }), 'no-v6');
  // The real IPv4-mapped form reaches 10.1.2.3 and is judged (and dialled) as it.
  const { p: v4, anon: a4 } = policyWith([{ name: 'v4-private', action: 'allow', destinations: ['10.0.0.0/8'] }]);
  allowed(t, v4, a4, dest({ address: '::ffff:10.1.2.3', port: 443 }), 'v4-private');
  allowed(t, v4, a4, dest({ address: '0:0:0:0:0:ffff:a01:203', port: 443 }), 'v4-private');
  denied(t, v4, a4, dest({ address: '::10.1.2.3', port: 443 }), 'default-deny');
  // A rule's IPv4-compatible prefix is an IPv6 prefix too.
  const { p: compat, anon: ac } = policyWith([{ name: 'compat', action: 'allow', destinations: ['::10.0.0.0/104'] }]);
  allowed(t, compat, ac, dest({ address: '::10.9.9.9' }), 'compat');
  denied(t, compat, ac, dest({ address: '10.9.9.9' }), 'default-deny');
});

test('finding 8: the gateway\'s own ports are denied through a broad rule, allowed only by one naming the address', (t) => {
  // The embedded default: control 127.0.0.1:7070, data :7071, metrics :9464.
  const p = new Policy(loadConfig());
  const anon = p.identify({});
  for (const port of [7070, 7071, 9464]) {
    denied(t, p, anon, dest({ address: '127.0.0.1', port }), 'always-denied', /gateway's own (control|data|metrics) port/);
    denied(t, p, anon, dest({ address: '::ffff:127.0.0.1', port }), 'always-denied');
    denied(t, p, anon, dest({ address: '0.0.0.0', port }), 'always-denied', /loopback-only/);
    denied(t, p, anon, dest({ host: 'localhost', address: '127.0.0.1', port }), 'always-denied');
  }
  // Datagrams to the same ports reach none of the gateway's (stream) listeners.
  allowed(t, p, anon, dest({ protocol: 'udp', address: '127.0.0.1', port: 7070 }), 'loopback-only');
  // Other loopback addresses and ports are not the gateway.
  allowed(t, p, anon, dest({ address: '127.0.0.2', port: 7070 }), 'loopback-only');
  allowed(t, p, anon, dest({ address: '::1', port: 7070 }), 'loopback-only');
  allowed(t, p, anon, dest({ address: '127.0.0.1', port: 7072 }), 'loopback-only');
  // Ports bound later (port 0 in the config) are told by the gateway.
  p.setGatewayEndpoints([{ name: 'control', host: '127.0.0.1', port: 40001 }, { name: 'data', host: '::1', port: 40002 }]);
  denied(t, p, anon, dest({ address: '127.0.0.1', port: 40001 }), 'always-denied', /control/);
  denied(t, p, anon, dest({ address: '::1', port: 40002 }), 'always-denied', /data/); // "::1/128" in the rule is the address, but not the port
  allowed(t, p, anon, dest({ address: '127.0.0.1', port: 7070 }), 'loopback-only');
  // A rule that lists the exact address opens it; a deny before still wins.
  const { p: q, anon: a } = policyWith([
    { name: 'ops-metrics', action: 'allow', destinations: ['127.0.0.1'], ports: [9464] },
    { name: 'lo-range', action: 'allow', destinations: ['127.0.0.1'], ports: ['7000-7100'] },
    { name: 'lo', action: 'allow', destinations: ['127.0.0.0/8'] },
  ]);
  allowed(t, q, a, dest({ address: '127.0.0.1', port: 9464 }), 'ops-metrics');
  denied(t, q, a, dest({ address: '127.0.0.1', port: 7071 }), 'always-denied', /rule "lo-range" does not list itself/);
  // A wildcard listen makes every local address the gateway's, at that port.
  const { p: w, anon: aw } = policyWith([{ name: 'anywhere', action: 'allow', destinations: ['0.0.0.0/0', '::/0'] }], {
    listen: { control: '0.0.0.0:7070', data: '127.0.0.1:7071', metrics: '' },
  });
  denied(t, w, aw, dest({ address: '127.0.0.9', port: 7070 }), 'always-denied');
  const mine = hostAddress();
  if (mine) denied(t, w, aw, dest({ address: mine, port: 7070 }), 'always-denied');
  else t.log('no non-loopback IPv4 address on this host: the interface-address case is not exercised');
  allowed(t, w, aw, dest({ address: '192.0.2.1', port: 7070 }), 'anywhere');
  // Listening is not reaching: a listen on the gateway's port is the kernel's business (EADDRINUSE).
  const { p: l, anon: al } = policyWith([{ name: 'lo-listen', action: 'allow', directions: ['listen'], destinations: ['127.0.0.0/8'] }]);
  allowed(t, l, al, dest({ direction: 'listen', address: '127.0.0.1', port: 7070 }), 'lo-listen');
});

test('finding 8: the embedded default allows loopback connects and unprivileged IPv4-loopback listens only', (t) => {
  const p = new Policy(loadConfig());
  const anon = p.identify({});
  for (const protocol of ['tcp', 'udp'] as const) {
    const direction = protocol === 'tcp' ? 'listen' : 'bind';
    allowed(t, p, anon, dest({ protocol, direction, address: '127.0.0.1', port: 1024 }), 'loopback-listen');
    allowed(t, p, anon, dest({ protocol, direction, address: '127.0.0.1', port: 40000 }), 'loopback-listen');
    // Privileged ports.
    for (const port of [1, 22, 80, 443, 1023]) denied(t, p, anon, dest({ protocol, direction, address: '127.0.0.1', port }), 'default-deny');
    // Wildcards: every interface.
    denied(t, p, anon, dest({ protocol, direction, address: '0.0.0.0', port: 9000 }), 'default-deny');
    denied(t, p, anon, dest({ protocol, direction, address: '::', port: 9000 }), 'default-deny');
    // [::1]:P could sit in front of a host service on 127.0.0.1:P (clients of "localhost" try ::1 first).
    denied(t, p, anon, dest({ protocol, direction, address: '::1', port: 9000 }), 'default-deny');
    denied(t, p, anon, dest({ protocol, direction, host: 'localhost', address: '::1', port: 9000 }), 'default-deny');
    // Non-loopback addresses.
    denied(t, p, anon, dest({ protocol, direction, address: '192.0.2.1', port: 9000 }), 'default-deny');
  }
});

test('finding 9: a host-name entry never reaches the always-denied set unless the rule lists the address', (t) => {
  let { p, anon } = policyWith([{ name: 'web', action: 'allow', destinations: ['api.test', '*.example.com'] }]);
  allowed(t, p, anon, dest({ host: 'api.test', address: '203.0.113.7', port: 443 }), 'web');
  allowed(t, p, anon, dest({ host: 'www.example.com', address: '2001:db8::7', port: 443 }), 'web');
  // DNS answers pointing inside: link-local, loopback, the unspecified address, this host's own interfaces.
  for (const address of ['169.254.169.254', '169.254.0.1', 'fe80::1', '127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1', '0.0.0.0', '::']) {
    denied(t, p, anon, dest({ host: 'api.test', address, port: 443 }), 'always-denied', /rule "web" does not list itself/);
    denied(t, p, anon, dest({ host: 'evil.example.com', address, port: 443 }), 'always-denied');
  }
  const mine = hostAddress();
  if (mine) denied(t, p, anon, dest({ host: 'api.test', address: mine, port: 443 }), 'always-denied', /own host/);
  // A rule that lists the address itself does reach it.
  ({ p, anon } = policyWith([
    { name: 'meta', action: 'allow', destinations: ['metadata.test', '169.254.169.254'] },
    { name: 'local-db', action: 'allow', destinations: ['db.test', '127.0.0.0/8'] },
  ]));
  allowed(t, p, anon, dest({ host: 'metadata.test', address: '169.254.169.254', port: 80 }), 'meta');
  denied(t, p, anon, dest({ host: 'metadata.test', address: '169.254.169.253', port: 80 }), 'always-denied');
  allowed(t, p, anon, dest({ host: 'db.test', address: '127.0.0.1', port: 5432 }), 'local-db');
  // The embedded default lists loopback next to "localhost": unchanged.
  const d = new Policy(loadConfig());
  allowed(t, d, d.identify({}), dest({ host: 'localhost', address: '::1', port: 5432 }), 'loopback-only');
  // The set stops a name only; a later rule that matches still decides.
  const { p: later, anon: al } = policyWith([
    { name: 'web', action: 'allow', destinations: ['api.test'] },
    { name: 'no-metadata', action: 'deny', destinations: ['169.254.0.0/16'] },
  ]);
  denied(t, later, al, dest({ host: 'api.test', address: '169.254.169.254', port: 80 }), 'no-metadata');
  // Listening on a name of the host itself is fine (a listen is always on a host address); link-local is not.
  const { p: l, anon: ll } = policyWith([{ name: 'named-listen', action: 'allow', directions: ['listen'], destinations: ['localhost'] }]);
  allowed(t, l, ll, dest({ direction: 'listen', host: 'localhost', address: '127.0.0.1', port: 9000 }), 'named-listen');
  denied(t, l, ll, dest({ direction: 'listen', host: 'localhost', address: 'fe80::1', port: 9000 }), 'always-denied');
});

test('"always-denied" is a reserved rule name', (t) => {
  t.throws(() => policyWith([{ name: 'always-denied', action: 'allow', destinations: ['10.0.0.0/8'] }]), { message: /reserved/ });
});
