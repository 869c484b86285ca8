/**
 * `sockgate proxy rules`: print the transparent-mode kernel rules (rules.ts)
 * as a shell script, or apply them (`--install`) or take them away
 * (`--remove`) with nft and ip. Needs CAP_NET_ADMIN for --install/--remove.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError, KernelRulesError } from '../../proto/errors.js';
import { parseGatewayTarget } from './address.js';
import { DEFAULT_MARK, DEFAULT_PROXY_PORT, DEFAULT_ROUTE_TABLE, DEFAULT_TABLE_NAME, nftScript, policyRoutes, rulesScript, usesTproxy, type RulesSpec } from './rules.js';

/** Bound on each nft/ip invocation: they are local netlink calls. */
const TOOL_TIMEOUT_MS = 10_000;
/**
 * Where nft and ip are looked for, never $PATH: under npm/npx, node_modules/.bin
 * comes first and holds an unrelated `nft` (@vercel/nft, node file trace) that
 * exits 0 without touching the kernel.
 */
const SYSTEM_TOOL_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];

/** The absolute path of the system's `nft` or `ip`, or undefined if not installed. */
export function systemTool(name: 'nft' | 'ip'): string | undefined {
  return SYSTEM_TOOL_DIRS.map((d) => `${d}/${name}`).find((p) => existsSync(p));
}

export interface RulesFlags {
  to: string[];
  ports?: string;
  udpPorts?: string;
  proxyPort?: string;
  mode?: string;
  gateway?: string;
  gatewayAddress: string[];
  excludeUid: string[];
  tableName?: string;
  mark?: string;
  routeTable?: string;
  install?: boolean;
  remove?: boolean;
}

const list = (s: string | undefined) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean);

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function num(s: string | undefined, dflt: number, what: string): number {
  if (s === undefined) return dflt;
  const n = Number(s);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`${what}: expected a number, got ${JSON.stringify(s)}`);
  return n;
}

/** Flags to a spec (not yet checked: nftScript checks). */
export function rulesSpecFromFlags(f: RulesFlags): RulesSpec {
  const mode = f.mode ?? 'redirect';
  if (mode !== 'redirect' && mode !== 'tproxy') throw new InvalidArgumentError(`--mode: expected redirect or tproxy, got ${JSON.stringify(mode)}`);
  const gatewayAddresses = [...f.gatewayAddress];
  // The gateway's own address never goes to the proxy (its control and data connections would loop).
  if (f.gateway) {
    const t = parseGatewayTarget(f.gateway);
    if (t.kind === 'tcp' && /^[0-9.]+$|:/.test(t.host)) gatewayAddresses.push(t.host);
  }
  return {
    to: f.to.flatMap(list),
    ports: list(f.ports),
    udpPorts: list(f.udpPorts),
    proxyPort: num(f.proxyPort, DEFAULT_PROXY_PORT, '--proxy-port'),
    mode,
    gatewayAddresses,
    excludeUids: f.excludeUid.map((u) => num(u, 0, '--exclude-uid')),
    tableName: f.tableName ?? DEFAULT_TABLE_NAME,
    mark: num(f.mark, DEFAULT_MARK, '--mark'),
    routeTable: num(f.routeTable, DEFAULT_ROUTE_TABLE, '--route-table'),
  };
}

function tool(name: 'nft' | 'ip', args: string[], input?: string): { ok: boolean; err: string } {
  const cmd = systemTool(name);
  if (!cmd) return { ok: false, err: `${name} is not installed (in ${SYSTEM_TOOL_DIRS.join(', ')}): apt-get install -y ${name === 'nft' ? 'nftables' : 'iproute2'}` };
  const r = spawnSync(cmd, args, { input: input ?? '', encoding: 'utf8', timeout: TOOL_TIMEOUT_MS });
  if (r.error) return { ok: false, err: `${cmd}: ${r.error.message}` };
  return { ok: r.status === 0, err: (r.stderr || r.stdout || '').trim() };
}

