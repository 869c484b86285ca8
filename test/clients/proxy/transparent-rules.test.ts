/**
 * `sockgate proxy rules` and the transparent config, without root: the
 * nftables script it prints (every chain, exclusion and family), the policy
 * routes of tproxy, and clear errors for bad flags and config keys.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { CLI_PATH } from '../../helpers/harness.js';
import { nftScript, policyRoutes, type RulesSpec } from '../../../clients/proxy/rules.js';
import { resolveProxySettings, validateProxyConfig } from '../../../clients/proxy/config.js';

const base: RulesSpec = {
  to: ['10.0.0.0/8', 'fd00::/8'],
  ports: ['80', '443'],
  udpPorts: [],
  proxyPort: 15001,
  mode: 'redirect',
  gatewayAddresses: ['192.0.2.7'],
  excludeUids: [998],
  tableName: 'sockgate',
  mark: 0x5347,
  routeTable: 5347,
};

test('redirect: nat chains at output and prerouting, both families, gateway and uid excluded first', (t) => {
  const s = nftScript(base);
  t.true(s.startsWith('table inet sockgate\ndelete table inet sockgate\n'), 'recreated atomically: an earlier table of that name goes');
  t.regex(s, /chain nat_output \{\n    type nat hook output priority -100; policy accept;\n    meta skuid \{ 998 \} return\n    ip daddr \{ 192\.0\.2\.7 \} return\n    ip daddr \{ 10\.0\.0\.0\/8 \} tcp dport \{ 80, 443 \} redirect to :15001\n    ip6 daddr \{ fd00::\/8 \} tcp dport \{ 80, 443 \} redirect to :15001\n  \}/);
  t.regex(s, /chain nat_prerouting \{\n    type nat hook prerouting priority -100; policy accept;\n    ip daddr \{ 192\.0\.2\.7 \} return\n/);
  t.notRegex(s, /tproxy/);
  t.deepEqual(policyRoutes(base, 'add'), []);
});

test('tproxy and UDP: mangle prerouting tproxies and marks, output marks, policy routes per family', (t) => {
  const spec: RulesSpec = { ...base, mode: 'tproxy', udpPorts: ['53', '5000-5010'] };
  const s = nftScript(spec);
  t.notRegex(s, /type nat/);
  t.regex(s, /ip daddr \{ 10\.0\.0\.0\/8 \} meta l4proto tcp tcp dport \{ 80, 443 \} tproxy ip to :15001 meta mark set 0x5347 accept/);
  t.regex(s, /ip6 daddr \{ fd00::\/8 \} meta l4proto udp udp dport \{ 53, 5000-5010 \} tproxy ip6 to :15001 meta mark set 0x5347 accept/);
  t.regex(s, /chain tproxy_output \{\n    type route hook output priority -150; policy accept;\n    meta skuid \{ 998 \} return\n    ip daddr \{ 192\.0\.2\.7 \} return\n    ip daddr \{ 10\.0\.0\.0\/8 \} meta l4proto tcp tcp dport \{ 80, 443 \} meta mark set 0x5347\n/);
  t.deepEqual(policyRoutes(spec, 'add'), [
    ['-4', 'rule', 'add', 'fwmark', '0x5347', 'lookup', '5347'],
    ['-4', 'route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '5347'],
    ['-6', 'rule', 'add', 'fwmark', '0x5347', 'lookup', '5347'],
    ['-6', 'route', 'add', 'local', '::/0', 'dev', 'lo', 'table', '5347'],
  ]);
});

test('bad rules input is a clear error naming the flag', (t) => {
  t.throws(() => nftScript({ ...base, to: ['10.0.0.0/33'] }), { message: /--to: "10\.0\.0\.0\/33" is not an IPv4 or IPv6 address or CIDR/ });
  t.throws(() => nftScript({ ...base, ports: ['0'] }), { message: /--ports: "0" is not a port/ });
  t.throws(() => nftScript({ ...base, ports: [], udpPorts: [] }), { message: /give at least one port/ });
  t.throws(() => nftScript({ ...base, tableName: 'x; flush ruleset' }), { message: /--table-name/ });
  t.throws(() => nftScript({ ...base, routeTable: 254 }), { message: /--route-table/ });
});

test('the CLI prints the script, excludes the --gateway address, and rejects a bad mode (exit 2)', (t) => {
  const r = spawnSync(process.execPath, [CLI_PATH, 'proxy', 'rules', '--to', '10.1.0.0/16', '--ports', '80', '--udp-ports', '53', '-g', '192.0.2.9:7070'], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^# sockgate transparent mode/);
  t.regex(r.stdout, /ip daddr \{ 192\.0\.2\.9 \} return/);
  t.regex(r.stdout, /ip -4 rule add fwmark 0x5347 lookup 5347/);
  const bad = spawnSync(process.execPath, [CLI_PATH, 'proxy', 'rules', '--to', '10.1.0.0/16', '--ports', '80', '--mode', 'nat'], { encoding: 'utf8' });
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--mode: expected redirect or tproxy/);
});

test('transparent config: defaults, keys, and errors', (t) => {
  const s = resolveProxySettings({ gateway: 'unix:/x', transparent: '[::]:15001' });
  t.deepEqual(s.transparent, { listen: { kind: 'tcp', host: '::', port: 15001 }, udp: true, udpMaxFlows: 1024, udpIdleMs: 60_000 });
  const cfg = validateProxyConfig({ gateway: 'unix:/x', transparent: { listen: '15002', udp: false, udp_max_flows: 8, udp_idle_timeout_ms: 500 } }, 'test');
  const s2 = resolveProxySettings({}, cfg);
  t.deepEqual(s2.transparent, { listen: { kind: 'tcp', host: '127.0.0.1', port: 15002 }, udp: false, udpMaxFlows: 8, udpIdleMs: 500 });
  t.false(resolveProxySettings({ gateway: 'unix:/x', transparent: '15003', transparentUdp: false }).transparent!.udp);
  t.throws(() => resolveProxySettings({ gateway: 'unix:/x', transparent: 'unix:/tmp/p.sock' }), { message: /not a Unix socket/ });
  t.throws(() => validateProxyConfig({ transparent: { listen: '1', udp_max_flows: 0 } }, 'f'), { message: /transparent\.udp_max_flows/ });
});
