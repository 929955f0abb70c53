package org.scp2fhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationOptions;
import ca.uhn.fhir.validation.ValidationResult;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;

/**
 * The HL7 validator engine (org.hl7.fhir.validation, through HAPI's FhirInstanceValidator),
 * offline, as one long-lived service:
 *
 * <ul>
 *   <li>core definitions of R4 and R5 from HAPI's validation-resources artifacts
 *       (DefaultProfileValidationSupport);
 *   <li>each folder of the profiles directory (../shared/profiles: one implementation guide
 *       each, FHIR R4) is one guide: its StructureDefinitions, CodeSystems and ValueSets,
 *       with snapshots generated from the differentials;
 *   <li>no terminology server: codes of the CodeSystems at hand (the guide's, FHIR's own,
 *       UCUM, mime types, languages...) are checked; a code of any other system is reported
 *       as a warning ("unknown code system"), never dropped ({@link OfflineTerminology});
 *   <li>likewise a profile a guide refers to from a package that is not at hand is a
 *       warning ({@link #notAtHand}).
 * </ul>
 *
 * <pre>
 *   POST /validate?fhirVersion=R4|R5[&amp;guide=FOLDER][&amp;profile=URL]   body: a resource (JSON)
 *        -> 200, the OperationOutcome (every issue the validator found)
 *   GET  /guides -> {"FOLDER": number of conformance resources loaded, ...}
 * </pre>
 */
final class ValidatorService {
    private final Map<String, FhirValidator> validators = new TreeMap<>();
    private final Map<String, IValidationSupport> chains = new TreeMap<>();
    private final Map<String, Integer> guideSizes = new TreeMap<>();
    private final Map<String, FhirContext> contexts = Map.of("R4", FhirContext.forR4Cached(), "R5", FhirContext.forR5Cached());

    ValidatorService(Path profiles) throws IOException {
        for (var entry : contexts.entrySet()) {
            put(entry.getKey(), entry.getValue(), null);
        }
        if (!Files.isDirectory(profiles)) {
            throw new IOException("profiles directory " + profiles + " does not exist");
        }
        try (Stream<Path> folders = Files.list(profiles)) {
            for (Path folder : folders.filter(Files::isDirectory).sorted().toList()) {
                FhirContext r4 = contexts.get("R4");
                PrePopulatedValidationSupport guide = new PrePopulatedValidationSupport(r4);
                int loaded = load(r4, folder, guide);
                String name = folder.getFileName().toString();
                guideSizes.put(name, loaded);
                put("R4/" + name, r4, guide);
            }
        }
    }

    private void put(String key, FhirContext context, IValidationSupport guide) {
        ValidationSupportChain chain = chain(context, guide);
        chains.put(key, chain);
        validators.put(key, validator(context, chain, guide != null));
    }

    void mount(ServletContextHandler context) {
        context.addServlet(new ServletHolder("validate", new Validate()), "/validate");
        context.addServlet(new ServletHolder("guides", new Guides()), "/guides");
    }

    private static ValidationSupportChain chain(FhirContext context, IValidationSupport guide) {
        List<IValidationSupport> supports = new ArrayList<>();
        if (guide != null) {
            supports.add(guide);
        }
        supports.add(new DefaultProfileValidationSupport(context));
        supports.add(new CommonCodeSystemsTerminologyService(context));
        // Before the in-memory terminology: a value set drawing on a code system we do not
        // have (SNOMED CT, LOINC...) by filter cannot be expanded here; its codes get a warning.
        supports.add(new OfflineTerminology(context));
        supports.add(new InMemoryTerminologyServerValidationSupport(context));
        supports.add(new SnapshotGeneratingValidationSupport(context));
        // A code of a system we have no CodeSystem for at all: a warning.
        UnknownCodeSystemWarningValidationSupport unknown = new UnknownCodeSystemWarningValidationSupport(context);
        unknown.setNonExistentCodeSystemSeverity(IValidationSupport.IssueSeverity.WARNING);
        supports.add(unknown);
        return new ValidationSupportChain(supports);
    }

    private static FhirValidator validator(FhirContext context, ValidationSupportChain chain, boolean guide) {
        FhirInstanceValidator engine = new FhirInstanceValidator(chain);
        // As the HL7 validator CLI: an extension must be defined somewhere we know.
        engine.setAnyExtensionsAllowed(false);
        // As the HL7 validator CLI: a meta.profile it does not know (QI-Core, the German
        // base profiles: no package at hand) is a warning, not an error.
        engine.setErrorForUnknownProfiles(false);
        FhirValidator validator = context.newValidator();
        validator.registerValidatorModule(engine);
        if (guide) {
            // Snapshots of every profile now, so a broken differential shows at start-up.
            for (IBaseResource definition : chain.fetchAllStructureDefinitions()) {
                chain.fetchStructureDefinition(url(context, definition));
            }
        }
        return validator;
    }

    private static String url(FhirContext context, IBaseResource resource) {
        return context.newTerser().getSinglePrimitiveValueOrNull(resource, "url");
    }

