/**
 * The VM as the identity: which configured identity a guest is, from what the
 * hypervisor tells the host about the connection — the peer CID of a native
 * AF_VSOCK connection (vhost-vsock), or the VMM socket a Firecracker / Cloud
 * Hypervisor guest's connection arrived through (`<uds_path>_<port>`).
 *
 * The origin reaches the policy through the one per-connection mechanism
 * (control-peer.ts): the control listener records it with the connection,
 * and each call looks it up by its peer string. Built once from the
 * configuration; a mapping the policy cannot make sense of (an unknown
 * identity, one CID or path for two identities) is refused with the key.
 */
import { resolve } from 'node:path';
import { InvalidArgumentError, UnauthenticatedError } from '../proto/errors.js';
import type { Config, IdentityConfig } from './config.js';

/** What this file needs of a policy identity (generic: policy.ts imports this file). */
interface Named {
  readonly name: string;
}

/** Where a VM guest's connection came from, as the hypervisor tells it. */
export type VmOrigin = { readonly cid: number } | { readonly vmmPath: string };

/** `vsock CID 3` / `VMM socket /run/fc/a.sock`, for messages. */
export function describeVm(o: VmOrigin): string {
  return 'cid' in o ? `vsock CID ${o.cid}` : `VMM socket ${o.vmmPath}`;
}

/** A VMM socket path in the one form the maps use (no `..`, no trailing slash). */
export function normalizeVmmPath(p: string): string {
  return resolve(p);
}

/** CID → identity name and VMM path → identity name, from `identities[]` and `vsock_uds.vms[]`. */
export class VmIdentityMap {
  readonly #byCid = new Map<number, string>();
  readonly #byPath = new Map<string, string>();

  /** `known`: the configured identity names (a name not among them is refused). */
  constructor(config: Pick<Config, 'identities' | 'vsock_uds'>, known: ReadonlySet<string>) {
    config.identities.forEach((id: IdentityConfig, i) => {
      id.vsock_cids.forEach((cid, j) => this.add(this.#byCid, cid, id.name, `identities[${i}].vsock_cids[${j}]`, `CID ${cid}`));
      id.vmm_paths.forEach((p, j) => this.add(this.#byPath, normalizeVmmPath(p), id.name, `identities[${i}].vmm_paths[${j}]`, p));
    });
    config.vsock_uds?.vms.forEach((vm, i) => {
      if (vm.identity === undefined) return;
      const key = `vsock_uds.vms[${i}].identity`;
      if (!known.has(vm.identity)) throw new InvalidArgumentError(`${key}: no identity is named ${JSON.stringify(vm.identity)}`);
      this.add(this.#byPath, normalizeVmmPath(vm.path), vm.identity, key, vm.path);
    });
  }

  private add<K>(map: Map<K, string>, k: K, name: string, key: string, what: string): void {
    const other = map.get(k);
    if (other !== undefined && other !== name) throw new InvalidArgumentError(`${key}: ${what} already maps to identity ${JSON.stringify(other)}`);
    map.set(k, name);
  }

  /** The identity name a VM origin maps to, or undefined (none). */
  nameOf(o: VmOrigin): string | undefined {
    return 'cid' in o ? this.#byCid.get(o.cid) : this.#byPath.get(normalizeVmmPath(o.vmmPath));
  }

  get size(): number {
    return this.#byCid.size + this.#byPath.size;
  }
}

/**
 * Identify VM guests: a guest is its VM's identity, without a token; a token
 * (or certificate), if sent, must name the same identity. A VM mapped to no
 * identity is refused unless `anonymous.enabled: true` is written out; then it
 * is the token's identity if it sent one, else anonymous.
 */
export class VmIdentities<Identity extends Named> {
  readonly #map: VmIdentityMap;
  readonly #byName = new Map<string, Identity>();
  readonly #anonymousForVms: boolean;

  constructor(config: Pick<Config, 'identities' | 'vsock_uds' | 'anonymous'>, known: ReadonlySet<string>, make: (id: IdentityConfig) => Identity) {
    this.#map = new VmIdentityMap(config, known);
    for (const id of config.identities) this.#byName.set(id.name, make(id));
    this.#anonymousForVms = config.anonymous.explicit === true;
  }

  /** The identity name `o` maps to, if any (status, logs). */
  nameOf(o: VmOrigin): string | undefined {
    return this.#map.nameOf(o);
  }

  /** `sent`: the identity the call's own credentials name, if it sent any. Throws UnauthenticatedError. */
  identify(o: VmOrigin, sent: Identity | undefined, anonymous: Identity | undefined): Identity {
    const name = this.#map.nameOf(o);
    const vm = name === undefined ? undefined : this.#byName.get(name);
    if (vm && sent && sent.name !== vm.name) {
      throw new UnauthenticatedError(`the credentials sent name identity ${JSON.stringify(sent.name)}, but the ${describeVm(o)} is identity ${JSON.stringify(vm.name)}`);
    }
    if (vm) return vm;
    if (this.#anonymousForVms && sent) return sent;
    if (this.#anonymousForVms && anonymous) return anonymous;
    throw new UnauthenticatedError(`the ${describeVm(o)} maps to no identity (identities[].vsock_cids, identities[].vmm_paths or vsock_uds.vms[].identity) and anonymous.enabled is not set to true`);
  }
}
