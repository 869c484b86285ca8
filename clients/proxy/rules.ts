/**
 * The kernel rules of transparent mode (`sockgate proxy rules`): one nftables
 * table of our own (`inet sockgate` by default, so removal is one `nft delete
 * table`), plus — for tproxy — the fwmark policy route that delivers marked
 * packets locally. Built here as text; rules-cli.ts prints or applies it.
 *
 * What the table does (README "Transparent mode"):
 * - TCP, mode `redirect` (default): `nat` chains at output (this host's own
 *   applications) and prerouting (traffic routed through this host, e.g.
 *   containers behind a bridge) rewrite the destination to the proxy's port;
 *   the proxy reads the original from conntrack (SO_ORIGINAL_DST).
 * - TCP, mode `tproxy`, and UDP always: a `filter` prerouting chain at
 *   priority mangle hands matching packets to the proxy's transparent socket
 *   (`tproxy to :PORT`) and marks them; locally generated packets are marked in
 *   a `route` output chain, which reroutes them (ip rule fwmark MARK → table
 *   TABLE: `local default dev lo`) back in through lo, where prerouting
 *   tproxies them. The destination address is never rewritten.
 * Nothing loops: the proxy's only own traffic goes to the gateway, whose
 * address (--gateway-address, repeatable) is excluded first; processes by uid
 * (--exclude-uid, e.g. a gateway on this same host as user `sockgate`) are
 * excluded in the output chains. Why uid rather than mark or cgroup: it needs
 * nothing of the excluded process (a mark needs SO_MARK and CAP_NET_ADMIN in
 * it; a cgroupv2 match needs a path that differs per init system), and a
 * systemd unit gets it with User=.
 */
import { isIP } from 'node:net';
import { InvalidArgumentError } from '../../proto/errors.js';

/** The nftables table (family inet) unless --table-name says otherwise. */
export const DEFAULT_TABLE_NAME = 'sockgate';
/** fwmark of tproxied packets, and the policy-routing table that sends them to lo. */
export const DEFAULT_MARK = 0x5347;
export const DEFAULT_ROUTE_TABLE = 5347;
/** Where the proxy listens unless told (the README's `--transparent [::]:15001`). */
export const DEFAULT_PROXY_PORT = 15001;

export interface RulesSpec {
  /** Destination CIDRs (IPv4 and IPv6; a bare address is /32 or /128). */
  to: string[];
  /** TCP destination ports or ranges ("80", "8000-8100"); empty: no TCP rules. */
  ports: string[];
  /** UDP destination ports or ranges (tproxy); empty: no UDP rules. */
  udpPorts: string[];
  proxyPort: number;
  mode: 'redirect' | 'tproxy';
  /** Addresses never redirected (the gateway's). */
  gatewayAddresses: string[];
  excludeUids: number[];
  tableName: string;
  mark: number;
  routeTable: number;
}

