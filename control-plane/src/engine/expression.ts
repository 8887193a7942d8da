/**
 * The `when` language: a small, safe expression language (no eval).
 *
 *   expr     := or
 *   or       := and ( '||' and )*
 *   and      := not ( '&&' not )*
 *   not      := '!' not | cmp
 *   cmp      := primary ( ( '==' | '!=' | '<' | '<=' | '>' | '>=' ) primary )?
 *   primary  := NUMBER | STRING | true | false | null | ref | call | '(' expr ')'
 *   ref      := 'artifact' | 'var.' NAME | 'out.' STEP '.' KEY | 'out.' STAGE '.' STEP '.' KEY
 *   call     := ( contains | startsWith | endsWith ) '(' expr ',' expr ')'
 *
 * Values are strings, numbers, booleans and null. Comparison: when both sides read as
 * numbers (outputs and inputs are often numeric strings) they compare as numbers, else as
 * strings; `==` between null and anything else is false. Truthiness: false, null, '', 0
 * and the string 'false' are false. A reference to a missing output is null.
 */

export type Value = string | number | boolean | null;

export type Ref =
  | { kind: 'artifact' }
  | { kind: 'var'; name: string }
  | { kind: 'out'; stage: string | null; step: string; key: string };

export type Expr =
  | { t: 'lit'; value: Value }
  | { t: 'ref'; ref: Ref; pos: number }
  | { t: 'not'; e: Expr }
  | { t: 'bin'; op: '&&' | '||' | '==' | '!=' | '<' | '<=' | '>' | '>='; l: Expr; r: Expr }
  | { t: 'call'; fn: 'contains' | 'startsWith' | 'endsWith'; args: [Expr, Expr]; pos: number };

export class ExpressionError extends Error {
  /** 1-based column in the expression */
  readonly column: number;
  constructor(message: string, column: number) {
    super(`${message} (at column ${column})`);
    this.name = 'ExpressionError';
    this.column = column;
  }
}

type Tok =
  | { k: 'num'; v: number; p: number }
  | { k: 'str'; v: string; p: number }
  | { k: 'id'; v: string; p: number }
  | { k: 'op'; v: string; p: number }
  | { k: 'end'; p: number };

const OPS = ['&&', '||', '==', '!=', '<=', '>=', '<', '>', '!', '(', ')', ','];
const SEGMENT = /[A-Za-z0-9_][A-Za-z0-9_-]*/y;

function tokenize(src: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') { i++; continue; }
    if (c === "'" || c === '"') {
      let j = i + 1;
      let s = '';
      while (j < src.length && src[j] !== c) {
        if (src[j] === '\\' && j + 1 < src.length) { s += src[j + 1]; j += 2; continue; }
        s += src[j];
        j++;
      }
      if (j >= src.length) throw new ExpressionError('unterminated string', i + 1);
      out.push({ k: 'str', v: s, p: i });
      i = j + 1;
      continue;
    }
    const num = /^-?\d+(\.\d+)?/.exec(src.slice(i));
    if (num && (c !== '-' || /\d/.test(src[i + 1] ?? ''))) {
      out.push({ k: 'num', v: Number(num[0]), p: i });
      i += num[0].length;
      continue;
    }
    const op = OPS.find((o) => src.startsWith(o, i));
    if (op) {
      out.push({ k: 'op', v: op, p: i });
      i += op.length;
      continue;
    }
    if (/[A-Za-z_]/.test(c)) {
      // a dotted path: segments may hold '-' (step ids do), there is no minus operator
      const start = i;
      let path = '';
      for (;;) {
        SEGMENT.lastIndex = i;
        const m = SEGMENT.exec(src);
        if (!m) throw new ExpressionError('expected a name after "."', i + 1);
        path += m[0];
        i += m[0].length;
        if (src[i] === '.') { path += '.'; i++; continue; }
        break;
      }
      out.push({ k: 'id', v: path, p: start });
      continue;
    }
    throw new ExpressionError(`unexpected character ${JSON.stringify(c)}`, i + 1);
  }
  out.push({ k: 'end', p: src.length });
  return out;
}

class Parser {
  private i = 0;
  constructor(private readonly toks: Tok[]) {}
  private peek(): Tok { return this.toks[this.i]!; }
  private next(): Tok { return this.toks[this.i++]!; }
  private isOp(v: string): boolean { const t = this.peek(); return t.k === 'op' && t.v === v; }
  private expectOp(v: string): void {
    const t = this.peek();
    if (t.k !== 'op' || t.v !== v) throw new ExpressionError(`expected "${v}" but found ${describe(t)}`, t.p + 1);
    this.i++;
  }

