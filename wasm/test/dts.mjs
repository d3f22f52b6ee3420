// Holds no tests: the tests import it to hold payloads the code really emits against
// hivesync.d.ts, through the TypeScript compiler API (wasm/package.json pins typescript).
import path from 'node:path';

const ts = (await import('typescript').catch(() => {
  throw new Error('typescript is missing from wasm/node_modules: run `npm ci` in wasm/');
})).default;

/**
 * Every problem found holding `cases` against the declarations in `dts` (a hivesync.d.ts):
 * a key a payload has that its type does not declare (checked into nested objects), or a key
 * the type declares as required that the payload lacks. `cases` is a list of
 * `{ what, type, value }`, where `type` is a TypeScript type over `H` (the module), e.g.
 * `H.Status` or `Extract<H.ReplicaEvent, { type: 'welcome' }>`. An empty list means everything matches.
 */
export function checkAgainstDts(dts, cases) {
  // A probe module beside the .d.ts, kept in memory, declares one constant of each type.
  const probe = path.join(path.dirname(dts), '__hivesync_probe.ts');
  const text = `import type * as H from './${path.basename(dts, '.d.ts')}.js';\n` +
    cases.map((c, i) => `declare const v${i}: ${c.type};\n`).join('');
  const options = {
    strict: true, noEmit: true, types: [], lib: ['lib.es2022.d.ts'],
    target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Bundler,
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists } = host;
  host.getSourceFile = (name, lang, ...rest) =>
    name === probe ? ts.createSourceFile(name, text, lang) : getSourceFile.call(host, name, lang, ...rest);
  host.fileExists = (name) => name === probe || fileExists.call(host, name);
  const program = ts.createProgram([probe], options, host);
  const problems = ts.getPreEmitDiagnostics(program)
    .map((d) => `${path.basename(d.file?.fileName ?? '?')}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`);
  if (problems.length) return problems;

  const checker = program.getTypeChecker();
  const decls = program.getSourceFile(probe).statements
    .filter(ts.isVariableStatement).map((s) => s.declarationList.declarations[0]);
  const walk = (where, value, type, at) => {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return;
    const t = checker.getNonNullableType(type);
    const declared = checker.getPropertiesOfType(t);
    for (const [key, v] of Object.entries(value)) {
      const prop = checker.getPropertyOfType(t, key);
      if (!prop) {
        problems.push(`${where} has '${key}', which hivesync.d.ts does not declare (it declares: ${declared.map((p) => p.name).join(', ')})`);
        continue;
      }
      walk(`${where}.${key}`, v, checker.getTypeOfSymbolAtLocation(prop, at), at);
    }
    for (const p of declared) {
      if (!(p.flags & ts.SymbolFlags.Optional) && !(p.name in value)) {
        problems.push(`${where} lacks '${p.name}', which hivesync.d.ts declares as required`);
      }
    }
  };
  cases.forEach((c, i) => walk(c.what, c.value, checker.getTypeAtLocation(decls[i].name), decls[i]));
  return [...new Set(problems)];
}
