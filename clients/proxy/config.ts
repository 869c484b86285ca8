/**
 * The proxy's configuration: an optional YAML file (`--config`) and the
 * command-line flags, merged into one validated ProxySettings. Flags win over
 * the file; `-L`/`-R` add to the file's lists. Every error names the key or flag.
 *
 * ```yaml
 * gateway: unix:/run/sockgate/gateway.sock     # or host:port, or vsock:2:7070
 * token: "..."                                 # or SOCKGATE_TOKEN
 * transports: [tcp, grpc]
 * local_forwards: ["127.0.0.1:5432=tcp://db:5432"]
 * remote_forwards: ["tcp://0.0.0.0:8080=127.0.0.1:80"]
 * socks:
 *   listen: 127.0.0.1:1080
 *   users: [{ username: app, password: "..." }]
 *   udp_bind: udp://0.0.0.0:0
 * transparent:                                 # sockgate proxy --transparent (README "Transparent mode")
 *   listen: "[::]:15001"
 *   udp: true
 *   udp_max_flows: 1024
 *   udp_idle_timeout_ms: 60000
 * ```
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InvalidArgumentError } from '../../proto/errors.js';
import { parseUri } from '../../proto/uri.js';
import type { TransportName } from '../sdk/socket.js';
import {
  parseGatewayTarget,
  parseListenAddress,
  parseLocalForward,
  parseRemoteForward,
  type GatewayTarget,
  type LocalEndpoint,
  type LocalForwardSpec,
  type RemoteForwardSpec,
} from './address.js';
import { DEFAULT_UDP_BIND, type SocksUser } from './socks-server.js';

/** Where `--socks` listens when the config gives no address: loopback only. */
export const DEFAULT_SOCKS_LISTEN = '127.0.0.1:1080';
/** How long open connections may take to finish after SIGTERM before they are aborted. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 5_000;

/** UDP flows the transparent proxy keeps open at once (each: a gateway socket and a reply socket). */
export const DEFAULT_TRANSPARENT_UDP_MAX_FLOWS = 1024;
/** A transparent UDP flow without traffic for this long is closed (conntrack's own UDP stream timeout is 120 s). */
export const DEFAULT_TRANSPARENT_UDP_IDLE_MS = 60_000;

/** A zod check that runs one of address.ts's parsers and reports its message at the key. */
function parsedBy(parse: (s: string) => unknown) {
  return z.string().superRefine((s, ctx) => {
    try {
      parse(s);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
    }
  });
}

const credential = z.string().min(1).max(255, 'RFC 1929 allows at most 255 bytes');

export const proxyConfigSchema = z.strictObject({
  gateway: parsedBy((s) => parseGatewayTarget(s, 'gateway')).optional(),
  token: z.string().min(1).optional(),
  transports: z.array(z.enum(['shm', 'rdma', 'tcp', 'grpc'])).min(1).optional(),
  /** Gateway-side connect timeout for forwarded and SOCKS connections. */
  connect_timeout_ms: z.number().int().positive().optional(),
  local_forwards: z.array(parsedBy((s) => parseLocalForward(s, 'local_forwards'))).default([]),
  remote_forwards: z.array(parsedBy((s) => parseRemoteForward(s, 'remote_forwards'))).default([]),
  socks: z
    .strictObject({
      listen: parsedBy((s) => parseListenAddress(s, 'socks.listen')).default(DEFAULT_SOCKS_LISTEN),
      users: z.array(z.strictObject({ username: credential, password: credential })).default([]),
      udp_bind: parsedBy((s) => parseUri(s, { protocol: 'udp', allowPortZero: true })).default(DEFAULT_UDP_BIND),
    })
    .optional(),
  transparent: z
    .strictObject({
      listen: parsedBy((s) => parseTransparentListen(s, 'transparent.listen')),
      /** Also relay UDP (tproxy only; needs CAP_NET_ADMIN). */
      udp: z.boolean().default(true),
      udp_max_flows: z.number().int().min(1).max(1_000_000).default(DEFAULT_TRANSPARENT_UDP_MAX_FLOWS),
      udp_idle_timeout_ms: z.number().int().min(100).default(DEFAULT_TRANSPARENT_UDP_IDLE_MS),
    })
    .optional(),
  drain_timeout_ms: z.number().int().min(0).default(DEFAULT_DRAIN_TIMEOUT_MS),
  log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
});

