/**
 * A stand-in for the `sockgate` binary in tests: a commander program with only
 * the sidecar command registered, the way server/cli/index.ts registers it.
 */
import { Command } from 'commander';
import { registerSidecarCommand } from '../../../clients/sidecar/cli.js';
import { createTelemetry } from '../../../server/telemetry.js';

const program = new Command('sockgate');
registerSidecarCommand(program, createTelemetry);
await program.parseAsync(process.argv);
