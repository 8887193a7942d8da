import { describe, expect, test } from 'vitest';
import { evaluateCondition, parseExpression, type Scope } from './expression.js';

const scope: Scope = {
  artifact: '1.4.2',
  vars: { replicas: 2, region: 'eu-west', flag: true },
  out: (stage, step, key) => ({ 'null/smoke/STATUS': 'ok', 'null/build/COUNT': '10', 'dev/build/COUNT': '3' } as Record<string, string>)[`${stage}/${step}/${key}`] ?? null,
};

describe('when expressions', () => {
  test.each([
    ['var.replicas > 0', true],
    ['var.replicas >= 3', false],
    ["artifact == '1.4.2'", true],
    ["artifact != \"1.4.2\"", false],
    ['out.build.COUNT > 9', true], // numeric strings compare as numbers
    ['out.dev.build.COUNT == 3', true],
    ['out.nope.X == null', true],
    ["out.smoke.STATUS == 'ok' && (var.flag || false)", true],
    ['!var.flag', false],
    ["startsWith(var.region, 'eu') && contains(artifact, '.4.')", true],
    ["endsWith(var.region, 'east')", false],
    ['true && !false', true],
    ['var.replicas == 2.0', true],
    ['var.missing', false],
  ])('%s → %s', (src, expected) => {
    expect(evaluateCondition(src, scope)).toBe(expected);
  });

  test.each([
    ['var.replicas >', /unexpected end of expression \(at column 15\)/],
    ['var.replicas = 2', /unexpected character "=" \(at column 14\)/],
    ['foo == 1', /unknown name "foo"/],
    ["'open", /unterminated string \(at column 1\)/],
    ['(1 == 1', /expected "\)"/],
    ['out.a', /expected out.STEP.KEY/],
  ])('%s is refused with its position', (src, message) => {
    expect(() => parseExpression(src)).toThrow(message);
  });
});
