/**
 * The sidecar's configuration: one YAML file, validated with one zod schema in
 * the style of server/config.ts. Every error names the offending key by its
 * path (`clusters.0.health_check.interval_ms`) and, inside a named listener or
 * cluster, by that name too. Defaults follow Envoy's where Envoy has one.
 *
 * ```yaml
 * gateway: { target: 127.0.0.1:7070, token: ..., transports: [tcp, grpc] }
 * telemetry: { metrics: 127.0.0.1:9901, log_level: info }
 * shutdown: { drain_timeout_ms: 10000 }
 * listeners:
 *   - { name: db, address: 127.0.0.1:15432, cluster: db, idle_timeout_ms: 3600000 }
 * clusters:
 *   - name: db
 *     endpoints: [tcp://10.0.0.1:5432, tcp://10.0.0.2:5432]   # or dns: {name, port, refresh_ms}
 *     lb_policy: round_robin                                    # least_connections | maglev
 *     connect_timeout_ms: 5000
 *     retries: 1
 *     health_check: { interval_ms: 5000, timeout_ms: 1000, unhealthy_threshold: 3, healthy_threshold: 2 }
 *     outlier_detection: { consecutive_failures: 5, base_ejection_ms: 30000, max_ejection_ms: 300000 }
 *     circuit_breakers: { max_connections: 1024, max_pending: 1024 }
 * ```
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { InvalidArgumentError, SockgateError } from '../../proto/errors.js';
import { parseUri } from '../../proto/uri.js';

/** Host a listener binds when its address is a bare port: loopback, so nothing is exposed by accident. */
export const DEFAULT_LISTENER_HOST = '127.0.0.1';
/** Maglev lookup-table size: prime, and > 100× any realistic endpoint count (the paper's guidance). */
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;
/** Largest Maglev table accepted: an Int32Array of this many entries is 20 MiB, rebuilt on every membership change. */
const MAX_MAGLEV_TABLE_SIZE = 5_000_011;

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().min(0);
const percent = z.number().min(0).max(100);

function isPrime(n: number): boolean {
  if (n < 2 || !Number.isInteger(n)) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/**
 * A listener address: `host:port`, `[v6]:port`, or a bare port (loopback).
 * Port 0 lets the kernel choose (tests); the chosen port is logged.
 */
export function parseListenerAddress(addr: string | number): { host: string; port: number } {
  if (typeof addr === 'number') return { host: DEFAULT_LISTENER_HOST, port: addr };
  const m = /^(?:\[([^\]]+)\]|([^:\s[\]]+)):([0-9]{1,5})$/.exec(addr);
  if (!m) throw new InvalidArgumentError(`listener address ${JSON.stringify(addr)}: expected host:port, [ipv6]:port or a port number`);
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && isIP(m[1]) !== 6) throw new InvalidArgumentError(`listener address ${JSON.stringify(addr)}: invalid IPv6 literal`);
  const port = Number(m[3]);
  if (port > 65535) throw new InvalidArgumentError(`listener address ${JSON.stringify(addr)}: port above 65535`);
  return { host, port };
}

