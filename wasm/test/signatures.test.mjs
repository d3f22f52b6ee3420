// hivesync.d.ts held against the signatures hivesync.js checks at run time: the SIGNATURES
// table (each public method's parameters), OPEN (openReplica's options) and TYPES (each type's
// TypeScript spelling, its third element). Both sides go through the TypeScript compiler API
// (wasm/package.json pins typescript): the declared methods of `HivesyncReplica` and
// `openReplica`, and the table's spellings declared in a probe module beside the .d.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ts = (await import('typescript').catch(() => {
  throw new Error('typescript is missing from wasm/node_modules: run `npm ci` in wasm/');
})).default;

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const web = process.env.HIVESYNC_WEB ?? path.join(root, 'wasm/web');

// Declared methods the tables do not hold: they take a function or answer at once, and check
// nothing against a table.
const UNCHECKED = new Set(['on', 'close', 'live']);
// String literals the table's type allows and hivesync.d.ts leaves out on purpose, by
// `method(parameter)`: the wasm refuses to list vectors (query::list_json: "vectors are not
// listed"), so no `list` overload takes `'vector'`.
const LEFT_OUT = { 'list(kind)': ['vector'] };

/**
 * SIGNATURES, OPEN and TYPES, as the module defines them: its source evaluated as it is, with an
 * export of them added (it imports nothing, and importing it touches no browser API).
 */
async function tables() {
  const src = fs.readFileSync(path.join(web, 'hivesync.js'), 'utf8');
  const url = `data:text/javascript,${encodeURIComponent(`${src}\nexport { SIGNATURES, OPEN, TYPES };\n`)}`;
  return import(url);
}

const bare = (n) => n.replace(/\?$/, '');
const tableOptional = (n, t) => n.endsWith('?') || (typeof t === 'string' && t.endsWith('?'));

/**
 * Every mismatch between the declarations in `dts` and the tables, as lines; none: they agree.
 * `{ SIGNATURES, OPEN, TYPES }` as hivesync.js defines them.
 */