function cidrFamily(s: string, what: string): 4 | 6 {
  const [addr, bits, extra] = s.split('/');
  const fam = isIP(addr ?? '');
  const max = fam === 4 ? 32 : 128;
  if (fam === 0 || extra !== undefined || (bits !== undefined && (!/^[0-9]{1,3}$/.test(bits) || Number(bits) > max))) {
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(s)} is not an IPv4 or IPv6 address or CIDR (e.g. 10.0.0.0/8, fd00::/8)`);
  }
  return fam as 4 | 6;
}

function checkPorts(list: string[], what: string): void {
  for (const p of list) {
    const m = /^([0-9]{1,5})(?:-([0-9]{1,5}))?$/.exec(p);
    const lo = Number(m?.[1]);
    const hi = m?.[2] === undefined ? lo : Number(m[2]);
    if (!m || lo < 1 || hi > 65535 || lo > hi) throw new InvalidArgumentError(`${what}: ${JSON.stringify(p)} is not a port (1-65535) or range (8000-8100)`);
  }
}

/** Validate a spec; every error names the flag. */
export function checkRulesSpec(spec: RulesSpec): void {
  if (!spec.to.length) throw new InvalidArgumentError('--to: give at least one destination CIDR (e.g. --to 10.0.0.0/8)');
  for (const c of spec.to) cidrFamily(c, '--to');
  for (const a of spec.gatewayAddresses) cidrFamily(a, '--gateway-address');
  checkPorts(spec.ports, '--ports');
  checkPorts(spec.udpPorts, '--udp-ports');
  if (!spec.ports.length && !spec.udpPorts.length) throw new InvalidArgumentError('--ports / --udp-ports: give at least one port to redirect');
  if (!Number.isInteger(spec.proxyPort) || spec.proxyPort < 1 || spec.proxyPort > 65535) throw new InvalidArgumentError('--proxy-port: expected 1-65535');
  if (!/^[A-Za-z][A-Za-z0-9_-]{0,31}$/.test(spec.tableName)) throw new InvalidArgumentError('--table-name: letters, digits, _ and - (at most 32)');
  for (const u of spec.excludeUids) if (!Number.isInteger(u) || u < 0 || u > 0xfffffffe) throw new InvalidArgumentError('--exclude-uid: expected a numeric uid');
  if (!Number.isInteger(spec.mark) || spec.mark < 1 || spec.mark > 0xffffffff) throw new InvalidArgumentError('--mark: expected 1..0xffffffff');
  if (!Number.isInteger(spec.routeTable) || spec.routeTable < 1 || spec.routeTable > 0xfffffffe || [253, 254, 255].includes(spec.routeTable)) {
    throw new InvalidArgumentError('--route-table: expected a free routing table number (not 253-255: default, main, local)');
  }
}

const set = (items: readonly (string | number)[]) => `{ ${items.join(', ')} }`;

/** Whether the spec needs the tproxy machinery (marks and the policy route). */
export function usesTproxy(spec: RulesSpec): boolean {
  return spec.udpPorts.length > 0 || (spec.mode === 'tproxy' && spec.ports.length > 0);
}

/** The nftables script (for `nft -f -`): deletes any earlier table of that name, then creates it. */
export function nftScript(spec: RulesSpec): string {
  checkRulesSpec(spec);
  const t = spec.tableName;
  const v4 = spec.to.filter((c) => cidrFamily(c, '--to') === 4);
  const v6 = spec.to.filter((c) => cidrFamily(c, '--to') === 6);
  const gw4 = spec.gatewayAddresses.filter((c) => cidrFamily(c, '--gateway-address') === 4);
  const gw6 = spec.gatewayAddresses.filter((c) => cidrFamily(c, '--gateway-address') === 6);
  const mark = `0x${spec.mark.toString(16)}`;
  const bypass = [...(gw4.length ? [`ip daddr ${set(gw4)} return`] : []), ...(gw6.length ? [`ip6 daddr ${set(gw6)} return`] : [])];
  const uids = spec.excludeUids.length ? [`meta skuid ${set(spec.excludeUids)} return`] : [];
  const fams = [
    ...(v4.length ? [{ match: `ip daddr ${set(v4)}`, tp: 'ip' }] : []),
    ...(v6.length ? [{ match: `ip6 daddr ${set(v6)}`, tp: 'ip6' }] : []),
  ];
  const lines: string[] = [`table inet ${t}`, `delete table inet ${t}`, `table inet ${t} {`];
  const chain = (name: string, head: string, body: string[]) => {
    lines.push(`  chain ${name} {`, `    ${head}`, ...body.map((b) => `    ${b}`), '  }');
  };
  if (spec.ports.length && spec.mode === 'redirect') {
    const redirect = fams.map((f) => `${f.match} tcp dport ${set(spec.ports)} redirect to :${spec.proxyPort}`);
    chain('nat_output', 'type nat hook output priority -100; policy accept;', [...uids, ...bypass, ...redirect]);
    chain('nat_prerouting', 'type nat hook prerouting priority -100; policy accept;', [...bypass, ...redirect]);
  }
  if (usesTproxy(spec)) {
    const protos: { proto: string; ports: string[] }[] = [
      ...(spec.mode === 'tproxy' && spec.ports.length ? [{ proto: 'tcp', ports: spec.ports }] : []),
      ...(spec.udpPorts.length ? [{ proto: 'udp', ports: spec.udpPorts }] : []),
    ];
    const tproxy = fams.flatMap((f) => protos.map((p) => `${f.match} meta l4proto ${p.proto} ${p.proto} dport ${set(p.ports)} tproxy ${f.tp} to :${spec.proxyPort} meta mark set ${mark} accept`));
    const markOut = fams.flatMap((f) => protos.map((p) => `${f.match} meta l4proto ${p.proto} ${p.proto} dport ${set(p.ports)} meta mark set ${mark}`));
    chain('tproxy_prerouting', 'type filter hook prerouting priority -150; policy accept;', [...bypass, ...tproxy]);
    chain('tproxy_output', 'type route hook output priority -150; policy accept;', [...uids, ...bypass, ...markOut]);
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

/** The `ip` commands (argument lists) that route marked packets to lo, per family in use; empty without tproxy. */
export function policyRoutes(spec: RulesSpec, op: 'add' | 'del'): string[][] {
  if (!usesTproxy(spec)) return [];
  const fams: ('4' | '6')[] = [];
  if (spec.to.some((c) => cidrFamily(c, '--to') === 4)) fams.push('4');
  if (spec.to.some((c) => cidrFamily(c, '--to') === 6)) fams.push('6');
  const mark = `0x${spec.mark.toString(16)}`;
  const table = String(spec.routeTable);
  return fams.flatMap((f) => [
    [`-${f}`, 'rule', op, 'fwmark', mark, 'lookup', table],
    op === 'add' ? [`-${f}`, 'route', 'add', 'local', f === '4' ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', table] : [`-${f}`, 'route', 'flush', 'table', table],
  ]);
}

/** The whole setup as a shell script (what `sockgate proxy rules` prints without --install). */
export function rulesScript(spec: RulesSpec): string {
  const routes = policyRoutes(spec, 'add').map((a) => `ip ${a.join(' ')}`);
  return [
    `# sockgate transparent mode: ${spec.mode} to port ${spec.proxyPort}; remove with: sockgate proxy rules --remove --table-name ${spec.tableName}${usesTproxy(spec) ? ` --mark 0x${spec.mark.toString(16)} --route-table ${spec.routeTable}` : ''}`,
    `nft -f - <<'EOF'`,
    nftScript(spec).trimEnd(),
    'EOF',
    ...routes,
    '',
  ].join('\n');
}
