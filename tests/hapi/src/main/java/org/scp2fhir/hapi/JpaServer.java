package org.scp2fhir.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.r5.JpaR5Config;
import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import ca.uhn.fhir.jpa.packages.PackageInstallationSpec;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;

/**
 * A HAPI FHIR JPA server (R4 or R5) mounted at {@code /fhir}, built the way
 * hapi-fhir-jpaserver-starter builds its RestfulServer (resource providers, system provider
 * with $expunge, $validate through HAPI's validation chain, JPA CapabilityStatement), plus
 * one test-only endpoint outside the FHIR base: {@code POST /$install-package?name=&version=}
 * with an NPM package (.tgz) as body installs it (its StructureDefinitions, ValueSets and
 * CodeSystems are then stored and used by $validate).
 */
final class JpaServer {
    private final AnnotationConfigApplicationContext spring;

    JpaServer(String fhirVersion) {
        Class<?> config = switch (fhirVersion) {
            case "R4" -> R4.class;
            case "R5" -> R5.class;
            default -> throw new IllegalArgumentException("FHIR version R4 or R5, not " + fhirVersion);
        };
        spring = new AnnotationConfigApplicationContext(config);
    }

    /** R4: HAPI's own R4 configuration plus ours. */
    @Configuration
    @Import({JpaR4Config.class, HapiJpaConfig.class, JpaBatch2Config.class, Batch2JobsConfig.class, SubscriptionChannelConfig.class, ThreadPoolFactoryConfig.class, JpaServerConfig.class})
    static class R4 {}

    /** R5: HAPI's own R5 configuration plus ours. */
    @Configuration
    @Import({JpaR5Config.class, HapiJpaConfig.class, JpaBatch2Config.class, Batch2JobsConfig.class, SubscriptionChannelConfig.class, ThreadPoolFactoryConfig.class, JpaServerConfig.class})
    static class R5 {}

    void mount(ServletContextHandler context) {
        IFhirSystemDao<?, ?> systemDao = spring.getBean(IFhirSystemDao.class);
        FhirContext fhirContext = systemDao.getContext();
        RestfulServer server = new RestfulServer(fhirContext);
        server.registerProviders(spring.getBean(ResourceProviderFactory.class).createProviders());
        server.registerProvider(spring.getBean(IJpaSystemProvider.class));
        JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
                server,
                systemDao,
                spring.getBean(JpaStorageSettings.class),
                spring.getBean(ISearchParamRegistry.class),
                spring.getBean(IValidationSupport.class));
        capabilities.setImplementationDescription("HAPI FHIR " + fhirVersionName(fhirContext)
                + " JPA server (scp2fhir tests)");
        server.setServerConformanceProvider(capabilities);
        server.setPagingProvider(spring.getBean(DatabaseBackedPagingProvider.class));
        server.setDefaultResponseEncoding(EncodingEnum.JSON);
        server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
        context.addServlet(new ServletHolder("fhir", server), "/fhir/*");
        context.addServlet(
                new ServletHolder("install-package", new InstallPackage(spring.getBean(IPackageInstallerSvc.class))),
                "/$install-package");
    }

    void close() {
        spring.close();
    }

    private static String fhirVersionName(FhirContext context) {
        return context.getVersion().getVersion().getFhirVersionString();
    }

    /** {@code POST /$install-package?name=&version=}: the body is the package's .tgz. */
    private static final class InstallPackage extends HttpServlet {
        private final transient IPackageInstallerSvc installer;

        InstallPackage(IPackageInstallerSvc installer) {
            this.installer = installer;
        }

        @Override
        protected void doPost(HttpServletRequest request, HttpServletResponse response) throws IOException {
            String name = request.getParameter("name");
            String version = request.getParameter("version");
            if (name == null || version == null) {
                response.sendError(400, "name and version are required");
                return;
            }
            byte[] contents = request.getInputStream().readAllBytes();
            PackageInstallationSpec spec = new PackageInstallationSpec()
                    .setName(name)
                    .setVersion(version)
                    .setPackageContents(contents)
                    .setInstallMode(PackageInstallationSpec.InstallModeEnum.STORE_AND_INSTALL);
            spec.setReloadExisting(true);
            var outcome = installer.install(spec);
            response.setStatus(200);
            response.setContentType("application/json");
            String body = "{\"installed\":" + outcome.getResourcesInstalled().values().stream()
                    .mapToInt(Integer::intValue).sum() + "}";
            response.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
        }
    }
}