export type ProxyConfig = z.infer<typeof proxyConfigSchema>;

/** The command-line flags of `sockgate proxy`, as commander gives them. */
export interface ProxyFlags {
  gateway?: string;
  token?: string;
  local?: string[];
  remote?: string[];
  socks?: string;
  socksUser?: string;
  socksPass?: string;
  socksUdpBind?: string;
  transparent?: string;
  /** commander's --no-transparent-udp: false. */
  transparentUdp?: boolean;
  transport?: string;
  connectTimeout?: string;
  config?: string;
  logLevel?: string;
}

/** Transparent mode (README "Transparent mode"). */
export interface TransparentSettings {
  listen: Extract<LocalEndpoint, { kind: 'tcp' }>;
  udp: boolean;
  udpMaxFlows: number;
  udpIdleMs: number;
}

/** `--transparent`: host:port or a port (TCP only: the kernel redirects IP traffic here). */
export function parseTransparentListen(s: string, what: string): Extract<LocalEndpoint, { kind: 'tcp' }> {
  const ep = parseListenAddress(s, what);
  if (ep.kind !== 'tcp') throw new InvalidArgumentError(`${what}: ${JSON.stringify(s)}: transparent mode listens on an IP address (host:port, [::]:port or a port), not a Unix socket`);
  return ep;
}

/** Everything the proxy needs, validated. */
export interface ProxySettings {
  gateway: GatewayTarget;
  token?: string;
  transports?: TransportName[];
  connectTimeoutMs?: number;
  localForwards: LocalForwardSpec[];
  remoteForwards: RemoteForwardSpec[];
  socks?: { listen: LocalEndpoint; users: SocksUser[]; udpBind: string };
  transparent?: TransparentSettings;
  drainTimeoutMs: number;
  logLevel: string;
}

/** Validate a parsed config tree; the error lists every bad key with its path. */
export function validateProxyConfig(tree: unknown, source: string): ProxyConfig {
  const result = proxyConfigSchema.safeParse(tree ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.flatMap((i) => {
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => `  ${[...i.path, k].join('.')}: unknown key`);
    return [`  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`];
  });
  throw new InvalidArgumentError(`invalid proxy configuration (${source}):\n${problems.join('\n')}`);
}

/** Read and validate a proxy config file. */
export function loadProxyConfig(file: string): ProxyConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`cannot read proxy config ${file}: ${(err as Error).message}`, { cause: err });
  }
  let tree: unknown;
  try {
    tree = parseYaml(text);
  } catch (err) {
    throw new InvalidArgumentError(`cannot parse proxy config ${file}: ${(err as Error).message}`, { cause: err });
  }
  return validateProxyConfig(tree, file);
}