  parse(): Expr {
    const e = this.or();
    const t = this.peek();
    if (t.k !== 'end') throw new ExpressionError(`unexpected ${describe(t)}`, t.p + 1);
    return e;
  }
  private or(): Expr {
    let l = this.and();
    while (this.isOp('||')) { this.i++; l = { t: 'bin', op: '||', l, r: this.and() }; }
    return l;
  }
  private and(): Expr {
    let l = this.not();
    while (this.isOp('&&')) { this.i++; l = { t: 'bin', op: '&&', l, r: this.not() }; }
    return l;
  }
  private not(): Expr {
    if (this.isOp('!')) { this.i++; return { t: 'not', e: this.not() }; }
    return this.cmp();
  }
  private cmp(): Expr {
    const l = this.primary();
    const t = this.peek();
    if (t.k === 'op' && ['==', '!=', '<', '<=', '>', '>='].includes(t.v)) {
      this.i++;
      return { t: 'bin', op: t.v as '==', l, r: this.primary() };
    }
    return l;
  }
  private primary(): Expr {
    const t = this.next();
    switch (t.k) {
      case 'num': return { t: 'lit', value: t.v };
      case 'str': return { t: 'lit', value: t.v };
      case 'op':
        if (t.v === '(') { const e = this.or(); this.expectOp(')'); return e; }
        throw new ExpressionError(`unexpected ${describe(t)}`, t.p + 1);
      case 'end': throw new ExpressionError('unexpected end of expression', t.p + 1);
      case 'id': {
        if (t.v === 'true') return { t: 'lit', value: true };
        if (t.v === 'false') return { t: 'lit', value: false };
        if (t.v === 'null') return { t: 'lit', value: null };
        if (t.v === 'contains' || t.v === 'startsWith' || t.v === 'endsWith') {
          this.expectOp('(');
          const a = this.or();
          this.expectOp(',');
          const b = this.or();
          this.expectOp(')');
          return { t: 'call', fn: t.v, args: [a, b], pos: t.p };
        }
        return { t: 'ref', ref: parseRef(t.v, t.p), pos: t.p };
      }
    }
  }
}

function parseRef(path: string, p: number): Ref {
  const parts = path.split('.');
  if (parts.length === 1 && parts[0] === 'artifact') return { kind: 'artifact' };
  if (parts[0] === 'var') {
    if (parts.length !== 2) throw new ExpressionError(`"${path}": expected var.NAME`, p + 1);
    return { kind: 'var', name: parts[1]! };
  }
  if (parts[0] === 'out') {
    if (parts.length === 3) return { kind: 'out', stage: null, step: parts[1]!, key: parts[2]! };
    if (parts.length === 4) return { kind: 'out', stage: parts[1]!, step: parts[2]!, key: parts[3]! };
    throw new ExpressionError(`"${path}": expected out.STEP.KEY or out.STAGE.STEP.KEY`, p + 1);
  }
  throw new ExpressionError(`unknown name "${path}": expected artifact, var.NAME or out.STEP.KEY`, p + 1);
}

function describe(t: Tok): string {
  switch (t.k) {
    case 'end': return 'end of expression';
    case 'num': return `number ${t.v}`;
    case 'str': return `string ${JSON.stringify(t.v)}`;
    default: return `"${t.v}"`;
  }
}

/** Parses an expression; throws ExpressionError naming the column. */
export function parseExpression(src: string): Expr {
  return new Parser(tokenize(src)).parse();
}

/** Every reference an expression makes (for checks at apply time). */
export function expressionRefs(e: Expr, into: Array<Ref & { pos: number }> = []): Array<Ref & { pos: number }> {
  switch (e.t) {
    case 'ref': into.push({ ...e.ref, pos: e.pos }); break;
    case 'not': expressionRefs(e.e, into); break;
    case 'bin': expressionRefs(e.l, into); expressionRefs(e.r, into); break;
    case 'call': expressionRefs(e.args[0], into); expressionRefs(e.args[1], into); break;
    case 'lit': break;
  }
  return into;
}

export interface Scope {
  artifact: string | null;
  vars: Record<string, Value>;
  out(stage: string | null, step: string, key: string): string | null;
}

export function truthy(v: Value): boolean {
  return !(v === false || v === null || v === '' || v === 0 || v === 'false');
}

function asNumber(v: Value): number | null {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
  return null;
}

function str(v: Value): string {
  return v === null ? '' : String(v);
}

function compare(op: string, l: Value, r: Value): boolean {
  if (op === '==' || op === '!=') {
    let eq: boolean;
    if (l === null || r === null) eq = l === r;
    else if (typeof l === 'boolean' || typeof r === 'boolean') eq = str(l) === str(r);
    else {
      const a = asNumber(l), b = asNumber(r);
      eq = a !== null && b !== null ? a === b : str(l) === str(r);
    }
    return op === '==' ? eq : !eq;
  }
  if (l === null || r === null) return false;
  const a = asNumber(l), b = asNumber(r);
  const [x, y] = a !== null && b !== null ? [a, b] : [str(l), str(r)];
  switch (op) {
    case '<': return x < y;
    case '<=': return x <= y;
    case '>': return x > y;
    default: return x >= y;
  }
}

export function evaluate(e: Expr, scope: Scope): Value {
  switch (e.t) {
    case 'lit': return e.value;
    case 'ref': {
      const r = e.ref;
      if (r.kind === 'artifact') return scope.artifact;
      if (r.kind === 'var') return scope.vars[r.name] ?? null;
      return scope.out(r.stage, r.step, r.key);
    }
    case 'not': return !truthy(evaluate(e.e, scope));
    case 'bin':
      if (e.op === '&&') return truthy(evaluate(e.l, scope)) && truthy(evaluate(e.r, scope));
      if (e.op === '||') return truthy(evaluate(e.l, scope)) || truthy(evaluate(e.r, scope));
      return compare(e.op, evaluate(e.l, scope), evaluate(e.r, scope));
    case 'call': {
      const a = str(evaluate(e.args[0], scope));
      const b = str(evaluate(e.args[1], scope));
      if (e.fn === 'contains') return a.includes(b);
      if (e.fn === 'startsWith') return a.startsWith(b);
      return a.endsWith(b);
    }
  }
}

/** Parses and evaluates to a boolean (the `when` of a stage or step). */
export function evaluateCondition(src: string, scope: Scope): boolean {
  return truthy(evaluate(parseExpression(src), scope));
}