/** Apply the rules: the nft table (atomically, one transaction), then the policy routes. */
export function installRules(spec: RulesSpec): void {
  const script = nftScript(spec);
  const nft = tool('nft', ['-f', '-'], script);
  if (!nft.ok) throw new KernelRulesError(`nft -f - failed: ${nft.err}`);
  if (usesTproxy(spec)) {
    removeRoutes(spec);
    for (const args of policyRoutes(spec, 'add')) {
      const r = tool('ip', args);
      if (!r.ok) {
        removeRules(spec);
        throw new KernelRulesError(`ip ${args.join(' ')} failed: ${r.err}`);
      }
    }
  }
}

function removeRoutes(spec: RulesSpec): void {
  // Both families, whatever was installed: a missing rule or route is not an error here.
  const both: RulesSpec = { ...spec, to: ['0.0.0.0/0', '::/0'], udpPorts: ['1'] };
  for (const args of policyRoutes(both, 'del')) tool('ip', args);
}

/** Remove the table and the policy routes; true if the table existed. */
export function removeRules(spec: RulesSpec): boolean {
  const r = tool('nft', ['delete', 'table', 'inet', spec.tableName]);
  removeRoutes(spec);
  return r.ok;
}

function fail(err: unknown): never {
  const e = err as Error & { code?: string };
  process.stderr.write(`sockgate proxy rules: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(e instanceof InvalidArgumentError ? 2 : 1);
}

/** Add `rules` under the `proxy` command. */
export function registerRulesCommand(proxy: Command): void {
  proxy
    .command('rules')
    .description('print (or --install / --remove) the nftables rules that send traffic to `sockgate proxy --transparent`')
    .option('--to <cidrs>', 'destination CIDRs to redirect, comma-separated (repeatable), IPv4 and IPv6', collect, [])
    .option('--ports <list>', 'TCP destination ports or ranges, e.g. 80,443,8000-8100')
    .option('--udp-ports <list>', 'UDP destination ports or ranges (always tproxy)')
    .option('--proxy-port <port>', `the port of --transparent (default ${DEFAULT_PROXY_PORT})`)
    .option('--mode <mode>', 'TCP: redirect (nat, SO_ORIGINAL_DST; default) or tproxy (needs the proxy to have CAP_NET_ADMIN)')
    .option('-g, --gateway <target>', "the proxy's --gateway: its address is excluded")
    .option('--gateway-address <ip>', 'another address never redirected (repeatable)', collect, [])
    .option('--exclude-uid <uid>', 'never redirect traffic of processes with this uid (repeatable)', collect, [])
    .option('--table-name <name>', `the nftables table (family inet; default ${DEFAULT_TABLE_NAME})`)
    .option('--mark <mark>', `fwmark of tproxied packets (default 0x${DEFAULT_MARK.toString(16)})`)
    .option('--route-table <n>', `routing table for marked packets (default ${DEFAULT_ROUTE_TABLE})`)
    .option('--install', 'apply the rules (nft, ip) instead of printing them')
    .option('--remove', 'remove the table and the policy routes')
    .action((f: RulesFlags, cmd: Command) => {
      // `-g` also belongs to `proxy`, which commander lets take it first.
      f.gateway ??= (cmd.parent?.opts() as { gateway?: string } | undefined)?.gateway;
      try {
        if (f.remove) {
          const spec: RulesSpec = { ...rulesSpecFromFlags({ ...f, to: f.to.length ? f.to : ['0.0.0.0/0'], ports: f.ports ?? '1' }) };
          const existed = removeRules(spec);
          process.stdout.write(existed ? `removed table inet ${spec.tableName} and its policy routes\n` : `no table inet ${spec.tableName} (policy routes removed if any)\n`);
          return;
        }
        const spec = rulesSpecFromFlags(f);
        if (f.install) {
          installRules(spec);
          process.stdout.write(`installed table inet ${spec.tableName}${usesTproxy(spec) ? ` and fwmark 0x${spec.mark.toString(16)} -> table ${spec.routeTable}` : ''}\n`);
        } else {
          process.stdout.write(rulesScript(spec));
        }
      } catch (err) {
        fail(err);
      }
    });
}
