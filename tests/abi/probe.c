/*
 * ABI probe: prints the layout of every type, member and constant that
 * include/strongswan_abi.h declares, one `name value` line each:
 *
 *   T.member offset/size     offsetof(T, member) / sizeof(member)
 *   sizeof(T) n              only for types we declare completely
 *   alignof(T) n
 *   enum NAME value          enumerators (and the debug groups, see below)
 *
 * Built twice by tests/abi_layout.rs, and the two outputs must agree line by line:
 *   own:  cc -DQKD_OWN_ABI -I include tests/abi/probe.c
 *   real: cc -include <tree>/config.h -I <tree>/src/libstrongswan -I <tree>/src/libcharon
 *         tests/abi/probe.c          (tree = strongSwan 6.1.0 from tests/abi/fetch-headers.sh)
 *
 * The test also checks that every struct member and enumerator the header declares has a
 * line here, so a declaration added to the header without a probe line fails the test.
 */
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>

#ifdef QKD_OWN_ABI
#include "strongswan_abi.h"
/*
 * Our header declares no debug groups (the plugin picks them at run time, because 6.0.1
 * and >= 6.0.2 differ). These are the 6.1.0 values from docs/strongswan-abi.md, "Debug groups",
 * checked here against the real 6.1.0 enum. 6.0.1 has no DBG_WCH: CFG=5, LIB=17, MAX=18.
 */
enum {
	QKD_FACT_DBG_DMN = 0,
	QKD_FACT_DBG_IKE = 2,
	QKD_FACT_DBG_CHD = 3,
	QKD_FACT_DBG_JOB = 4,
	QKD_FACT_DBG_WCH = 5,
	QKD_FACT_DBG_CFG = 6,
	QKD_FACT_DBG_KNL = 7,
	QKD_FACT_DBG_NET = 8,
	QKD_FACT_DBG_ENC = 10,
	QKD_FACT_DBG_LIB = 18,
	QKD_FACT_DBG_MAX = 19,
};
#define DBGV(name) printf("enum DBG_%s %lld\n", #name, (long long)QKD_FACT_DBG_##name)
#else
#ifndef CONFIG_H_INCLUDED
#error "build the real variant with -include config.h from a configured strongSwan tree"
#endif
#include <library.h>
#include <utils/enum.h>
#include <utils/debug.h>
#include <collections/enumerator.h>
#include <settings/settings.h>
#include <plugins/plugin.h>
#include <plugins/plugin_feature.h>
#include <crypto/transform.h>
#include <crypto/key_exchange.h>
#include <crypto/rngs/rng.h>
#include <crypto/crypto_factory.h>
#include <crypto/proposal/proposal_keywords.h>
#include <networking/host.h>
#include <daemon.h>
#include <bus/bus.h>
#include <bus/listeners/listener.h>
#include <processing/processor.h>
#include <processing/jobs/job.h>
#include <sa/ike_sa.h>
#include <credentials/credential_manager.h>
#include <credentials/credential_set.h>
#include <credentials/keys/shared_key.h>
#include <credentials/sets/mem_cred.h>
#include <utils/identification.h>
#define DBGV(name) printf("enum DBG_%s %lld\n", #name, (long long)DBG_##name)
#endif

