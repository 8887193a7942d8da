import { describe, expect, test } from 'vitest';
import { FerryError } from '@ferry/shared';
import { getPipelineJsonSchema, parsePipeline, parsePipelineValue } from './index.js';

const base = `pipeline: loans-api
variables:
  replicas: { type: number, default: 2 }
stages:
  - id: dev
    type: deploy
    service: loans-api
    environment: dev
    infrastructure: local
    steps:
      - id: deploy
        type: shell
        script: ./deploy.sh
        timeout: 5m
`;

function problems(src: string): Array<{ line: number | null; path: string; message: string }> {
  try {
    parsePipeline(src);
  } catch (e) {
    expect(e).toBeInstanceOf(FerryError);
    expect((e as FerryError).code).toBe('INVALID_PIPELINE');
    return ((e as FerryError).details as { errors: Array<{ line: number | null; path: string; message: string }> }).errors;
  }
  throw new Error('expected an invalid pipeline');
}

describe('pipeline files', () => {
  test('a valid file is normalised', () => {
    const d = parsePipeline(base);
    expect(d.stages[0]).toMatchObject({
      id: 'dev', type: 'deploy', strategy: { type: 'rolling' },
      deploy: { service: 'loans-api', environment: 'dev', infrastructure: 'local', environmentType: 'preproduction', rollbackScope: 'pipeline' },
      steps: [{ parallel: false, steps: [{ id: 'deploy', type: 'shell', timeoutMs: 300_000, shell: { script: './deploy.sh', shell: null } }] }],
    });
    expect(d.environments.dev).toEqual({ type: 'preproduction', concurrency: 1, deployLatestOnly: false });
    expect(d.variables.replicas).toMatchObject({ type: 'number', default: 2 });
  });

  test('JSON bodies too', () => {
    const d = parsePipelineValue({ pipeline: 'x', stages: [{ id: 'a', type: 'approval' }] }, { expectedName: 'x' });
    expect(d.stages[0]!.approvers).toEqual({ minimumCount: 1, disallowExecutor: false, users: null });
    expect(() => parsePipelineValue({ pipeline: 'y', stages: [{ id: 'a', type: 'approval' }] }, { expectedName: 'x' })).toThrow(/applied as "x"/);
  });

  test.each([
    ['a bad duration', base.replace('timeout: 5m', 'timeout: 5 minutes'), 14, 'stages[0].steps[0].timeout', /expected a duration such as .* \(got "5 minutes"\)/],
    ['an unknown step type', base.replace('type: shell', 'type: shel'), 12, 'stages[0].steps[0].type', /expected one of "shell", "http"/],
    ['an unknown field', base.replace('timeout: 5m', 'timout: 5m'), 14, 'stages[0].steps[0].timout', /unknown field "timout"/],
    ['a missing field for the type', base.replace('        script: ./deploy.sh\n', ''), 11, 'stages[0].steps[0].script', /missing required field "script" \(needed by type "shell"\)/],
    ['a deploy stage without its mapping', base.replace('    infrastructure: local\n', ''), 5, 'stages[0].infrastructure', /missing required field "infrastructure"/],
    ['a bad name', base.replace('id: deploy', 'id: Deploy'), 11, 'stages[0].steps[0].id', /expected a name matching/],
    ['a duplicate stage id', `${base}  - id: dev\n    type: approval\n`, 15, 'stages[1].id', /duplicate stage id "dev"/],
    ['a bad when', base.replace('    steps:', "    when: 'var.replicas >'\n    steps:"), 10, 'stages[0].when', /invalid expression: unexpected end of expression \(at column 15\)/],
    ['an unknown variable in when', base.replace('    steps:', "    when: 'var.nope == 1'\n    steps:"), 10, 'stages[0].when', /unknown variable "var.nope"/],
    ['a field of another step type', base.replace('timeout: 5m', 'url: http://x'), 14, 'stages[0].steps[0].url', /"url" does not apply to shell steps/],
    ['a bad failure strategy action', base.replace('        timeout: 5m', '        failureStrategies: [{ on: [Timeout], action: { type: explode } }]'), 14, 'stages[0].steps[0].failureStrategies[0].action.type', /expected one of "retry", "ignore", "abort", "stageRollback", "pipelineRollback", "manualIntervention"/],
    ['a bad error kind', base.replace('        timeout: 5m', '        failureStrategies: [{ on: [Oops], action: { type: abort } }]'), 14, 'stages[0].steps[0].failureStrategies[0].on[0]', /expected one of "StepFailed"/],
    ['count on a non-retry action', base.replace('        timeout: 5m', '        failureStrategies: [{ on: [Timeout], action: { type: abort, count: 2 } }]'), 14, 'stages[0].steps[0].failureStrategies[0].action.count', /does not apply to action abort/],
    ['not YAML', 'pipeline: x\nstages: [\n', 3, '', /not valid YAML/],
  ])('%s: names the line and the field', (_name, src, line, path, message) => {
    const [first] = problems(src);
    expect(first).toMatchObject({ line, path });
    expect(first!.message).toMatch(message);
  });

  test('the published schema is a JSON schema document', () => {
    const s = getPipelineJsonSchema();
    expect(s.$schema).toBe('http://json-schema.org/draft-07/schema#');
    expect(s).toHaveProperty('properties.stages');
  });
});
