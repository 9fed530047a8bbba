// Resolves the npm packages of the testdata generators from a folder outside the
// repository: $TESTDATA_NODE_DIR (a folder holding node_modules/, made from
// testdata/package.json), else the usual resolution from testdata/.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.env.TESTDATA_NODE_DIR
  ? path.join(path.resolve(process.env.TESTDATA_NODE_DIR), 'package.json')
  : path.join(here, 'package.json');

export const require = createRequire(base);
export const testdataDir = here;
