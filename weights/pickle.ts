// A restricted unpickler for the Python pickle streams inside PyTorch checkpoints. It
// interprets only the opcodes that torch.save writes (protocols 2 to 4) and resolves every
// global through the caller's `resolveGlobal`, which returns an allowed stand-in or throws.
// Nothing from the stream is ever executed: REDUCE calls a stand-in written in TypeScript.
//
// Python values map to: None → null, bool → boolean, int → number (bigint beyond 2^53),
// float → number, str → string, bytes → Uint8Array, list and tuple → array, dict → Map.
import { CheckpointError } from './source.ts';

const CORRUPT = 'the pickle stream is corrupt, so download or save the checkpoint again';

/** An invalid, truncated or disallowed pickle stream. */
export class UnpicklingError extends CheckpointError {}

/** An allowed Python global (class or function). REDUCE calls `call` with the argument tuple. */
export interface PickleGlobal {
  readonly module: string;
  readonly name: string;
  call(args: unknown[]): unknown;
}

export interface UnpickleOptions {
  /** File name, for error messages. */
  file: string;
  /** The stream's name inside the file (e.g. the zip entry), for error messages. */
  entry: string;
  /** Returns the stand-in for `module.name`, or throws when the global is not allowed. */
  resolveGlobal(module: string, name: string): PickleGlobal;
  /** Resolves a persistent id (BINPERSID), e.g. PyTorch's ('storage', type, key, location, numel). */
  persistentLoad(pid: unknown): unknown;
  /** Applies BUILD (`__setstate__`) with `state` to `target`, or throws when that is not allowed. */
  build(target: unknown, state: unknown): void;
}

// Opcode names of pickle protocols 0 to 5 (CPython Lib/pickletools.py), for error messages.
const OPCODE_NAMES: Record<number, string> = {
  0x28: 'MARK', 0x2e: 'STOP', 0x30: 'POP', 0x31: 'POP_MARK', 0x32: 'DUP', 0x46: 'FLOAT', 0x49: 'INT', 0x4a: 'BININT',
  0x4b: 'BININT1', 0x4c: 'LONG', 0x4d: 'BININT2', 0x4e: 'NONE', 0x50: 'PERSID', 0x51: 'BINPERSID', 0x52: 'REDUCE',
  0x53: 'STRING', 0x54: 'BINSTRING', 0x55: 'SHORT_BINSTRING', 0x56: 'UNICODE', 0x58: 'BINUNICODE', 0x61: 'APPEND',
  0x62: 'BUILD', 0x63: 'GLOBAL', 0x64: 'DICT', 0x7d: 'EMPTY_DICT', 0x65: 'APPENDS', 0x67: 'GET', 0x68: 'BINGET',
  0x69: 'INST', 0x6a: 'LONG_BINGET', 0x6c: 'LIST', 0x5d: 'EMPTY_LIST', 0x6f: 'OBJ', 0x70: 'PUT', 0x71: 'BINPUT',
  0x72: 'LONG_BINPUT', 0x73: 'SETITEM', 0x74: 'TUPLE', 0x29: 'EMPTY_TUPLE', 0x75: 'SETITEMS', 0x47: 'BINFLOAT',
  0x80: 'PROTO', 0x81: 'NEWOBJ', 0x82: 'EXT1', 0x83: 'EXT2', 0x84: 'EXT4', 0x85: 'TUPLE1', 0x86: 'TUPLE2', 0x87: 'TUPLE3',
  0x88: 'NEWTRUE', 0x89: 'NEWFALSE', 0x8a: 'LONG1', 0x8b: 'LONG4', 0x42: 'BINBYTES', 0x43: 'SHORT_BINBYTES',
  0x8c: 'SHORT_BINUNICODE', 0x8d: 'BINUNICODE8', 0x8e: 'BINBYTES8', 0x8f: 'EMPTY_SET', 0x90: 'ADDITEMS', 0x91: 'FROZENSET',
  0x92: 'NEWOBJ_EX', 0x93: 'STACK_GLOBAL', 0x94: 'MEMOIZE', 0x95: 'FRAME', 0x96: 'BYTEARRAY8', 0x97: 'NEXT_BUFFER',
  0x98: 'READONLY_BUFFER',
};