    /** The conformance resources of one guide folder (examples are not definitions). */
    private static int load(FhirContext context, Path folder, PrePopulatedValidationSupport guide) throws IOException {
        IParser parser = context.newJsonParser();
        int count = 0;
        try (Stream<Path> files = Files.list(folder)) {
            for (Path file : files.filter(f -> f.toString().endsWith(".json")).sorted().toList()) {
                String name = file.getFileName().toString();
                if (!(name.startsWith("StructureDefinition-") || name.startsWith("CodeSystem-")
                        || name.startsWith("ValueSet-"))) {
                    continue;
                }
                guide.addResource(parser.parseResource(Files.readString(file, StandardCharsets.UTF_8)));
                count++;
            }
        }
        return count;
    }

    private final class Validate extends HttpServlet {
        @Override
        protected void doPost(HttpServletRequest request, HttpServletResponse response) throws IOException {
            String version = request.getParameter("fhirVersion");
            String guide = request.getParameter("guide");
            String key = guide == null || guide.isEmpty() ? version : version + "/" + guide;
            FhirValidator validator = validators.get(key);
            if (validator == null) {
                response.sendError(400, "no validator for " + key + "; known: " + validators.keySet());
                return;
            }
            FhirContext context = contexts.get(version);
            String body = new String(request.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            ValidationOptions options = new ValidationOptions();
            String profile = request.getParameter("profile");
            if (profile != null && !profile.isEmpty()) {
                options.addProfile(profile);
            }
            ValidationResult result;
            synchronized (validator) {
                result = validator.validateWithResult(body, options);
            }
            result = new ValidationResult(context, notAtHand(result.getMessages(), chains.get(key)));
            String outcome = context.newJsonParser().encodeResourceToString(result.toOperationOutcome());
            response.setStatus(200);
            response.setContentType("application/fhir+json");
            response.getOutputStream().write(outcome.getBytes(StandardCharsets.UTF_8));
        }
    }

    private static final Pattern UNRESOLVED = Pattern.compile("^Unable to resolve the profile reference '([^']+)'");
    private static final Pattern NO_TARGET_TYPES = Pattern.compile(
            "^Invalid Resource target type\\. Found \\w+, but expected one of \\(\\[\\]\\)");

    /**
     * A profile the guide refers to but does not define (the 2027 ballot's weight and
     * height want Observations of the German base profiles, package de.basisprofil.r4,
     * which is not at hand) cannot be checked here: like a code of a code system we do not
     * have, that is a warning, named as such, not an error. So is the empty list of target
     * types that follows from it at the same place. Everything else stays as it is.
     */
    static List<SingleValidationMessage> notAtHand(
            List<SingleValidationMessage> messages, IValidationSupport chain) {
        Set<String> places = new HashSet<>();
        for (SingleValidationMessage message : messages) {
            if (message.getSeverity() == ResultSeverityEnum.ERROR && onlyUnknownTargets(message, chain)) {
                message.setSeverity(ResultSeverityEnum.WARNING);
                message.setMessage("Not checked, the target profile's package is not at hand: "
                        + message.getMessage());
                continue;
            }
            if (message.getSeverity() == ResultSeverityEnum.ERROR
                    && UNRESOLVED.matcher(message.getMessage()).find()) {
                message.setSeverity(ResultSeverityEnum.WARNING);
                message.setMessage("Not checked, its package is not at hand: " + message.getMessage());
                places.add(message.getLocationString());
            }
        }
        for (SingleValidationMessage message : messages) {
            if (message.getSeverity() == ResultSeverityEnum.ERROR
                    && places.contains(message.getLocationString())
                    && NO_TARGET_TYPES.matcher(message.getMessage()).find()) {
                message.setSeverity(ResultSeverityEnum.WARNING);
                message.setMessage("Not checked, the target profile's package is not at hand: "
                        + message.getMessage());
            }
        }
        return messages;
    }

    private static final Pattern TARGETS = Pattern.compile("^The type '?\\w+'? is not a valid Target for this element \\(must be one of \\[(.*)\\]\\)");
    private static final Pattern CANONICAL = Pattern.compile("CanonicalType\\[([^\\]]+)\\]");

    /** A reference whose allowed target profiles are all unknown here (onco-patient). */
    private static boolean onlyUnknownTargets(SingleValidationMessage message, IValidationSupport chain) {
        var targets = TARGETS.matcher(message.getMessage());
        if (!targets.find()) {
            return false;
        }
        var urls = CANONICAL.matcher(targets.group(1));
        boolean any = false;
        while (urls.find()) {
            any = true;
            if (chain.fetchStructureDefinition(urls.group(1)) != null) {
                return false;
            }
        }
        return any;
    }

    private final class Guides extends HttpServlet {
        @Override
        protected void doGet(HttpServletRequest request, HttpServletResponse response) throws IOException {
            StringBuilder json = new StringBuilder("{");
            for (var entry : guideSizes.entrySet()) {
                if (json.length() > 1) {
                    json.append(',');
                }
                json.append('"').append(entry.getKey()).append("\":").append(entry.getValue());
            }
            json.append('}');
            response.setStatus(200);
            response.setContentType("application/json");
            response.getOutputStream().write(json.toString().getBytes(StandardCharsets.UTF_8));
        }
    }
}
