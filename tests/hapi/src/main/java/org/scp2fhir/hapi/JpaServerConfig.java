package org.scp2fhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

/**
 * The Spring configuration of one HAPI FHIR JPA server: an in-memory H2 database and the
 * storage settings of docker/compose.yaml's HAPI (client ids of any form, references to
 * other servers allowed; the hapiproject/hapi image's defaults otherwise), plus what the
 * tests need of a test server: expunge and multiple delete (the reset between tests) and no reuse of cached
 * search results (the image reuses them for 60 s; the tests search right after a write). {@link JpaServer} imports it beside HAPI's configuration of the
 * FHIR version.
 */
@Configuration
@EnableTransactionManagement
public class JpaServerConfig {

    @Bean
    public JpaStorageSettings storageSettings() {
        JpaStorageSettings settings = new JpaStorageSettings();
        // docker/compose.yaml: hapi.fhir.client_id_strategy=ANY, allow_external_references=true
        settings.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ANY);
        settings.setAllowExternalReferences(true);
        // Everything else as the hapiproject/hapi image has it (referential integrity on
        // write and delete enforced, ...), except for the tests' own needs:
        // POST [base]/$expunge (expungeEverything) resets the server between tests; it
        // needs multiple delete, which the image does not allow.
        settings.setAllowMultipleDelete(true);
        settings.setExpungeEnabled(true);
        settings.setDeleteExpungeEnabled(true);
        // A search answers from the database, never from a cached earlier search.
        settings.setReuseCachedSearchResultsForMillis(null);
        return settings;
    }

    @Bean
    public PartitionSettings partitionSettings() {
        return new PartitionSettings();
    }

    @Bean
    public SubscriptionSettings subscriptionSettings() {
        return new SubscriptionSettings();
    }

    @Bean(destroyMethod = "close")
    public BasicDataSource dataSource() {
        BasicDataSource source = new BasicDataSource();
        source.setDriver(new org.h2.Driver());
        // One private in-memory database per process, kept while the process lives.
        source.setUrl("jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1");
        source.setUsername("sa");
        source.setPassword("");
        source.setMaxTotal(10);
        return source;
    }

    @Bean
    @Primary
    public LocalContainerEntityManagerFactoryBean entityManagerFactory(
            ConfigurableListableBeanFactory beanFactory,
            FhirContext fhirContext,
            JpaStorageSettings storageSettings,
            DataSource dataSource) {
        LocalContainerEntityManagerFactoryBean factory =
                HapiEntityManagerFactoryUtil.newEntityManagerFactory(
                        beanFactory, fhirContext, storageSettings);
        factory.setPersistenceUnitName("HAPI_PU");
        factory.setDataSource(dataSource);
        Properties jpa = new Properties();
        jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
        jpa.put("hibernate.hbm2ddl.auto", "update");
        jpa.put("hibernate.format_sql", "false");
        jpa.put("hibernate.show_sql", "false");
        jpa.put("hibernate.jdbc.batch_size", "20");
        jpa.put("hibernate.cache.use_query_cache", "false");
        jpa.put("hibernate.cache.use_second_level_cache", "false");
        jpa.put("hibernate.search.enabled", "false");
        factory.setJpaProperties(jpa);
        return factory;
    }

    @Bean
    @Primary
    public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
        JpaTransactionManager manager = new JpaTransactionManager();
        manager.setEntityManagerFactory(entityManagerFactory);
        return manager;
    }
}
