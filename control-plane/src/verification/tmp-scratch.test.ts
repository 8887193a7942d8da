import { test } from 'vitest';
import { erfc, normalQuantile } from './normal.js';
test('x', () => { for (const x of [0,0.1,0.5,1,1.5,1.99,2,2.5,3,4,6,10,20]) console.log('R', x, erfc(x)); console.log('R', normalQuantile(0.975), normalQuantile(0.01), normalQuantile(1e-10)); });
