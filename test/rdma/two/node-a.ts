/**
 * VM a (10.99.0.1) of the two-VM rdma tests (topology b, run by suite.ts):
 * the gateway under test with the rdma transport on rxe0's address, a second
 * gateway without rdma (the "no device on this side" fallback), and the
 * destinations: an echo server and a hashing sink. VM b runs
 * dist/test/rdma/two/*.test.js against them and says "done" on PORT_CONTROL
 * when it is finished; this side then stops everything and exits 0. Exits 1
 * if a gateway fails to start or stop; gives up after LIFETIME_MS.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, mergeConfig } from '../../../server/config.js';
import { Gateway } from '../../../server/gateway.js';
import { A_ADDR, LAB_RULES, PORTS, RESUME_MS, SOURCE_BYTES, sourceBlock, sourceChunk } from './lab.js';

const LIFETIME_MS = 25 * 60_000;

function log(msg: string): void {
  process.stdout.write(`node-a: ${msg}\n`);
}

async function listen(server: Server, port: number): Promise<void> {
  server.listen(port, A_ADDR);
  await once(server, 'listening');
}

function gatewayConfig(control: number, rdmaAddress: string, rdma: Record<string, unknown> = { port: rdmaAddress ? PORTS.rdma : 0 }) {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-a-'));
  return loadConfig({
    overrides: mergeConfig(
      {
        listen: { control: `${A_ADDR}:${control}`, data: `${A_ADDR}:${control + 1}`, metrics: `${A_ADDR}:${control + 2}` },
        telemetry: { log_level: 'warn' },
        transports: { shm: { path: join(dir, 'shm.sock') }, rdma: { address: rdmaAddress, keepalive_ms: 2000, ...rdma } },
      },
      { rules: LAB_RULES },
    ),
  });
}

async function main(): Promise<number> {
  const sockets = new Set<Socket>();
  const track = (c: Socket) => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    c.on('error', () => {});
  };
  // Echo: everything back; FIN after the client's FIN (half-close both ways).
  const echo = createServer({ allowHalfOpen: true }, (c) => {
    track(c);
    c.pipe(c);
  });
  // Sink: hashes what arrives; after the client's FIN, answers "<bytes> <sha256>\n" and ends.
  const sink = createServer({ allowHalfOpen: true }, (c) => {
    track(c);
    const h = createHash('sha256');
    let n = 0;
    c.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    c.on('end', () => c.end(`${n} ${h.digest('hex')}\n`));
  });
  // Source: SOURCE_BYTES of the lab's deterministic stream, then FIN (the receiver knows its hash).
  const block = sourceBlock();
  const source = createServer({ allowHalfOpen: true }, (c) => {
    track(c);
    let sent = 0;
    const pump = () => {
      while (sent < SOURCE_BYTES) {
        const piece = sourceChunk(block, sent);
        sent += piece.length;
        if (!c.write(piece)) return void c.once('drain', pump);
      }
      c.end();
    };
    pump();
  });
  await listen(echo, PORTS.echo);
  await listen(sink, PORTS.sink);
  await listen(source, PORTS.source);

  const main = new Gateway(gatewayConfig(PORTS.gateway, A_ADDR));
  const plain = new Gateway(gatewayConfig(PORTS.plainGateway, ''));
  const failover = new Gateway(gatewayConfig(PORTS.failoverGateway, A_ADDR, { port: PORTS.failoverRdma, resume_ms: RESUME_MS }));
  try {
    const a = await main.start();
    const b = await plain.start();
    await failover.start();
    log(`gateway (rdma on ${A_ADDR}:${PORTS.rdma}) at ${a.control}; gateway without rdma at ${b.control}`);
  } catch (err) {
    log(`gateway start failed: ${(err as Error).stack ?? String(err)}`);
    return 1;
  }

  const done = new Promise<string>((resolve) => {
    const control = createServer((c) => {
      track(c);
      c.setEncoding('utf8');
      c.on('data', (d: string) => {
        if (d.includes('done')) {
          c.end('bye\n');
          resolve('done');
        }
      });
    });
    control.listen(PORTS.control, A_ADDR);
  });
  const outcome = await Promise.race([done, new Promise<string>((r) => setTimeout(() => r('timeout'), LIFETIME_MS).unref())]);
  log(`b says ${outcome}; stopping`);
  let code = outcome === 'done' ? 0 : 1;
  for (const g of [main, plain, failover]) {
    try {
      await g.stop();
    } catch (err) {
      log(`gateway stop failed: ${(err as Error).message}`);
      code = 1;
    }
  }
  for (const s of sockets) s.destroy();
  echo.close();
  sink.close();
  source.close();
  return code;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    process.exit(1);
  },
);
