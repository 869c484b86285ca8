#!/usr/bin/env node
/**
 * The `sockgate` command: serve, status, connect (and proxy, sidecar). The
 * composition root: the only file in server/ that imports clients/, and only
 * their public entry points (index.ts).
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { loadConfig } from '../config.js';
import { Gateway } from '../gateway.js';
import { createTelemetry } from '../telemetry.js';
import { Gateway as SdkGateway, type TransportName } from '../../clients/sdk/index.js';
import { registerProxyCommand } from '../../clients/proxy/index.js';
import { registerSidecarCommand } from '../../clients/sidecar/index.js';
import { SockgateError } from '../../proto/errors.js';
import { SocketKind, socketStateToJSON } from '../../proto/gen/sockgate/v1/sockgate.js';
import { reasonName, transportName } from '../socket-table.js';
import type { SocketInfo, TransportMove } from '../../proto/gen/sockgate/v1/sockgate.js';
import type { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';

const DEFAULT_TARGET = process.env['SOCKGATE_TARGET'] ?? '127.0.0.1:7070';

/** Exit codes of `sockgate connect`, by error code; anything else exits 1. */
export const EXIT_CODES: Readonly<Record<string, number>> = {
  ERR_SOCKGATE_INVALID_URI: 2,
  ERR_SOCKGATE_INVALID_ARGUMENT: 2,
  ERR_SOCKGATE_CONNECT_REFUSED: 3,
  ERR_SOCKGATE_HOST_UNREACHABLE: 4,
  ERR_SOCKGATE_CONNECT_TIMEOUT: 5,
  ERR_SOCKGATE_DNS: 6,
  ERR_SOCKGATE_POLICY_DENIED: 7,
  ERR_SOCKGATE_UNAUTHENTICATED: 8,
  ERR_SOCKGATE_LIMIT_EXCEEDED: 9,
  ERR_SOCKGATE_CONNECTION_RESET: 10,
  ERR_SOCKGATE_GATEWAY_UNAVAILABLE: 11,
  ERR_SOCKGATE_NO_TRANSPORT: 12,
};

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function fail(err: unknown): never {
  const e = err as Error & { code?: string };
  process.stderr.write(`sockgate: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(e instanceof SockgateError ? (EXIT_CODES[e.code] ?? 1) : 1);
}

function humanBytes(n: number): string {
  if (n < 1024) return `${n}`;
  const units = ['K', 'M', 'G', 'T'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)}${units[i]}`;
}

function humanAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

/**
 * The host socket as the kernel carries it, like smcss: tcp, udp, smc:SMC-R,
 * smc:SMC-D or smc:fallback:<reason code> (the code's meaning is in --json's detail).
 */
function kernelColumn(h: SocketInfo['hostSocket']): string {
  if (!h?.proto) return '-';
  if (h.proto !== 'smc') return h.proto;
  if (h.smcMode === 'fallback') return `smc:fallback:0x${h.smcFallbackReason.toString(16).padStart(8, '0')}`;
  return `smc:${h.smcMode || 'unknown'}`;
}

/** A data channel after live failover: the transport now, then where it was ("tcp<-rdma"; causes in --json's moves). */
function moveChain(now: TransportKind, moves: readonly TransportMove[] | undefined): string {
  return [transportName(now), ...[...(moves ?? [])].reverse().map((m) => transportName(m.from))].join('<-');
}

/** The `sockgate status` table, one socket a row, like smcss. */
export function formatStatusTable(sockets: readonly SocketInfo[], now = Date.now()): string {
  // DATA: the tcp-plane data connection as the kernel carries it, where the gateway knows (an SMC data port, or a peer hop).
  // HOP: a socket routed through a peer gateway, the data plane between the two gateways (now<-before).
  const header = ['ID', 'IDENTITY', 'KIND', 'STATE', 'LOCAL', 'REMOTE', 'TRANSPORT', 'FALLBACK', 'KERNEL', 'DATA', 'HOP', 'IN', 'OUT', 'AGE'];
  const kinds: Record<number, string> = { [SocketKind.SOCKET_KIND_STREAM]: 'stream', [SocketKind.SOCKET_KIND_DATAGRAM]: 'dgram', [SocketKind.SOCKET_KIND_LISTENER]: 'listen' };
  const rows = sockets.map((s) => [
    s.socketId,
    s.identity,
    kinds[s.kind] ?? '?',
    socketStateToJSON(s.state).replace('SOCKET_STATE_', '').toLowerCase(),
    s.localUri || '-',
    s.remoteUri || '-',
    moveChain(s.transport, s.moves),
    reasonName(s.fallbackReason) || '-',
    kernelColumn(s.hostSocket),
    kernelColumn(s.dataConnection),
    s.peer ? moveChain(s.peer.transport, s.peer.moves) : '-',
    humanBytes(s.bytesIn),
    humanBytes(s.bytesOut),
    humanAge(now - s.createdAtMs),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

async function serve(opts: { config?: string; set: string[] }): Promise<void> {
  let gateway: Gateway;
  try {
    const config = loadConfig({ ...(opts.config ? { file: opts.config } : {}), env: process.env, sets: opts.set });
    // The composition root: the gateway reaches peer gateways through the SDK's public entry point.
    gateway = new Gateway(config, { peerGateways: (via, credentials, o) => SdkGateway.connect(via, { ...credentials, ...(o.smc ? { smc: o.smc } : {}) }, { deadlineMs: o.deadlineMs }) });
    await gateway.start();
  } catch (err) {
    fail(err);
  }
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      gateway.logger.warn({ signal: sig }, 'second signal: exiting without drain');
      process.exit(1);
    }
    gateway.logger.info({ signal: sig }, 'stopping: no new sockets, draining open ones');
    gateway.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        gateway.logger.error({ err }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

interface ClientFlags {
  target: string;
  token?: string;
}

async function status(opts: ClientFlags & { json?: boolean; identity?: string }): Promise<void> {
  try {
    const gw = await SdkGateway.connect(opts.target, opts.token ? { token: opts.token } : {});
    const sockets = await gw.listSockets(opts.identity ?? '');
    gw.close();
    if (opts.json) process.stdout.write(JSON.stringify(sockets, null, 2) + '\n');
    else process.stdout.write(formatStatusTable(sockets));
  } catch (err) {
    fail(err);
  }
}

async function connect(uri: string, opts: ClientFlags & { transport?: string }): Promise<void> {
  let gw: SdkGateway;
  try {
    gw = await SdkGateway.connect(opts.target, opts.token ? { token: opts.token } : {});
    const transports = opts.transport ? (opts.transport.split(',') as TransportName[]) : undefined;
    if (uri.startsWith('udp')) throw new SockgateError('sockgate connect carries streams; use the SDK for udp');
    const sock = await gw.connect(uri, transports ? { transports } : {});
    process.stdin.pipe(sock);
    sock.pipe(process.stdout);
    sock.on('error', (err) => fail(err));
    sock.on('close', () => {
      gw.close();
      // Exit once stdout has taken every byte (pipes are asynchronous).
      process.stdout.write('', () => process.exit(sock.errored ? 1 : 0));
    });
  } catch (err) {
    fail(err);
  }
}

export function buildProgram(): Command {
  const program = new Command('sockgate').description('RDMA-backed socket gateway').showHelpAfterError();
  program
    .command('serve')
    .description('run the gateway (embedded default config: loopback only)')
    .option('-c, --config <file>', 'YAML configuration file')
    .option('--set <key=value>', 'override a config key, e.g. --set listen.control=127.0.0.1:7000 (repeatable)', collect, [])
    .action((opts) => serve(opts));
  const client = (cmd: Command) =>
    cmd
      .addOption(new Option('-t, --target <target>', 'gateway control address (host:port or unix:/path)').default(DEFAULT_TARGET))
      .addOption(new Option('--token <token>', 'bearer token').env('SOCKGATE_TOKEN'));
  client(program.command('status').description('list your sockets on the gateway, like smcss (an admin identity sees every identity\'s)'))
    .option('--json', 'print JSON instead of a table')
    .option('--identity <name>', 'only this identity\'s sockets (another identity\'s: admin only)')
    .action((opts) => status(opts));
  client(program.command('connect <uri>').description('netcat through the gateway: stdin to the socket, the socket to stdout'))
    .option('--transport <list>', 'transports to offer, in order, e.g. tcp,grpc')
    .addHelpText('after', `\nExit status: 0 when the socket closed cleanly; otherwise ${Object.entries(EXIT_CODES).map(([k, v]) => `${v} ${k}`).join(', ')}; 1 for anything else.`)
    .action((uri, opts) => connect(uri, opts));
  registerProxyCommand(program);
  registerSidecarCommand(program, createTelemetry);
  return program;
}

function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isMain()) buildProgram().parseAsync(process.argv).catch(fail);
