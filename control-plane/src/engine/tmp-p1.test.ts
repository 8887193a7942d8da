import { parsePipeline } from '/work/main/control-plane/src/engine/pipeline/index.js';
import { test } from 'vitest';
const ex = `pipeline: loans-api
variables:
  replicas: { type: number, default: 2 }
environments:
  prod:
    type: production
    concurrency: 1
    deployLatestOnly: true
stages:
  - id: dev
    type: deploy
    service: loans-api
    environment: dev
    infrastructure: local
    delegateSelectors: [linux]
    when: 'var.replicas > 0'
    schedule: { at: "2026-12-01T02:00:00Z" }
    rollbackScope: pipeline
    steps:
      - id: deploy
        type: shell
        script: ./deploy.sh "$FERRY_ARTIFACT"
        timeout: 5m
        failureStrategies:
          - on: [Timeout]
            action: { type: retry, count: 1 }
      - parallel:
          - { id: smoke, type: shell, script: "curl -fsS localhost:9000/health" }
          - { id: warm, type: shell, script: "./warm.sh", continueOnError: true }
    rollbackSteps:
      - { id: undo, type: shell, script: './deploy.sh "$FERRY_ROLLBACK_ARTIFACT"' }
      - { id: page, type: http, url: "http://pager.internal/notify", method: POST, alwaysRun: true }
    failureStrategies:
      - on: [Timeout, DelegateLost]
        action: { type: retry, count: 2, interval: 10s }
      - on: [AllErrors]
        action: { type: manualIntervention, timeout: 1h, onTimeout: stageRollback }
  - id: approve-prod
    type: approval
    approvers: { minimumCount: 1, disallowExecutor: true }
    timeout: 1d
  - id: prod
    type: deploy
    service: loans-api
    environment: prod
    infrastructure: cluster-a
    strategy:
      canary:
        phases:
          - weight: 10
            verify:
              source: { type: prometheus, url: "http://prometheus.internal:9090" }
              metrics:
                - name: error-rate
                  query: 'sum(rate(x[1m]))'
                  direction: increase
                  critical: true
              sensitivity: high
              duration: 5m
              interval: 15s
              failOnNoData: true
          - weight: 50
            pause: {}
          - weight: 100
    steps: [ { id: deploy, type: shell, script: './deploy.sh "$FERRY_ARTIFACT" "$FERRY_CANARY_WEIGHT"' } ]
`;
test('x', () => {
  const d = parsePipeline(ex);
  console.log(JSON.stringify(d).length, d.stages.map(s=>s.id));
  const bads = [
    ex.replace('timeout: 5m', 'timeout: 5 minutes'),
    ex.replace('type: shell\n        script', 'type: shel\n        script'),
    ex.replace("script: ./deploy.sh \"$FERRY_ARTIFACT\"\n", "scrip: x\n"),
    ex.replace("'var.replicas > 0'", "'var.replica > 0 &&'"),
    ex.replace("id: approve-prod", "id: dev"),
    ex.replace("infrastructure: cluster-a\n", ""),
    ex.replace("count: 2, interval: 10s", "count: 2, interval: 10x"),
    ex.replace("onTimeout: stageRollback", "onTimeout: explode"),
    ex.replace("id: smoke", "id: Smoke"),
    "pipeline: x\nstages: []\n",
    "pipeline: x\nstages:\n  - id: a\n    type: custom\n    steps:\n      - {id: a, type: shell, script: x}\n    bad: [\n",
  ];
  for (const b of bads) { try { parsePipeline(b); console.log('NO ERROR'); } catch (e: any) { console.log(e.code, e.message); } }
});
