/**
 * Transport names, defined once: the lower-case names that configs, policies,
 * the SDK's options and metrics use, and the wire kind (TransportKind) of each.
 */
import { TransportKind, transportKindToJSON } from './gen/sockgate/v1/transport.js';

export const TRANSPORT_NAMES = ['shm', 'rdma', 'tcp', 'grpc'] as const;
export type TransportName = (typeof TRANSPORT_NAMES)[number];

export const TRANSPORT_KINDS: Readonly<Record<TransportName, TransportKind>> = {
  shm: TransportKind.TRANSPORT_KIND_SHM,
  rdma: TransportKind.TRANSPORT_KIND_RDMA,
  tcp: TransportKind.TRANSPORT_KIND_TCP,
  grpc: TransportKind.TRANSPORT_KIND_GRPC,
};

const NAMES: ReadonlyMap<TransportKind, TransportName> = new Map(TRANSPORT_NAMES.map((n) => [TRANSPORT_KINDS[n], n]));

/** The name of a wire kind; undefined for UNSPECIFIED or a kind this build does not know. */
export function transportNameOfKind(kind: TransportKind): TransportName | undefined {
  return NAMES.get(kind);
}

/** The wire kind of a name; undefined for a name that is none of ours. */
export function transportKindOfName(name: string): TransportKind | undefined {
  return (TRANSPORT_NAMES as readonly string[]).includes(name) ? TRANSPORT_KINDS[name as TransportName] : undefined;
}

/**
 * The name of a wire kind as metrics, tables and reports print it: "none" for
 * UNSPECIFIED; a kind this build does not know keeps its lower-cased wire name.
 */
export function transportLabel(kind: TransportKind): TransportName | 'none' {
  if (kind === TransportKind.TRANSPORT_KIND_UNSPECIFIED) return 'none';
  return NAMES.get(kind) ?? (transportKindToJSON(kind).replace('TRANSPORT_KIND_', '').toLowerCase() as TransportName);
}
