/**
 * A small, typed flag parser for the CLI. Flags keep NeMo's names (`--seq_length 128`, `--tp_size=2`), values are
 * checked against their kind, and an unknown flag is an error that lists the known ones: a typo must not be
 * silently ignored in a run that takes days.
 */
import { ConfigError } from '../errors.ts';

export type FlagKind = 'string' | 'int' | 'number' | 'boolean';

export interface FlagSpec {
  kind: FlagKind;
  help: string;
  default?: string | number | boolean;
  /** Lower bound for int/number flags (inclusive). */
  min?: number;
  /** Allowed values for string flags. */
  choices?: readonly string[];
}

export type FlagSpecs = Record<string, FlagSpec>;

export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K]['kind'] extends 'boolean' ? boolean : S[K]['kind'] extends 'string' ? string | undefined : number | undefined;
};

export interface Parsed<S extends FlagSpecs> {
  flags: FlagValues<S>;
  /** Arguments that are not flags, in order. */
  positional: string[];
  /** Arguments after a bare `--`, untouched. */
  rest: string[];
  /** The flags given on the command line (by their underscore names), as opposed to left at their defaults. */
  given: Set<keyof S & string>;
}

export function parseFlags<S extends FlagSpecs>(argv: string[], specs: S, command = 'distill'): Parsed<S> {
  const out: Record<string, string | number | boolean | undefined> = {};
  for (const [name, s] of Object.entries(specs)) out[name] = s.default ?? (s.kind === 'boolean' ? false : undefined);
  const positional: string[] = [];
  const given = new Set<keyof S & string>();
  let rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      rest = argv.slice(i + 1);
      break;
    }
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    let name = a.slice(2);
    let value: string | undefined;
    const eq = name.indexOf('=');
    if (eq >= 0) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    // Accept the dashed spelling too (`--seq-length`), but report under NeMo's underscore name.
    let key = name.replace(/-/g, '_');
    // `--no-FLAG` turns a boolean off, the usual way (`--no-temperature_scaling`); a flag of its own name wins.
    // Own keys only: `--constructor` must be an unknown flag, not Object.prototype's.
    const specOf = (k: string): FlagSpec | undefined => (Object.hasOwn(specs, k) ? specs[k] : undefined);
    const negated = specOf(key) === undefined && key.startsWith('no_') && specOf(key.slice(3))?.kind === 'boolean';
    if (negated) key = key.slice(3);
    const spec = specOf(key);
    if (!spec) {
      throw new ConfigError(
        `${command}: unknown flag --${name}. Known flags: ${Object.keys(specs)
          .map((k) => '--' + k)
          .join(' ')}`,
      );
    }
    given.add(key);
    if (spec.kind === 'boolean') {
      if (negated) {
        if (value !== undefined) throw new ConfigError(`${command}: --${name} takes no value; give --${key}=${value} instead`);
        out[key] = false;
        continue;
      }
      if (value === undefined && i + 1 < argv.length && /^(true|false)$/.test(argv[i + 1])) value = argv[++i];
      if (value !== undefined && !/^(true|false)$/.test(value)) throw new ConfigError(`${command}: --${key}=${value}: give true or false`);
      out[key] = value === undefined ? true : value === 'true';
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new ConfigError(`${command}: --${key} needs a value (${spec.help})`);
      value = argv[++i];
    }
    out[key] = convert(command, key, spec, value);
  }
  return { flags: out as FlagValues<S>, positional, rest, given };
}

function convert(command: string, key: string, spec: FlagSpec, value: string): string | number {
  if (spec.kind === 'string') {
    if (spec.choices && !spec.choices.includes(value)) {
      throw new ConfigError(`${command}: --${key} ${value} is not one of ${spec.choices.join(', ')}`);
    }
    return value;
  }
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) throw new ConfigError(`${command}: --${key} ${value} is not a number`);
  if (spec.kind === 'int' && !Number.isInteger(n)) throw new ConfigError(`${command}: --${key} ${value} is not an integer`);
  if (spec.min !== undefined && n < spec.min) throw new ConfigError(`${command}: --${key} ${value} is below its minimum ${spec.min}`);
  return n;
}

/**
 * The usage text for a command, one line per flag with its choices and default. A boolean that is on by default
 * says how to turn it off (`--no-FLAG`).
 */
export function usage(command: string, summary: string, specs: FlagSpecs): string {
  const lines = [`usage: ${command} [flags]`, '', summary, ''];
  const width = Math.max(...Object.keys(specs).map((k) => k.length)) + 4;
  for (const [k, s] of Object.entries(specs)) {
    const choices = s.choices ? ` {${s.choices.join('|')}}` : '';
    const def =
      s.kind === 'boolean' ? (s.default === true ? ` (default on; --no-${k} turns it off)` : '') : s.default === undefined ? '' : ` (default ${s.default})`;
    lines.push(`  --${k.padEnd(width)}${s.help}${choices}${def}`);
  }
  return lines.join('\n');
}

/** Throws when a flag that has no default was not given. */
export function required<T>(command: string, name: string, v: T | undefined): T {
  if (v === undefined || v === '') throw new ConfigError(`${command}: --${name} is required`);
  return v;
}