/** Merge flags over a config file (or none) into settings. */
export function resolveProxySettings(flags: ProxyFlags, fileConfig?: ProxyConfig): ProxySettings {
  const cfg = fileConfig ?? validateProxyConfig({}, 'defaults');
  const gatewayText = flags.gateway ?? cfg.gateway;
  if (!gatewayText) throw new InvalidArgumentError('--gateway is required (or `gateway:` in --config): host:port, unix:/path or vsock:2:<port>');
  const transports = flags.transport
    ? flags.transport.split(',').map((t) => t.trim()).filter(Boolean)
    : cfg.transports;
  for (const t of transports ?? []) {
    if (!['shm', 'rdma', 'tcp', 'grpc'].includes(t)) throw new InvalidArgumentError(`--transport: unknown transport "${t}": expected a list of shm, rdma, tcp, grpc`);
  }
  let connectTimeoutMs = cfg.connect_timeout_ms;
  if (flags.connectTimeout !== undefined) {
    connectTimeoutMs = Number(flags.connectTimeout);
    if (!Number.isInteger(connectTimeoutMs) || connectTimeoutMs <= 0) throw new InvalidArgumentError(`--connect-timeout: expected a positive number of ms, got ${JSON.stringify(flags.connectTimeout)}`);
  }
  if ((flags.socksUser === undefined) !== (flags.socksPass === undefined)) {
    throw new InvalidArgumentError('--socks-user and --socks-pass go together (or set socks.users in --config)');
  }
  let socks: ProxySettings['socks'];
  const socksWanted = flags.socks !== undefined || flags.socksUser !== undefined || flags.socksUdpBind !== undefined || cfg.socks !== undefined;
  if (socksWanted) {
    const listen = parseListenAddress(flags.socks ?? cfg.socks?.listen ?? DEFAULT_SOCKS_LISTEN, '--socks');
    const users: SocksUser[] = flags.socksUser !== undefined ? [{ username: flags.socksUser, password: flags.socksPass! }] : (cfg.socks?.users ?? []);
    for (const u of users) {
      if (!u.username || Buffer.byteLength(u.username) > 255 || !u.password || Buffer.byteLength(u.password) > 255) {
        throw new InvalidArgumentError('--socks-user/--socks-pass: each must be 1 to 255 bytes (RFC 1929)');
      }
    }
    const udpBind = flags.socksUdpBind ?? cfg.socks?.udp_bind ?? DEFAULT_UDP_BIND;
    try {
      parseUri(udpBind, { protocol: 'udp', allowPortZero: true });
    } catch (err) {
      throw new InvalidArgumentError(`--socks-udp-bind: ${(err as Error).message}`, { cause: err });
    }
    socks = { listen, users, udpBind };
  }
  const settings: ProxySettings = {
    gateway: parseGatewayTarget(gatewayText),
    localForwards: [...cfg.local_forwards.map((s) => parseLocalForward(s, 'local_forwards')), ...(flags.local ?? []).map((s) => parseLocalForward(s))],
    remoteForwards: [...cfg.remote_forwards.map((s) => parseRemoteForward(s, 'remote_forwards')), ...(flags.remote ?? []).map((s) => parseRemoteForward(s))],
    drainTimeoutMs: cfg.drain_timeout_ms,
    logLevel: flags.logLevel ?? cfg.log_level,
  };
  const token = flags.token ?? cfg.token;
  if (token) settings.token = token;
  if (transports) settings.transports = transports as TransportName[];
  if (connectTimeoutMs !== undefined) settings.connectTimeoutMs = connectTimeoutMs;
  if (socks) settings.socks = socks;
  const transparentListen = flags.transparent ?? cfg.transparent?.listen;
  if (transparentListen !== undefined) {
    settings.transparent = {
      listen: parseTransparentListen(transparentListen, '--transparent'),
      // commander sets transparentUdp true unless --no-transparent-udp: only false is a choice.
      udp: flags.transparentUdp === false ? false : (cfg.transparent?.udp ?? true),
      udpMaxFlows: cfg.transparent?.udp_max_flows ?? DEFAULT_TRANSPARENT_UDP_MAX_FLOWS,
      udpIdleMs: cfg.transparent?.udp_idle_timeout_ms ?? DEFAULT_TRANSPARENT_UDP_IDLE_MS,
    };
  }
  if (!settings.localForwards.length && !settings.remoteForwards.length && !settings.socks && !settings.transparent) {
    throw new InvalidArgumentError('nothing to do: give at least one of -L, -R, --socks or --transparent (or local_forwards, remote_forwards, socks, transparent in --config)');
  }
  return settings;
}