/* member: offset/size; a nested designator (arg.reg.f) works with GCC's offsetof */
#define M(T, m) \
	printf("%s.%s %zu/%zu\n", #T, #m, (size_t)offsetof(T, m), sizeof(((T *)0)->m))
/* complete type: size and alignment */
#define S(T) \
	printf("sizeof(%s) %zu\nalignof(%s) %zu\n", #T, sizeof(T), #T, (size_t)alignof(T))
/* enumerator value */
#define E(name) printf("enum %s %lld\n", #name, (long long)(name))

int main(void)
{
	/* scalar types and enums used in signatures */
	S(bool);
	S(chunk_t);
	S(key_exchange_method_t);
	S(transform_type_t);
	S(ike_sa_state_t);
	S(rng_quality_t);
	S(level_t);
	S(debug_t);
	S(ke_constructor_t);
	S(plugin_feature_callback_t);

	/* chunk_t */
	M(chunk_t, ptr);
	M(chunk_t, len);

	/* key_exchange_method_t */
	E(KE_NONE);
	E(MODP_2048_BIT);
	E(MODP_3072_BIT);
	E(ECP_256_BIT);
	E(ECP_384_BIT);
	E(ECP_521_BIT);
	E(CURVE_25519);
	E(CURVE_448);

	/* key_exchange_t: 6 slots with TESTABLE_KE (Debian 6.1.0; 6.0.1 always) */
	S(key_exchange_t);
	M(key_exchange_t, get_shared_secret);
	M(key_exchange_t, set_public_key);
	M(key_exchange_t, get_public_key);
	M(key_exchange_t, set_seed);
	M(key_exchange_t, get_method);
	M(key_exchange_t, destroy);

	/* plugin_t */
	S(plugin_t);
	M(plugin_t, get_name);
	M(plugin_t, get_features);
	M(plugin_t, reload);
	M(plugin_t, destroy);

	/* plugin_feature_t and its union members */
	E(FEATURE_PROVIDE);
	E(FEATURE_DEPENDS);
	E(FEATURE_SDEPEND);
	E(FEATURE_REGISTER);
	E(FEATURE_CALLBACK);
	E(FEATURE_NONE);
	E(FEATURE_KE);
	E(FEATURE_RNG);
	E(FEATURE_CUSTOM);
	E(RNG_WEAK);
	E(RNG_STRONG);
	E(RNG_TRUE);
	S(plugin_feature_t);
	M(plugin_feature_t, kind);
	M(plugin_feature_t, type);
	M(plugin_feature_t, arg);
	M(plugin_feature_t, arg.ke);
	M(plugin_feature_t, arg.rng_quality);
	M(plugin_feature_t, arg.custom);
	M(plugin_feature_t, arg.reg);
	M(plugin_feature_t, arg.reg.final);
	M(plugin_feature_t, arg.reg.f);
	M(plugin_feature_t, arg.cb);
	M(plugin_feature_t, arg.cb.f);
	M(plugin_feature_t, arg.cb.data);

	/* enumerator_t */
	S(enumerator_t);
	M(enumerator_t, enumerate);
	M(enumerator_t, venumerate);
	M(enumerator_t, destroy);

	/* settings_t */
	S(settings_t);
	M(settings_t, get_str);
	M(settings_t, get_bool);
	M(settings_t, get_int);
	M(settings_t, get_double);
	M(settings_t, get_time);
	M(settings_t, set_str);
	M(settings_t, set_bool);
	M(settings_t, set_int);
	M(settings_t, set_double);
	M(settings_t, set_time);
	M(settings_t, set_default_str);
	M(settings_t, create_section_enumerator);
	M(settings_t, create_key_value_enumerator);
	M(settings_t, add_fallback);
	M(settings_t, load_files);
	M(settings_t, load_files_section);
	M(settings_t, load_string);
	M(settings_t, load_string_section);
	M(settings_t, destroy);
	M(settings_t, destroy_clear);

	/* crypto_factory_t: declared up to create_ke only, so no sizeof */
	M(crypto_factory_t, create_crypter);
	M(crypto_factory_t, create_aead);
	M(crypto_factory_t, create_signer);
	M(crypto_factory_t, create_hasher);
	M(crypto_factory_t, create_prf);
	M(crypto_factory_t, create_xof);
	M(crypto_factory_t, create_kdf);
	M(crypto_factory_t, create_drbg);
	M(crypto_factory_t, create_rng);
	M(crypto_factory_t, create_nonce_gen);
	M(crypto_factory_t, create_ke);

	/* transform_type_t, proposal_keywords_t */
	E(KEY_EXCHANGE_METHOD);
	S(proposal_keywords_t);
	M(proposal_keywords_t, get_token);
	M(proposal_keywords_t, register_token);
	M(proposal_keywords_t, register_algname_parser);
	M(proposal_keywords_t, destroy);

	/* enum_name_t (flexible array member names[]) */
	S(enum_name_t);
	M(enum_name_t, first);
	M(enum_name_t, last);
	M(enum_name_t, next);
	printf("enum_name_t.names %zu\n", (size_t)offsetof(enum_name_t, names));
	printf("enum_name_t.names[0] size %zu\n", sizeof(((enum_name_t *)0)->names[0]));

	/* PPK lookups: shared_key_type_t, identification_t, credential_set_t, mem_cred_t
	 * (complete), credential_manager_t (leading slots only) */
	S(shared_key_type_t);
	E(SHARED_ANY);
	E(SHARED_PPK);
	S(identification_t);
	M(identification_t, get_encoding);
	M(identification_t, get_type);
	M(identification_t, hash);
	M(identification_t, equals);
	M(identification_t, matches);
	M(identification_t, contains_wildcards);
	M(identification_t, create_part_enumerator);
	M(identification_t, clone);
	M(identification_t, destroy);
	S(credential_set_t);
	M(credential_set_t, create_private_enumerator);
	M(credential_set_t, create_cert_enumerator);
	M(credential_set_t, create_shared_enumerator);
	M(credential_set_t, create_cdp_enumerator);
	M(credential_set_t, cache_cert);
	M(credential_manager_t, create_cert_enumerator);
	M(credential_manager_t, create_shared_enumerator);
	M(credential_manager_t, create_cdp_enumerator);
	M(credential_manager_t, get_cert);
	M(credential_manager_t, get_shared);
	M(credential_manager_t, get_private);
	M(credential_manager_t, get_ocsp);
	M(credential_manager_t, create_trusted_enumerator);
	M(credential_manager_t, create_public_enumerator);
	M(credential_manager_t, cache_cert);
	M(credential_manager_t, flush_cache);
	M(credential_manager_t, issued_by);
	M(credential_manager_t, add_set);
	M(credential_manager_t, remove_set);
	S(mem_cred_t);
	M(mem_cred_t, set);
	M(mem_cred_t, add_cert);
	M(mem_cred_t, add_cert_ref);
	M(mem_cred_t, get_cert_ref);
	M(mem_cred_t, add_crl);
	M(mem_cred_t, add_key);
	M(mem_cred_t, remove_key);
	M(mem_cred_t, add_shared);
	M(mem_cred_t, add_shared_list);
	M(mem_cred_t, add_shared_unique);
	M(mem_cred_t, remove_shared_unique);
	M(mem_cred_t, create_unique_shared_enumerator);
	M(mem_cred_t, add_cdp);
	M(mem_cred_t, replace_certs);
	M(mem_cred_t, replace_secrets);
	M(mem_cred_t, clear);
	M(mem_cred_t, clear_secrets);
	M(mem_cred_t, destroy);

	/* library_t (global lib) */
	S(library_t);
	M(library_t, get);
	M(library_t, set);
	M(library_t, ns);
	M(library_t, conf);
	M(library_t, printf_hook);
	M(library_t, proposal);
	M(library_t, caps);
	M(library_t, crypto);
	M(library_t, creds);
	M(library_t, credmgr);
	M(library_t, encoding);
	M(library_t, ocsp);
	M(library_t, metadata);
	M(library_t, fetcher);
	M(library_t, resolver);
	M(library_t, db);
	M(library_t, plugins);
	M(library_t, processor);
	M(library_t, scheduler);
	M(library_t, watcher);
	M(library_t, streams);
	M(library_t, hosts);
	M(library_t, settings);
	M(library_t, integrity);
	M(library_t, leak_detective);

	/* host_t */
	S(host_t);
	M(host_t, clone);
	M(host_t, get_sockaddr);
	M(host_t, get_sockaddr_len);
	M(host_t, get_family);
	M(host_t, is_anyaddr);
	M(host_t, get_address);
	M(host_t, get_port);
	M(host_t, set_port);
	M(host_t, ip_equals);
	M(host_t, equals);
	M(host_t, destroy);

	/* ike_sa_state_t, ike_sa_t (leading slots only, so no sizeof) */
	E(IKE_ESTABLISHED);
	E(IKE_REKEYING);
	E(IKE_REKEYED);
	M(ike_sa_t, get_id);
	M(ike_sa_t, get_version);
	M(ike_sa_t, get_unique_id);
	M(ike_sa_t, get_state);
	M(ike_sa_t, set_state);
	M(ike_sa_t, get_name);
	M(ike_sa_t, get_statistic);
	M(ike_sa_t, set_statistic);
	M(ike_sa_t, get_my_host);
	M(ike_sa_t, set_my_host);
	M(ike_sa_t, get_other_host);

	/* listener_t: complete */
	S(listener_t);
	M(listener_t, alert);
	M(listener_t, ike_state_change);
	M(listener_t, child_state_change);
	M(listener_t, message);
	M(listener_t, ike_keys);
	M(listener_t, ike_derived_keys);
	M(listener_t, child_keys);
	M(listener_t, child_derived_keys);
	M(listener_t, ike_updown);
	M(listener_t, ike_rekey);
	M(listener_t, ike_update);
	M(listener_t, ike_reestablish_pre);
	M(listener_t, ike_reestablish_post);
	M(listener_t, child_updown);
	M(listener_t, child_rekey);
	M(listener_t, children_migrate);
	M(listener_t, authorize);
	M(listener_t, narrow);
	M(listener_t, assign_vips);
	M(listener_t, handle_vips);

	/* job_t, job_requeue_t: complete; processor_t: leading slots only */
	S(job_t);
	M(job_t, status);
	M(job_t, execute);
	M(job_t, cancel);
	M(job_t, get_priority);
	M(job_t, destroy);
	S(job_requeue_t);
	M(job_requeue_t, type);
	M(job_requeue_t, schedule);
	M(job_requeue_t, time);
	M(job_requeue_t, time.rel);
	M(job_requeue_t, time.abs);
	E(JOB_REQUEUE_TYPE_NONE);
	E(JOB_STATUS_QUEUED);
	E(JOB_PRIO_CRITICAL);
	E(JOB_PRIO_HIGH);
	E(JOB_PRIO_MEDIUM);
	E(JOB_PRIO_LOW);
	M(processor_t, get_total_threads);
	M(processor_t, get_idle_threads);
	M(processor_t, get_working_threads);
	M(processor_t, get_job_load);
	M(processor_t, queue_job);

	/* bus_t: leading slots only */
	M(bus_t, add_listener);
	M(bus_t, remove_listener);
	M(bus_t, add_logger);
	M(bus_t, remove_logger);
	M(bus_t, set_sa);
	M(bus_t, get_sa);

	/* daemon_t (global charon): leading members only */
	M(daemon_t, socket);
	M(daemon_t, kernel);
	M(daemon_t, ike_sa_manager);
	M(daemon_t, child_sa_manager);
	M(daemon_t, traps);
	M(daemon_t, shunts);
	M(daemon_t, redirect);
	M(daemon_t, backends);
	M(daemon_t, sender);
	M(daemon_t, receiver);
	M(daemon_t, attributes);
	M(daemon_t, bus);

	/* logging */
	E(LEVEL_SILENT);
	E(LEVEL_AUDIT);
	E(LEVEL_CTRL);
	E(LEVEL_DIAG);
	E(LEVEL_RAW);
	E(LEVEL_PRIVATE);
	DBGV(DMN);
	DBGV(IKE);
	DBGV(CHD);
	DBGV(JOB);
	DBGV(WCH);
	DBGV(CFG);
	DBGV(KNL);
	DBGV(NET);
	DBGV(ENC);
	DBGV(LIB);
	DBGV(MAX);
	return 0;
}