function checkSignatures(dts, { SIGNATURES, OPEN, TYPES }) {
  const problems = [];
  const spell = (spec) => {
    const info = TYPES[bare(spec)];
    if (!info) throw new Error(`the table names a type \`${spec}\` that TYPES lacks`);
    return info[2];
  };
  // The table's side: one declared constant per parameter, of the type the table spells.
  const params = { ...SIGNATURES, openReplica: [['opts?', OPEN]] };
  const probeTypes = [];
  const spelled = (t) => (typeof t === 'string'
    ? spell(t)
    : `{ ${Object.entries(t).map(([k, f]) => `${k}${f.endsWith('?') ? '?' : ''}: ${spell(f)}`).join('; ')} }`);
  for (const [m, ps] of Object.entries(params)) ps.forEach(([n, t], i) => probeTypes.push({ key: `${m}#${i}`, text: spelled(t) }));

  const dtsText = fs.readFileSync(dts, 'utf8');
  const names = [...dtsText.matchAll(/^export (?:declare )?(?:type|interface|class) (\w+)/gm)].map((x) => x[1]);
  const probe = path.join(path.dirname(dts), '__hivesync_signatures_probe.ts');
  const text = `import type { ${names.join(', ')} } from './${path.basename(dts, '.d.ts')}.js';\n` +
    probeTypes.map((p, i) => `declare const t${i}: ${p.text};\n`).join('');
  const options = {
    strict: true, noEmit: true, types: [], lib: ['lib.es2022.d.ts'], noUnusedLocals: false,
    target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Bundler,
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists } = host;
  host.getSourceFile = (name, lang, ...rest) =>
    name === probe ? ts.createSourceFile(name, text, lang) : getSourceFile.call(host, name, lang, ...rest);
  host.fileExists = (name) => name === probe || fileExists.call(host, name);
  const program = ts.createProgram([probe], options, host);
  const diagnostics = ts.getPreEmitDiagnostics(program)
    .map((d) => `${path.basename(d.file?.fileName ?? '?')}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`);
  if (diagnostics.length) return diagnostics.map((d) => `the table's spellings do not compile against hivesync.d.ts: ${d}`);
  const checker = program.getTypeChecker();

  const probeFile = program.getSourceFile(probe);
  const tableType = new Map();
  probeFile.statements.filter(ts.isVariableStatement).forEach((s, i) => {
    const d = s.declarationList.declarations[0];
    tableType.set(probeTypes[i].key, checker.getTypeAtLocation(d.name));
  });

  // hivesync.d.ts's side: each declared overload's parameters.
  const file = program.getSourceFile(dts);
  const cls = file.statements.find((s) => ts.isClassDeclaration(s) && s.name?.text === 'HivesyncReplica');
  const fn = file.statements.filter((s) => ts.isFunctionDeclaration(s) && s.name?.text === 'openReplica');
  if (!cls) return ['hivesync.d.ts declares no class HivesyncReplica'];
  if (!fn.length) return ['hivesync.d.ts declares no function openReplica'];
  const declared = new Map(); // method -> its overloads, each a list of { name, optional, type }
  const overload = (decl) => decl.parameters.map((p) => ({
    name: p.name.getText(file),
    optional: !!p.questionToken || !!p.initializer || !!p.dotDotDotToken,
    type: checker.getTypeAtLocation(p),
  }));
  for (const member of cls.members) {
    if (!ts.isMethodDeclaration(member)) continue;
    const name = member.name.getText(file);
    if (!declared.has(name)) declared.set(name, []);
    declared.get(name).push(overload(member));
  }
  declared.set('openReplica', fn.map(overload));

  for (const m of Object.keys(SIGNATURES)) {
    if (!declared.has(m)) problems.push(`${m}: the SIGNATURES table checks it, hivesync.d.ts does not declare it on HivesyncReplica`);
  }
  for (const m of declared.keys()) {
    if (m !== 'openReplica' && !UNCHECKED.has(m) && !Object.hasOwn(SIGNATURES, m)) {
      problems.push(`${m}: hivesync.d.ts declares it on HivesyncReplica, the SIGNATURES table lacks it (or list it in UNCHECKED)`);
    }
  }

  // What an optional parameter or field adds (`undefined`, or `null`) taken away; `unknown` stays.
  const nonNull = (t) => {
    if (!t.isUnion()) return t;
    const rest = t.types.filter((p) => !(p.flags & (ts.TypeFlags.Undefined | ts.TypeFlags.Null)));
    return rest.length === 1 ? rest[0] : checker.getNonNullableType(t);
  };
  const isLib = (sym) => !!sym?.declarations?.some((d) => program.isSourceFileDefaultLibrary(d.getSourceFile()));
  const literals = (t) => {
    const parts = t.isUnion() ? t.types : [t];
    return parts.every((p) => p.isStringLiteral()) ? new Set(parts.map((p) => p.value)) : null;
  };
  const isObject = (t) => !!(t.flags & ts.TypeFlags.Object) && !checker.isArrayType(t) && !checker.isTupleType(t) &&
    !isLib(t.aliasSymbol ?? t.symbol) && checker.getPropertiesOfType(t).length > 0 && !t.getCallSignatures().length;
  const canon = (type) => {
    const t = nonNull(type);
    if (t.flags & ts.TypeFlags.Boolean || (t.isUnion() && t.types.every((p) => p.flags & ts.TypeFlags.BooleanLiteral))) return 'boolean';
    const lits = literals(t);
    if (lits) return [...lits].sort().map((v) => `'${v}'`).join(' | ');
    if (t.isUnion()) return t.types.map(canon).sort().join(' | ');
    if (checker.isArrayType(t)) {
      const of = canon(checker.getTypeArguments(t)[0]);
      return /[ |]/.test(of) && !of.startsWith('{') ? `(${of})[]` : `${of}[]`;
    }
    if (isObject(t)) {
      return `{ ${checker.getPropertiesOfType(t).map((p) => p.name).sort().map((k) => {
        const p = checker.getPropertyOfType(t, k);
        return `${k}${p.flags & ts.SymbolFlags.Optional ? '?' : ''}: ${canon(checker.getTypeOfSymbol(p))}`;
      }).join('; ')} }`;
    }
    // A lib type (Uint8Array, Record<string, unknown>) by its name; anything else as TypeScript writes it.
    if (!t.aliasSymbol && t.symbol && isLib(t.symbol)) return t.symbol.name;
    return checker.typeToString(t);
  };

  // What the overloads of one method cover together: the literals they take and whether
  // each optional parameter or field may be left out in at least one of them.
  const cover = new Map(); // path -> { literals: Set, omittable: boolean, declared: boolean }
  const covered = (at) => { if (!cover.has(at)) cover.set(at, { literals: new Set(), omittable: false, declared: false }); return cover.get(at); };

  // `d` (declared) against `t` (the table's): problems go to `out`.
  const compare = (at, dType, tType, out) => {
    const d = nonNull(dType);
    const t = nonNull(tType);
    const tl = literals(t);
    if (tl) {
      const dl = literals(d);
      if (!dl) { out.push(`${at}: hivesync.d.ts has \`${canon(d)}\`, the table \`${canon(t)}\``); return; }
      for (const v of dl) {
        if (tl.has(v)) covered(at).literals.add(v);
        else out.push(`${at}: hivesync.d.ts takes '${v}', which the table's \`${canon(t)}\` refuses`);
      }
      return;
    }
    if (isObject(t)) {
      if (!isObject(d)) { out.push(`${at}: hivesync.d.ts has \`${canon(d)}\`, the table an object \`${canon(t)}\``); return; }
      const tf = checker.getPropertiesOfType(t);
      const df = checker.getPropertiesOfType(d);
      const dn = new Set(df.map((p) => p.name));
      const tn = new Set(tf.map((p) => p.name));
      for (const p of tf) if (!dn.has(p.name)) out.push(`${at}.${p.name}: the table takes it, hivesync.d.ts does not declare it`);
      for (const p of df) if (!tn.has(p.name)) out.push(`${at}.${p.name}: hivesync.d.ts declares it, the table refuses it`);
      for (const tp of tf) {
        const dp = checker.getPropertyOfType(d, tp.name);
        if (!dp) continue;
        const to = !!(tp.flags & ts.SymbolFlags.Optional);
        const dO = !!(dp.flags & ts.SymbolFlags.Optional);
        if (dO && !to) out.push(`${at}.${tp.name}: optional in hivesync.d.ts, required by the table`);
        if (dO) covered(`${at}.${tp.name}`).omittable = true;
        else covered(`${at}.${tp.name}`);
        compare(`${at}.${tp.name}`, checker.getTypeOfSymbol(dp), checker.getTypeOfSymbol(tp), out);
      }
      return;
    }
    if (canon(d) !== canon(t)) out.push(`${at}: hivesync.d.ts has \`${canon(d)}\`, the table \`${canon(t)}\``);
  };

  for (const [m, ps] of Object.entries(params)) {
    const overloads = declared.get(m);
    if (!overloads) continue;
    cover.clear();
    overloads.forEach((o, k) => {
      const which = overloads.length > 1 ? `${m} (overload ${k + 1} of ${overloads.length})` : m;
      if (o.length > ps.length) {
        problems.push(`${which}: hivesync.d.ts declares ${o.length} parameters (${o.map((p) => p.name).join(', ')}), the table ${ps.length}`);
      }
      ps.forEach(([n, t], i) => {
        const name = bare(n);
        const at = `${m}(${name})`;
        const optional = tableOptional(n, t);
        const p = o[i];
        if (!p) {
          if (optional) covered(at).omittable = true;
          else problems.push(`${which}: hivesync.d.ts leaves out \`${name}\`, which the table requires`);
          return;
        }
        if (p.name !== name) problems.push(`${which}: parameter ${i + 1} is \`${p.name}\` in hivesync.d.ts, \`${name}\` in the table`);
        if (p.optional && !optional) problems.push(`${which}: \`${p.name}\` is optional in hivesync.d.ts, required by the table`);
        covered(at).declared = true;
        if (p.optional) covered(at).omittable = true;
        const out = [];
        compare(at, p.type, tableType.get(`${m}#${i}`), out);
        problems.push(...out.map((x) => (overloads.length > 1 ? `${x} (overload ${k + 1} of ${overloads.length})` : x)));
      });
    });
    // Together, the overloads take every literal the table takes, and leave out what it lets be left out.
    const optionalPaths = new Set();
    const literalPaths = new Map();
    const walk = (at, n, t, type) => {
      if (tableOptional(n, t)) optionalPaths.add(at);
      const lits = literals(nonNull(type));
      if (lits) literalPaths.set(at, lits);
      if (typeof t === 'object') {
        for (const [k, f] of Object.entries(t)) {
          const prop = checker.getPropertyOfType(nonNull(type), k);
          if (prop) walk(`${at}.${k}`, k, f, checker.getTypeOfSymbol(prop));
        }
      }
    };
    ps.forEach(([n, t], i) => {
      const at = `${m}(${bare(n)})`;
      if (!cover.get(at)?.declared) problems.push(`${at}: the table takes it, no declaration in hivesync.d.ts does`);
      walk(at, n, t, tableType.get(`${m}#${i}`));
    });
    for (const at of optionalPaths) {
      if (cover.has(at) && !cover.get(at).omittable) problems.push(`${at}: the table lets it be left out, no declaration in hivesync.d.ts does`);
    }
    for (const [at, lits] of literalPaths) {
      if (!cover.has(at)) continue;
      const missing = [...lits].filter((v) => !cover.get(at).literals.has(v) && !(LEFT_OUT[at] ?? []).includes(v));
      if (missing.length) problems.push(`${at}: the table takes ${missing.map((v) => `'${v}'`).join(', ')}, which no declaration in hivesync.d.ts takes`);
    }
  }
  return problems;
}