/** Interprets a pickle stream and returns the object it describes. */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions): unknown {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder();
  let stack: unknown[] = [];
  const markedStacks: unknown[][] = [];
  const memo = new Map<number, unknown>();
  let position = 0;
  let opcodeStart = 0;

  const fail = (message: string): never => {
    throw new UnpicklingError(options.file, `byte ${opcodeStart}: ${message}`, options.entry);
  };
  const truncated = (): never => fail(`the pickle stream ends inside an opcode's argument (${bytes.byteLength} bytes); the file is truncated, download or save it again`);

  /** Moves past `length` argument bytes and returns where they start. */
  const advance = (length: number): number => {
    if (length > bytes.byteLength - position) truncated();
    position += length;
    return position - length;
  };
  const take = (length: number): Uint8Array => {
    const start = advance(length);
    return bytes.subarray(start, start + length);
  };
  const u8 = (): number => bytes[advance(1)];
  const u16 = (): number => view.getUint16(advance(2), true);
  const u32 = (): number => view.getUint32(advance(4), true);
  const i32 = (): number => view.getInt32(advance(4), true);
  const u64 = (): number => {
    const value = view.getBigUint64(advance(8), true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${value} is too large; ${CORRUPT}`);
    return Number(value);
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, position);
    if (end < 0) truncated();
    const text = utf8.decode(bytes.subarray(position, end));
    position = end + 1;
    return text;
  };

  const pop = (): unknown => {
    if (stack.length === 0) fail(`${OPCODE_NAMES[bytes[opcodeStart]]} needs a value but the stack is empty; ${CORRUPT}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) fail(`${OPCODE_NAMES[bytes[opcodeStart]]} needs a value but the stack is empty; ${CORRUPT}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const previous = markedStacks.pop();
    if (!previous) fail(`${OPCODE_NAMES[bytes[opcodeStart]]} has no matching MARK; ${CORRUPT}`);
    stack = previous!;
    return items;
  };
  const memoGet = (index: number): unknown => {
    if (!memo.has(index)) fail(`memo entry ${index} is read before it is written; ${CORRUPT}`);
    return memo.get(index);
  };
  const setItems = (target: unknown, items: unknown[]): void => {
    if (!(target instanceof Map)) fail(`${OPCODE_NAMES[bytes[opcodeStart]]} needs a dict, found ${describePickleValue(target)}; ${CORRUPT}`);
    if (items.length % 2 !== 0) fail(`SETITEMS has an odd number of values (${items.length}); ${CORRUPT}`);
    for (let i = 0; i < items.length; i += 2) (target as Map<unknown, unknown>).set(items[i], items[i + 1]);
  };
  const appendItems = (target: unknown, items: unknown[]): void => {
    if (!Array.isArray(target)) fail(`${OPCODE_NAMES[bytes[opcodeStart]]} needs a list, found ${describePickleValue(target)}; ${CORRUPT}`);
    (target as unknown[]).push(...items);
  };
  const pushGlobal = (module: string, name: string): void => {
    stack.push(options.resolveGlobal(module, name));
  };

  while (position < bytes.byteLength) {
    opcodeStart = position;
    const opcode = u8();
    switch (opcode) {
      case 0x80: { // PROTO
        const protocol = u8();
        if (protocol > 5) fail(`pickle protocol ${protocol} is newer than 5, the latest this reader knows; save the checkpoint with torch.save's default protocol (2)`);
        break;
      }
      case 0x95: // FRAME: a length prefix for buffered reading; the opcodes inside are read as usual.
        u64();
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        markedStacks.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;

      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1: a little-endian two's-complement integer of n bytes.
        stack.push(readLong(take(u8())));
        break;
      case 0x47: // BINFLOAT: big-endian f64.
        stack.push(view.getFloat64(advance(8), false));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8.decode(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8.decode(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8.decode(take(u64())));
        break;
      case 0x42: // BINBYTES
        stack.push(new Uint8Array(take(u32())));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(new Uint8Array(take(u8())));
        break;

      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x74: { // TUPLE
        // popMark replaces `stack`, so it must run before `stack.push` is looked up.
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const second = pop();
        stack.push([pop(), second]);
        break;
      }
      case 0x87: { // TUPLE3
        const third = pop();
        const second = pop();
        stack.push([pop(), second, third]);
        break;
      }
      case 0x73: { // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const value = pop();
        appendItems(top(), [value]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }

      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;

      case 0x63: { // GLOBAL: "module\nname\n"
        const module = line();
        pushGlobal(module, line());
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail(`STACK_GLOBAL needs two strings, found ${describePickleValue(module)} and ${describePickleValue(name)}; ${CORRUPT}`);
        pushGlobal(module as string, name as string);
        break;
      }
      case 0x52: { // REDUCE: callable(*args)
        const args = pop();
        const callable = pop();
        if (!isPickleGlobal(callable)) fail(`REDUCE needs a callable, found ${describePickleValue(callable)}; ${CORRUPT}`);
        if (!Array.isArray(args)) fail(`REDUCE needs an argument tuple, found ${describePickleValue(args)}; ${CORRUPT}`);
        stack.push((callable as PickleGlobal).call(args as unknown[]));
        break;
      }
      case 0x62: { // BUILD: target.__setstate__(state)
        const state = pop();
        options.build(top(), state);
        break;
      }
      case 0x51: // BINPERSID
        stack.push(options.persistentLoad(pop()));
        break;

      default: {
        const opcodeName = OPCODE_NAMES[opcode];
        fail(
          opcodeName
            ? `opcode ${opcodeName} (0x${hex(opcode)}) is not supported: PyTorch state dicts do not use it; re-save the checkpoint as torch.save(model.state_dict(), path)`
            : `unknown opcode 0x${hex(opcode)}; ${CORRUPT}`,
        );
      }
    }
  }
  opcodeStart = position;
  return fail(`the pickle stream ends without STOP; the file is truncated, download or save it again`);
}

function readLong(digits: Uint8Array): number | bigint {
  if (digits.byteLength === 0) return 0;
  let value = 0n;
  for (let i = digits.byteLength - 1; i >= 0; i--) value = (value << 8n) | BigInt(digits[i]);
  if (digits[digits.byteLength - 1] & 0x80) value -= 1n << BigInt(8 * digits.byteLength);
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

function hex(opcode: number): string {
  return opcode.toString(16).padStart(2, '0');
}

function isPickleGlobal(value: unknown): value is PickleGlobal {
  return typeof value === 'object' && value !== null && typeof (value as PickleGlobal).call === 'function' && typeof (value as PickleGlobal).module === 'string';
}

/** Names a value's Python type for error messages. */
export function describePickleValue(value: unknown): string {
  if (value === null) return 'None';
  if (Array.isArray(value)) return 'a list or tuple';
  if (value instanceof Map) return 'a dict';
  if (value instanceof Uint8Array) return 'bytes';
  if (isPickleGlobal(value)) return `the global ${value.module}.${value.name}`;
  if (typeof value === 'object') return 'an object';
  return `the ${typeof value} ${typeof value === 'bigint' ? value : JSON.stringify(value)}`;
}
