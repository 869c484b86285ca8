/**
 * Named tracers, switched on by SOCKGATE_TRACE, the way grpc-js does it:
 * SOCKGATE_TRACE=all, or a comma list such as `shm,rdma,-policy`. Disabled
 * tracers cost one boolean test.
 */
const spec = (process.env['SOCKGATE_TRACE'] ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const enabledAll = spec.includes('all') || spec.includes('*');
const enabled = new Set(spec.filter((s) => !s.startsWith('-')));
const disabled = new Set(spec.filter((s) => s.startsWith('-')).map((s) => s.slice(1)));

export function isTracerEnabled(name: string): boolean {
  if (disabled.has(name)) return false;
  return enabledAll || enabled.has(name);
}

/** A tracer for one module; returns a function that logs to stderr when enabled. */
export function tracer(name: string): (text: string) => void {
  if (!isTracerEnabled(name)) return () => {};
  return (text: string) => {
    process.stderr.write(`${new Date().toISOString()} | sockgate ${process.pid} | ${name} | ${text}\n`);
  };
}
