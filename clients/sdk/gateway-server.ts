/** A listener the SDK opened on the gateway's host (Gateway#listen). */
import { EventEmitter } from 'node:events';

/** A listener on the gateway's host; emits 'connection' with GatewaySocket. */
export class GatewayServer extends EventEmitter {
  private closed = false;
  constructor(
    readonly listenerId: string,
    /** The host address listened on, with the real port. */
    readonly localUri: string,
    private readonly stop: () => Promise<void>,
  ) {
    super();
  }

  address(): { address: string; port: number } {
    const m = /^[a-z0-9]+:\/\/(\[([^\]]+)\]|([^:]+)):([0-9]+)$/.exec(this.localUri);
    return { address: m?.[2] ?? m?.[3] ?? '', port: Number(m?.[4] ?? 0) };
  }

  /** Stop listening (open sockets stay). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stop();
    this.emit('close');
  }
}
