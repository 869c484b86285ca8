/** The two-VM lab's addresses and ports (topology b: a = 10.99.0.1, b = 10.99.0.2). */
export const A_ADDR = '10.99.0.1';
export const PORTS = {
  /** The gateway under test: control; data = +1, metrics = +2. */
  gateway: 7100,
  /** A gateway on a without rdma (address ""). */
  plainGateway: 7110,
  /** The rdma_cm listener of the gateway under test. */
  rdma: 7150,
  echo: 7200,
  sink: 7201,
  /** b tells a "done" here. */
  control: 7199,
} as const;
/** Both gateways let anonymous callers reach the lab's subnet and loopback. */
export const LAB_RULES = [{ name: 'lab', action: 'allow', destinations: ['10.99.0.0/24', '127.0.0.0/8'] }];

/** The gateway under test's Prometheus text. */
export async function metrics(): Promise<string> {
  const res = await fetch(`http://${A_ADDR}:${PORTS.gateway + 2}/metrics`);
  return res.text();
}

/** Sum of `name`'s samples whose labels include `labels`. */
export function metric(text: string, name: string, labels = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && m[1] === name && (!labels || (m[2] ?? '').includes(labels))) sum += Number(m[3]);
  }
  return sum;
}
