package dev.fhirseal.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.JpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.ApacheProxyAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.elasticsearch.ElasticsearchRestClientAutoConfiguration;
import org.springframework.boot.autoconfigure.flyway.FlywayAutoConfiguration;
import org.springframework.boot.autoconfigure.jdbc.DataSourceAutoConfiguration;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Import;

/**
 * A plain HAPI FHIR R4 JPA server: R4 DAOs and resource providers on H2, served
 * by embedded Tomcat at /fhir/*. Start: java -jar fhirseal-hapi.jar --server.port=PORT
 */
@SpringBootApplication(
		exclude = {
			// we build the DataSource, entity manager and transaction manager ourselves (StorageConfig)
			DataSourceAutoConfiguration.class,
			HibernateJpaAutoConfiguration.class,
			// these libraries come in with HAPI but we use none of them through Boot:
			// HAPI owns its Quartz scheduler, its schema is made by Hibernate, no Elasticsearch, no UI
			QuartzAutoConfiguration.class,
			FlywayAutoConfiguration.class,
			ElasticsearchRestClientAutoConfiguration.class,
			ThymeleafAutoConfiguration.class
		})
@Import({
	JpaR4Config.class, // R4 FhirContext, DAOs, resource providers, system DAO/provider (imports JpaConfig)
	HapiJpaConfig.class, // search, paging, stale-search cleanup, resource counts
	ThreadPoolFactoryConfig.class, // thread pools used by transactions and batch2
	JpaBatch2Config.class, // batch2 job store: needed by DELETE ?_expunge=true
	Batch2JobsConfig.class, // the batch2 jobs themselves (delete-expunge, reindex, ...)
	SubscriptionChannelConfig.class // in-memory message channels that batch2 sends its work on
})
public class HapiServer {

	public static void main(String[] args) {
		SpringApplication.run(HapiServer.class, args);
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			@Qualifier(JpaConfig.JPA_VALIDATION_SUPPORT_CHAIN) IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider) {
		RestfulServer server = new RestfulServer(systemDao.getContext());
		// one provider per resource type (CRUD, search, history, patch, $expunge, ...)
		server.registerProviders(resourceProviders.createProviders());
		// system level: transaction/batch, _history, $expunge, ...
		server.registerProvider(systemProvider);
		// /metadata built from the registered providers and search parameters
		server.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport));
		// search results are kept in the database so next/previous links work
		pagingProvider.setDefaultPageSize(20);
		pagingProvider.setMaximumPageSize(500);
		server.setPagingProvider(pagingProvider);
		// Links (Bundle.link, fullUrl, Location) follow X-Forwarded-Host/-Proto/-Port
		// (and RFC 7239 Forwarded); X-Forwarded-Prefix replaces the whole base path.
		// Without these headers the links point at this server itself.
		server.setServerAddressStrategy(ApacheProxyAddressStrategy.forHttp());
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(server, "/fhir/*");
		// initialise HAPI before the port opens, so the first request is not slow
		reg.setLoadOnStartup(1);
		return reg;
	}
}