const listenerAddress = z.union([z.number().int().min(0).max(65535), z.string()]).superRefine((v, ctx) => {
  if (typeof v === 'number') return;
  try {
    parseListenerAddress(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

/** A TCP endpoint URI the gateway can connect: `tcp://host:port` or `tcp6://[addr]:port`. */
const endpointUri = z.string().superRefine((v, ctx) => {
  try {
    parseUri(v, { protocol: 'tcp' });
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: err instanceof SockgateError ? err.message : String(err) });
  }
});

/** Bytes for a health check to send or expect: `{ text: "PING\r\n" }` or `{ hex: "0a0b" }`. */
const payloadSchema = z
  .strictObject({
    text: z.string().min(1).optional(),
    hex: z
      .string()
      .regex(/^([0-9a-fA-F]{2})+$/, 'expected an even number of hex digits')
      .optional(),
  })
  .refine((p) => (p.text === undefined) !== (p.hex === undefined), { message: 'give exactly one of text or hex' });

const healthCheckSchema = z.strictObject({
  /** Time between the end of one check and the start of the next. */
  interval_ms: positiveInt.default(5_000),
  /** One check (connect through the gateway, send, expect) must finish within this. */
  timeout_ms: positiveInt.default(1_000),
  /** Consecutive failures that mark a healthy endpoint unhealthy. */
  unhealthy_threshold: positiveInt.default(3),
  /** Consecutive successes that mark an unhealthy endpoint healthy (a new endpoint needs one). */
  healthy_threshold: positiveInt.default(2),
  send: payloadSchema.optional(),
  /** The check passes once these bytes appear in what the endpoint sends back. */
  expect: payloadSchema.optional(),
});

const outlierSchema = z
  .strictObject({
    /** Consecutive connect failures that eject an endpoint. */
    consecutive_failures: positiveInt.default(5),
    /** First ejection lasts this long; the n-th ejection lasts n times as long (Envoy's rule). */
    base_ejection_ms: positiveInt.default(30_000),
    /** Cap on one ejection. */
    max_ejection_ms: positiveInt.default(300_000),
    /** At most this share of a cluster's endpoints is ejected at once (at least one may always be). */
    max_ejection_percent: percent.default(10),
  })
  .refine((o) => o.max_ejection_ms >= o.base_ejection_ms, { message: 'max_ejection_ms must be at least base_ejection_ms', path: ['max_ejection_ms'] });

const circuitBreakerSchema = z.strictObject({
  /** Upstream connections (open and opening) of the cluster. */
  max_connections: positiveInt.default(1024),
  /** Downstream connections waiting for an upstream connection. */
  max_pending: positiveInt.default(1024),
});

const dnsSchema = z.strictObject({
  /** Host name resolved with the system resolver (getaddrinfo: /etc/hosts, then DNS). */
  name: z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, 'expected a host name'),
  port: z.number().int().min(1).max(65535),
  /** Re-resolve this often; the endpoint set follows the answer (the last good answer is kept on errors). */
  refresh_ms: positiveInt.default(5_000),
  /** Address family to ask for: 4, 6, or 0 for both. */
  family: z.union([z.literal(0), z.literal(4), z.literal(6)]).default(0),
});

const lbPolicy = z.enum(['round_robin', 'least_connections', 'maglev']);

const clusterSchema = z
  .strictObject({
    name: z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits and _.- only'),
    /** Static endpoints: tcp://host:port. */
    endpoints: z.array(endpointUri).min(1).optional(),
    /** Or endpoints from a DNS name, re-resolved. */
    dns: dnsSchema.optional(),
    lb_policy: lbPolicy.default('round_robin'),
    maglev: z
      .strictObject({
        table_size: z
          .number()
          .int()
          .max(MAX_MAGLEV_TABLE_SIZE)
          .refine(isPrime, { message: 'must be a prime number (e.g. 65537)' })
          .default(DEFAULT_MAGLEV_TABLE_SIZE),
      })
      .prefault({}),
    /** One upstream connect (through the gateway, attach included) must finish within this. */
    connect_timeout_ms: positiveInt.default(5_000),
    /** Further connect attempts after a failure, each on another endpoint when one is left. */
    retries: nonNegativeInt.max(16).default(0),
    /** Below this percentage of available endpoints, balance over all of them (Envoy's panic mode); 0 disables. */
    healthy_panic_threshold: percent.default(50),
    health_check: healthCheckSchema.optional(),
    outlier_detection: outlierSchema.optional(),
    circuit_breakers: circuitBreakerSchema.prefault({}),
  })
  .superRefine((c, ctx) => {
    if ((c.endpoints === undefined) === (c.dns === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of endpoints (a static list) or dns', path: ['endpoints'] });
    }
    if (c.endpoints && new Set(c.endpoints).size !== c.endpoints.length) {
      ctx.addIssue({ code: 'custom', message: 'duplicate endpoint', path: ['endpoints'] });
    }
    if (c.lb_policy === 'maglev' && c.endpoints && c.endpoints.length > c.maglev.table_size) {
      ctx.addIssue({ code: 'custom', message: 'table_size must exceed the endpoint count', path: ['maglev', 'table_size'] });
    }
  });

const listenerSchema = z.strictObject({
  name: z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits and _.- only'),
  /** host:port, [v6]:port, or a bare port (binds 127.0.0.1). */
  address: listenerAddress,
  /** Name of the cluster connections are balanced over. */
  cluster: z.string().min(1),
  /** Close both sides after this long without a byte either way; 0 disables. Envoy's default: one hour. */
  idle_timeout_ms: nonNegativeInt.default(3_600_000),
});

const transportName = z.enum(['shm', 'rdma', 'tcp', 'grpc']);

export const sidecarConfigSchema = z
  .strictObject({
    gateway: z.strictObject({
      /** Gateway control address: host:port or unix:/path. */
      target: z.string().min(1),
      /** Bearer token; the CLI falls back to $SOCKGATE_TOKEN. */
      token: z.string().min(1).optional(),
      /** Data-plane transports to offer, most preferred first. */
      transports: z.array(transportName).min(1).optional(),
    }),
    telemetry: z
      .strictObject({
        /** Prometheus endpoint host:port ('' disables). 9901: where Envoy users look for an admin port. */
        metrics: z.string().default('127.0.0.1:9901'),
        log_level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
      })
      .prefault({}),
    shutdown: z
      .strictObject({
        /** On SIGTERM, open connections get this long to finish before they are closed. */
        drain_timeout_ms: positiveInt.default(10_000),
      })
      .prefault({}),
    listeners: z.array(listenerSchema).default([]),
    clusters: z.array(clusterSchema).default([]),
  })
  .superRefine((cfg, ctx) => {
    const clusterNames = new Set<string>();
    cfg.clusters.forEach((c, i) => {
      if (clusterNames.has(c.name)) ctx.addIssue({ code: 'custom', message: `duplicate cluster name "${c.name}"`, path: ['clusters', i, 'name'] });
      clusterNames.add(c.name);
    });
    const listenerNames = new Set<string>();
    const bound = new Map<string, number>();
    cfg.listeners.forEach((l, i) => {
      if (listenerNames.has(l.name)) ctx.addIssue({ code: 'custom', message: `duplicate listener name "${l.name}"`, path: ['listeners', i, 'name'] });
      listenerNames.add(l.name);
      if (!clusterNames.has(l.cluster)) ctx.addIssue({ code: 'custom', message: `no cluster named "${l.cluster}"`, path: ['listeners', i, 'cluster'] });
      let a: { host: string; port: number };
      try {
        a = parseListenerAddress(l.address);
      } catch {
        return; // reported at listeners.N.address already
      }
      if (a.port !== 0) {
        const key = `${a.host}:${a.port}`;
        const other = bound.get(key);
        if (other !== undefined) ctx.addIssue({ code: 'custom', message: `address ${key} is also used by listeners.${other}`, path: ['listeners', i, 'address'] });
        bound.set(key, i);
      }
    });
  });

export type SidecarConfig = z.infer<typeof sidecarConfigSchema>;
export type ListenerConfig = SidecarConfig['listeners'][number];
export type ClusterConfig = SidecarConfig['clusters'][number];
export type HealthCheckConfig = NonNullable<ClusterConfig['health_check']>;
export type OutlierConfig = NonNullable<ClusterConfig['outlier_detection']>;
export type CircuitBreakerConfig = ClusterConfig['circuit_breakers'];
export type DnsConfig = NonNullable<ClusterConfig['dns']>;
export type LbPolicy = z.infer<typeof lbPolicy>;
export type GatewayLinkConfig = SidecarConfig['gateway'];
export type Payload = z.infer<typeof payloadSchema>;

/** The bytes of a health-check payload. */
export function payloadBytes(p: Payload): Buffer {
  return p.hex !== undefined ? Buffer.from(p.hex, 'hex') : Buffer.from(p.text ?? '', 'utf8');
}

/** ` (cluster "db")` for a path inside a named list entry, so the message names the entry too. */
function entryName(tree: unknown, path: readonly PropertyKey[]): string {
  const [section, index] = path;
  if ((section !== 'clusters' && section !== 'listeners') || typeof index !== 'number' || path.length < 3) return '';
  const list = (tree as Record<string, unknown> | null)?.[section];
  const name = Array.isArray(list) ? (list[index] as { name?: unknown } | undefined)?.name : undefined;
  return typeof name === 'string' ? ` (${section === 'clusters' ? 'cluster' : 'listener'} "${name}")` : '';
}

/** Validate a parsed tree; the error lists every bad key with its path. */
export function validateSidecarConfig(tree: unknown, source: string): SidecarConfig {
  const result = sidecarConfigSchema.safeParse(tree);
  if (result.success) return result.data;
  const problems = result.error.issues.flatMap((i) => {
    // An unknown key is reported at its parent; name the key itself instead.
    if (i.code === 'unrecognized_keys') return i.keys.map((k) => `  ${[...i.path, k].join('.')}: unknown key${entryName(tree, i.path.concat(k))}`);
    const key = i.path.length ? i.path.join('.') : '(top level)';
    return [`  ${key}: ${i.message}${entryName(tree, i.path)}`];
  });
  throw new InvalidArgumentError(`invalid sidecar configuration (${source}):\n${problems.join('\n')}`);
}

/** Parse YAML text and validate it. */
export function parseSidecarConfig(text: string, source: string): SidecarConfig {
  let tree: unknown;
  try {
    tree = parseYaml(text) ?? {};
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw new InvalidArgumentError(`cannot parse ${source}${where}: ${(err as Error).message}`, { cause: err });
  }
  return validateSidecarConfig(tree, source);
}

/** Read, parse and validate a sidecar config file. */
export function loadSidecarConfig(file: string): SidecarConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`cannot read sidecar config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseSidecarConfig(text, file);
}