test('hivesync.d.ts declares every checked method with the parameters, optionality and types the SIGNATURES table checks', async () => {
  const problems = checkSignatures(path.join(web, 'hivesync.d.ts'), await tables());
  if (problems.length) assert.fail(`hivesync.d.ts and hivesync.js's SIGNATURES/OPEN/TYPES disagree:\n${problems.join('\n')}`);
});

test('the signature check finds what a drifted hivesync.d.ts gets wrong', async () => {
  // The same check, on copies of hivesync.d.ts changed the ways it could drift from the table.
  const dts = fs.readFileSync(path.join(web, 'hivesync.d.ts'), 'utf8');
  const t = await tables();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-sig-'));
  try {
    const drifted = (edit) => {
      const changed = edit(dts);
      assert.notEqual(changed, dts, 'the edit changed nothing: the test is stale');
      const f = path.join(dir, 'hivesync.d.ts');
      fs.writeFileSync(f, changed);
      return checkSignatures(f, t);
    };
    const expect = (edit, re) => {
      const problems = drifted(edit);
      assert.ok(problems.some((p) => re.test(p)), `expected a problem matching ${re}, got:\n${problems.join('\n')}`);
    };
    expect((s) => s.replace('limit?: number }', 'limit?: string }'), /^search\(query\)\.limit: hivesync.d.ts has `string`, the table `number`$/);
    expect((s) => s.replace('embedding: number[]; k: number;', 'embedding: number[]; k?: number;'), /^knn\(query\)\.k: optional in hivesync.d.ts, required by the table$/);
    expect((s) => s.replace("protocol?: 'bin' | 'json';", "protocol?: 'bin' | 'json' | 'cbor';"), /^openReplica\(opts\)\.protocol: hivesync.d.ts takes 'cbor'/);
    expect((s) => s.replace("protocol?: 'bin' | 'json';", "protocol?: 'bin';"), /^openReplica\(opts\)\.protocol: the table takes 'json', which no declaration/);
    expect((s) => s.replace('shareTabs?: boolean;', 'shareTabs?: boolean;\n  workers?: number;'), /^openReplica\(opts\)\.workers: hivesync.d.ts declares it, the table refuses it$/);
    expect((s) => s.replace('hybrid(text: SearchQuery, knn: KnnQuery, limit?: number)', 'hybrid(text: SearchQuery, knn: KnnQuery)'), /^hybrid\(limit\): the table takes it, no declaration in hivesync.d.ts does$/);
    expect((s) => s.replace('digest(namespaces?: string[])', 'digest(namespaces: string[])'), /^digest\(namespaces\): the table lets it be left out/);
    expect((s) => s.replace('interface ListOptions { kind?: string;', 'interface ListOptions { kind: string;'), /^list\(opts\)\.kind: the table lets it be left out/);
    expect((s) => s.replace('params?: unknown[]', 'params?: string[]'), /^sql\(params\): hivesync.d.ts has `string\[\]`, the table `unknown\[\]`$/);
    expect((s) => s.replace("get(kind: 'vector', ns: string, id: string, model: string)", "get(kind: 'vector', ns: string, id: string, model: string, extra?: string)"), /^get \(overload 5 of 5\): hivesync.d.ts declares 5 parameters/);
    expect((s) => s.replace('sql(query: string, params?: unknown[])', 'sql(q: string, params?: unknown[])'), /^sql: parameter 1 is `q` in hivesync.d.ts, `query` in the table$/);
    expect((s) => s.replace('  pending(): Promise<PendingWrite[]>;\n', ''), /^pending: the SIGNATURES table checks it, hivesync.d.ts does not declare it/);
    expect((s) => s.replace('  close(): void;', '  close(): void;\n  flush(): Promise<void>;'), /^flush: hivesync.d.ts declares it on HivesyncReplica, the SIGNATURES table lacks it/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
