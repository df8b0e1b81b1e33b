package dev.fhirseal.hapi;

import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManagerFactory;
import java.util.Properties;
import javax.sql.DataSource;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/**
 * Database and storage behaviour of the test server. HAPI's own config classes
 * (imported in {@link HapiServer}) expect the application to provide exactly
 * these beans.
 */
@Configuration
public class StorageConfig {

	/**
	 * H2 in memory by default (a fresh, empty server per start). Set
	 * {@code hapi.db.file} (env HAPI_DB_FILE) to a path to keep data on disk.
	 */
	@Bean(destroyMethod = "close")
	public DataSource dataSource(@Value("${hapi.db.file:}") String dbFile) {
		HikariDataSource ds = new HikariDataSource();
		ds.setDriverClassName("org.h2.Driver");
		ds.setJdbcUrl((dbFile.isBlank()
						// DB_CLOSE_DELAY=-1: keep the in-memory DB while the pool has no open connection
						? "jdbc:h2:mem:hapi;DB_CLOSE_DELAY=-1"
						: "jdbc:h2:file:" + dbFile)
				// let Spring close the pool on shutdown instead of H2's own JVM hook, which
				// closes the DB under HAPI's still-running background jobs
				+ ";DB_CLOSE_ON_EXIT=FALSE");
		ds.setUsername("sa");
		ds.setPassword("");
		// HAPI runs searches on background threads that hold their own connection
		ds.setMaximumPoolSize(20);
		return ds;
	}

	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			DataSource dataSource) {
		// HAPI's factory bean registers its entities, dialect wrapper and Hibernate hooks
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(dataSource);
		Properties p = new Properties();
		// HAPI's H2 dialect (HAPI reads this property to pick SQL variants)
		p.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		// create the schema on start (empty DB) / keep it in step for a file DB
		p.put("hibernate.hbm2ddl.auto", "update");
		// no Lucene/Elasticsearch index: plain SQL search only, faster start
		p.put("hibernate.search.enabled", "false");
		p.put("hibernate.format_sql", "false");
		p.put("hibernate.show_sql", "false");
		// no classpath scanning for entities beyond the packages HAPI lists
		p.put("hibernate.archive.scanner", "org.hibernate.boot.archive.scan.internal.DisabledScanner");
		p.put("hibernate.cache.use_second_level_cache", "false");
		p.put("hibernate.cache.use_query_cache", "false");
		emf.setJpaProperties(p);
		return emf;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory emf) {
		return new JpaTransactionManager(emf);
	}

	/** The behaviour the fhirseal tests rely on. */
	@Bean
	public JpaStorageSettings jpaStorageSettings() {
		JpaStorageSettings s = new JpaStorageSettings();
		// clients may PUT any id, even numeric ones (update-as-create)...
		s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ANY);
		// ...so server-assigned ids (POST) are UUIDs, which never collide with them
		s.setResourceServerIdStrategy(JpaStorageSettings.IdStrategyEnum.UUID);
		// $expunge, DELETE ?_expunge=true and conditional DELETE matching many resources
		s.setExpungeEnabled(true);
		s.setDeleteExpungeEnabled(true);
		s.setAllowMultipleDelete(true);
		// DELETE ?_expunge=true runs as a batch2 job; without fast tracking each of its
		// steps waits for the once-a-minute maintenance pass (minutes instead of seconds)
		s.setJobFastTrackingEnabled(true);
		// Do not answer a repeated search from a cached result set made up to 60 s before
		// (HAPI's default): tests search right after they write. Paging still goes through
		// the database-backed search cache.
		s.setReuseCachedSearchResultsForMillis(null);
		// no background work the tests don't need
		s.setEnableTaskPreExpandValueSets(false);
		s.setEnableTaskResourceReindexing(false);
		return s;
	}

	/**
	 * Batch2 jobs (DELETE ?_expunge=true) start on the next maintenance pass, by default
	 * once a minute; every 5 s makes such a delete finish within seconds.
	 */
	@Bean
	public static BeanPostProcessor batch2MaintenanceEvery5s() {
		return new BeanPostProcessor() {
			@Override
			public Object postProcessBeforeInitialization(Object bean, String name) {
				if (bean instanceof JobMaintenanceServiceImpl maintenance) {
					maintenance.setScheduledJobFrequencyMillis(5_000);
				}
				return bean;
			}
		};
	}

	/** Partitioning off (HAPI still wants the bean). */
	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	/** Subscriptions are not wired in; HAPI still wants the bean. */
	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}
}
