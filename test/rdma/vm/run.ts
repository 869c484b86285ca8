/**
 * CLI of the VM harness (see README.md):
 *
 *   node dist/test/rdma/vm/run.js [options] -- <command...>            one VM (topology a)
 *   node dist/test/rdma/vm/run.js [options] --vms 2 --a "<cmd>" --b "<cmd>"   two VMs (topology b)
 *   node dist/test/rdma/vm/run.js [options] --spec spec.json           {"vms":[{"name","command",...}]}
 *
 * Options: --timeout <s> (whole run, default 900), --mem <MiB>, --smp <n>,
 * --cwd <dir> (guest working dir, default the repo root), --env K=V (repeatable),
 * --out <dir> (copy what guests wrote to $SOCKGATE_VM_OUT there),
 * --kernel-arg <arg> (guest kernel command line, repeatable), --verbose
 * (kernel messages), --keep-ctl.
 *
 * Exit status: the guest command's (the first failing VM's with two); 124 on the
 * hard timeout; 125 when a guest never ran its command; 2 on bad usage. When the
 * host lacks qemu or the packages, prints a SKIP line and exits 0 (under CI,
 * prepare.sh fails instead).
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { combinedExitCode, oneVm, prepare, runVms, shQuote, twoVms, type RunOptions, type VmSpec } from './vm.js';

const USAGE = `usage: run.js [--timeout s] [--mem MiB] [--smp n] [--cwd dir] [--env K=V]... [--kernel-arg a]... [--out dir] [--verbose]
         (-- <command...> | --vms 2 --a "<cmd on a>" --b "<cmd on b>" | --spec file.json)`;

function usage(msg: string): never {
  process.stderr.write(`run: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function parse(argv: string[]): { specs: VmSpec[]; opts: RunOptions } {
  let vms = 1;
  let a: string | undefined;
  let b: string | undefined;
  let specFile: string | undefined;
  let rest: string[] | undefined;
  const opts: RunOptions = {};
  const extra: Partial<VmSpec> = {};
  const env: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${arg} needs a value`);
      return v;
    };
    const num = (): number => {
      const v = Number(val());
      if (!Number.isFinite(v) || v <= 0) usage(`${arg} needs a positive number`);
      return v;
    };
    switch (arg) {
      case '--': rest = argv.slice(i + 1); i = argv.length; break;
      case '--vms': vms = num(); break;
      case '--a': a = val(); break;
      case '--b': b = val(); break;
      case '--spec': specFile = val(); break;
      case '--timeout': opts.timeoutMs = num() * 1000; break;
      case '--mem': extra.memMiB = num(); break;
      case '--smp': extra.smp = num(); break;
      case '--cwd': opts.cwd = resolve(val()); break;
      case '--out': opts.outDir = resolve(val()); break;
      case '--kernel-arg': opts.kernelArgs = [...(opts.kernelArgs ?? []), val()]; break;
      case '--verbose': opts.verbose = true; break;
      case '--keep-ctl': opts.keepCtl = true; break;
      case '--env': {
        const kv = val();
        const eq = kv.indexOf('=');
        if (eq <= 0) usage('--env needs K=V');
        env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '-h': case '--help': process.stdout.write(USAGE + '\n'); process.exit(0);
      // falls through (process.exit does not return)
      default: usage(`unknown argument ${arg}`);
    }
  }
  if (Object.keys(env).length) extra.env = env;
  if (specFile) {
    const parsed = JSON.parse(readFileSync(specFile, 'utf8')) as { vms?: Array<{ name?: string; command?: string; smp?: number; memMiB?: number; env?: Record<string, string> }> };
    const list = parsed.vms ?? [];
    if (list.length === 1) return { specs: oneVm(list[0]!.command ?? usage('spec: vm needs a command'), { ...extra, ...strip(list[0]!) }), opts };
    if (list.length === 2) {
      const [sa, sb] = twoVms(list[0]!.command ?? usage('spec: vm a needs a command'), list[1]!.command ?? usage('spec: vm b needs a command'), extra);
      return { specs: [{ ...sa!, ...strip(list[0]!) }, { ...sb!, ...strip(list[1]!) }], opts };
    }
    usage('spec: "vms" must list one or two VMs');
  }
  if (vms === 2) {
    if (!a || !b) usage('--vms 2 needs --a and --b');
    return { specs: twoVms(a, b, extra), opts };
  }
  if (vms !== 1) usage('--vms is 1 or 2');
  const cmd = a ?? (rest && rest.length === 1 ? rest[0] : rest?.map(shQuote).join(' '));
  if (!cmd) usage('no command');
  return { specs: oneVm(cmd, extra), opts };
}

function strip(v: { smp?: number; memMiB?: number; env?: Record<string, string> }): Partial<VmSpec> {
  const out: Partial<VmSpec> = {};
  if (v.smp) out.smp = v.smp;
  if (v.memMiB) out.memMiB = v.memMiB;
  if (v.env) out.env = v.env;
  return out;
}

async function main(): Promise<number> {
  const { specs, opts } = parse(process.argv.slice(2));
  const prepared = await prepare();
  if (prepared.kind === 'skip') {
    process.stdout.write(`SKIP: sockgate VM harness: ${prepared.reason}\n`);
    return 0;
  }
  const results = await runVms(prepared, specs, opts);
  for (const r of results) {
    const ready = r.readyMs === null ? 'never ready' : `ready after ${(r.readyMs / 1000).toFixed(1)} s`;
    process.stdout.write(`vm ${r.name}: exit ${r.exitCode} (${r.outcome}), ${ready}, ${(r.totalMs / 1000).toFixed(1)} s in all\n`);
  }
  return combinedExitCode(results);
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`run: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(125);
  },
);
