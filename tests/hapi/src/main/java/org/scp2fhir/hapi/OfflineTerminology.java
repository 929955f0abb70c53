package org.scp2fhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.ConceptValidationOptions;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.context.support.ValidationSupportContext;
import ca.uhn.hapi.converters.canonical.VersionCanonicalizer;
import org.hl7.fhir.common.hapi.validation.support.BaseValidationSupport;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r5.model.CodeSystem;
import org.hl7.fhir.r5.model.Enumerations.CodeSystemContentMode;
import org.hl7.fhir.r5.model.ValueSet;

/**
 * What no terminology server means for a code: when its code system is not at hand (SNOMED
 * CT and LOINC are "not-present" CodeSystem stubs in FHIR's core package; DICOM's and
 * others are not there at all) and the value set takes that system by a filter or as a
 * whole ({@code is-a 442083009}), nobody here can say whether the code belongs to it. The
 * answer is then a warning naming the code and the value set, never an error, and never
 * silence. Value sets that list their codes are still checked by the in-memory terminology
 * service, and codes of the code systems we have (the guide's, FHIR's) are checked as usual.
 */
final class OfflineTerminology extends BaseValidationSupport {
    private final VersionCanonicalizer canonicalizer;

    OfflineTerminology(FhirContext context) {
        super(context);
        canonicalizer = new VersionCanonicalizer(context);
    }

    @Override
    public String getName() {
        return "scp2fhir offline terminology";
    }

    @Override
    public boolean isValueSetSupported(ValidationSupportContext support, String url) {
        IBaseResource valueSet = support.getRootValidationSupport().fetchValueSet(url);
        return valueSet != null && uncheckableSystem(support, canonicalizer.valueSetToValidatorCanonical(valueSet)) != null;
    }

    @Override
    public CodeValidationResult validateCodeInValueSet(
            ValidationSupportContext support,
            ConceptValidationOptions options,
            String system,
            String code,
            String display,
            IBaseResource valueSetResource) {
        ValueSet valueSet = canonicalizer.valueSetToValidatorCanonical(valueSetResource);
        String uncheckable = uncheckableSystem(support, valueSet);
        if (uncheckable == null || (system != null && !system.equals(uncheckable))) {
            return null;
        }
        String message = "Code " + system + "#" + code + " not checked against ValueSet "
                + valueSet.getUrl() + ": " + uncheckable + " is not available offline (no terminology server)";
        return new CodeValidationResult()
                .setCode(code)
                .setDisplay(display)
                .setSeverity(IValidationSupport.IssueSeverity.WARNING)
                .setMessage(message);
    }

    /** A system the value set takes by filter or whole that we have no concepts of; or null. */
    private String uncheckableSystem(ValidationSupportContext support, ValueSet valueSet) {
        for (ValueSet.ConceptSetComponent include : valueSet.getCompose().getInclude()) {
            String system = include.getSystem();
            if (system == null || !include.getConcept().isEmpty() || !include.getValueSet().isEmpty()) {
                continue;
            }
            if (!haveConcepts(support, system)) {
                return system;
            }
        }
        return null;
    }

    private boolean haveConcepts(ValidationSupportContext support, String system) {
        IBaseResource resource = support.getRootValidationSupport().fetchCodeSystem(system);
        if (resource == null) {
            return false;
        }
        CodeSystem codeSystem = canonicalizer.codeSystemToValidatorCanonical(resource);
        CodeSystemContentMode content = codeSystem.getContent();
        return content == CodeSystemContentMode.COMPLETE || content == CodeSystemContentMode.FRAGMENT
                || content == CodeSystemContentMode.SUPPLEMENT;
    }
}
