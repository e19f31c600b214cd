/*
 * The subset of the strongSwan 6 ABI that libstrongswan-qkd uses, declared by us.
 *
 * Debian ships no strongSwan headers, so this file states the layouts we rely on. Type and
 * member names are strongSwan's own, so that tests/abi/probe.c compiles unchanged against
 * this file and against the real 6.1.0 headers and the two outputs can be compared
 * (tests/abi_layout.rs). Slots we never call are declared as `void *` placeholders named
 * after the real member, so offsets stay checkable.
 *
 * Differences between 6.0.1 and 6.1.0 that matter here:
 *  - key_exchange_t.set_seed exists in 6.0.1 unconditionally, from 6.0.2 on only with
 *    TESTABLE_KE (default and Debian: on). We declare the 6-slot layout; a library built
 *    without it is detected at load and refused (crate::version::inspect).
 *  - debug_t gains DBG_WCH=5 in >= 6.0.2, shifting CFG..LIB by one (see src/ffi/log.rs).
 *  - >= 6.0.3 requires the <name>_plugin_version symbol (see src/ffi/version.rs).
 */
#ifndef STRONGSWAN_QKD_ABI_H
#define STRONGSWAN_QKD_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/time.h>

typedef struct {
	u_char *ptr;
	size_t len;
} chunk_t;

typedef enum {
	KE_NONE = 0,
	MODP_2048_BIT = 14,
	MODP_3072_BIT = 15,
	ECP_256_BIT = 19,
	ECP_384_BIT = 20,
	ECP_521_BIT = 21,
	CURVE_25519 = 31,
	CURVE_448 = 32,
} key_exchange_method_t;

typedef struct drbg_t drbg_t;
typedef struct key_exchange_t key_exchange_t;

struct key_exchange_t {
	bool (*get_shared_secret)(key_exchange_t *this, chunk_t *secret);
	bool (*set_public_key)(key_exchange_t *this, chunk_t value);
	bool (*get_public_key)(key_exchange_t *this, chunk_t *value);
	/* 6.1.0: present only with TESTABLE_KE (configure --with-testable-ke, default yes;
	 * Debian forky's build has it, checked by tests/abi). 6.0.1: always present. */
	bool (*set_seed)(key_exchange_t *this, chunk_t value, drbg_t *drbg);
	key_exchange_method_t (*get_method)(key_exchange_t *this);
	void (*destroy)(key_exchange_t *this);
};

typedef key_exchange_t *(*ke_constructor_t)(key_exchange_method_t method, ...);

/* ---- plugins ---------------------------------------------------------------------- */

typedef struct plugin_t plugin_t;
typedef struct plugin_feature_t plugin_feature_t;

struct plugin_t {
	char *(*get_name)(plugin_t *this);
	int (*get_features)(plugin_t *this, plugin_feature_t *features[]);
	bool (*reload)(plugin_t *this);
	void (*destroy)(plugin_t *this);
};

typedef enum {
	FEATURE_PROVIDE = 0,
	FEATURE_DEPENDS = 1,
	FEATURE_SDEPEND = 2,
	FEATURE_REGISTER = 3,
	FEATURE_CALLBACK = 4,
} plugin_feature_kind_t;

typedef enum {
	FEATURE_NONE = 0,
	FEATURE_KE = 9,
	FEATURE_RNG = 10,
	FEATURE_CUSTOM = 30,
} plugin_feature_type_t;

typedef enum {
	RNG_WEAK = 0,
	RNG_STRONG = 1,
	RNG_TRUE = 2,
} rng_quality_t;

typedef bool (*plugin_feature_callback_t)(plugin_t *plugin, plugin_feature_t *feature,
										  bool reg, void *cb_data);

struct plugin_feature_t {
	plugin_feature_kind_t kind;
	plugin_feature_type_t type;
	union {
		key_exchange_method_t ke;
		rng_quality_t rng_quality;
		char *custom;
		struct {
			bool final;
			void *f;
		} reg;
		struct {
			plugin_feature_callback_t f;
			void *data;
		} cb;
	} arg;
};

/* ---- enumerators, settings ---------------------------------------------------------- */

typedef struct enumerator_t enumerator_t;

struct enumerator_t {
	bool (*enumerate)(enumerator_t *this, ...);
	void *venumerate;
	void (*destroy)(enumerator_t *this);
};

typedef struct settings_t settings_t;

struct settings_t {
	char *(*get_str)(settings_t *this, char *key, char *def, ...);
	bool (*get_bool)(settings_t *this, char *key, int def, ...);
	int (*get_int)(settings_t *this, char *key, int def, ...);
	void *get_double;
	uint32_t (*get_time)(settings_t *this, char *key, uint32_t def, ...);
	void *set_str;
	void *set_bool;
	void *set_int;
	void *set_double;
	void *set_time;
	void *set_default_str;
	enumerator_t *(*create_section_enumerator)(settings_t *this, char *section, ...);
	void *create_key_value_enumerator;
	void *add_fallback;
	void *load_files;
	void *load_files_section;
	void *load_string;
	void *load_string_section;
	void *destroy;
	void *destroy_clear;
};

/* ---- crypto factory, proposal keywords, enum names ------------------------------------ */

typedef struct crypto_factory_t crypto_factory_t;

struct crypto_factory_t {
	void *create_crypter;
	void *create_aead;
	void *create_signer;
	void *create_hasher;
	void *create_prf;
	void *create_xof;
	void *create_kdf;
	void *create_drbg;
	void *create_rng;
	void *create_nonce_gen;
	key_exchange_t *(*create_ke)(crypto_factory_t *this, key_exchange_method_t method, ...);
	/* 32 more slots (add_*, remove_*, enumerators, test vectors, destroy) we never use */
};

typedef enum {
	KEY_EXCHANGE_METHOD = 4,
} transform_type_t;

typedef struct proposal_keywords_t proposal_keywords_t;

struct proposal_keywords_t {
	void *get_token;
	void (*register_token)(proposal_keywords_t *this, const char *name,
						   transform_type_t type, uint16_t algorithm, uint16_t keysize);
	void *register_algname_parser;
	void *destroy;
};

typedef struct enum_name_t enum_name_t;

struct enum_name_t {
	int64_t first;
	int64_t last;
	enum_name_t *next;
	char *names[];
};

/* ---- credentials for PPK lookups (credential sets, shared keys, identities) ------------ */

typedef enum {
	SHARED_ANY = 0,
	SHARED_PPK = 6,
} shared_key_type_t;

/* created by shared_key_create and handed to a mem_cred_t: never called by us */
typedef struct shared_key_t shared_key_t;

typedef struct identification_t identification_t;

/* complete */
struct identification_t {
	chunk_t (*get_encoding)(identification_t *this);
	void *get_type;
	void *hash;
	void *equals;
	void *matches;
	void *contains_wildcards;
	void *create_part_enumerator;
	identification_t *(*clone)(identification_t *this);
	void (*destroy)(identification_t *this);
};

typedef struct credential_set_t credential_set_t;

/* complete: the credential manager calls every slot of a registered set. We answer shared
 * key lookups only; the other four get functions that return NULL / do nothing, typed here
 * as placeholders (strongSwan's own sets use return_null/nop the same way). */
struct credential_set_t {
	void *create_private_enumerator;
	void *create_cert_enumerator;
	enumerator_t *(*create_shared_enumerator)(credential_set_t *this, shared_key_type_t type,
											  identification_t *me, identification_t *other);
	void *create_cdp_enumerator;
	void *cache_cert;
};

typedef struct credential_manager_t credential_manager_t;

struct credential_manager_t {
	void *create_cert_enumerator;
	void *create_shared_enumerator;
	void *create_cdp_enumerator;
	void *get_cert;
	void *get_shared;
	void *get_private;
	void *get_ocsp;
	void *create_trusted_enumerator;
	void *create_public_enumerator;
	void *cache_cert;
	void *flush_cache;
	void *issued_by;
	void (*add_set)(credential_manager_t *this, credential_set_t *set);
	void (*remove_set)(credential_manager_t *this, credential_set_t *set);
	/* add_local_set, ..., destroy: not used */
};

typedef struct mem_cred_t mem_cred_t;

/* complete (credentials/sets/mem_cred.h): an in-memory set that holds one fetched PPK for
 * the duration of one lookup and does strongSwan's own identity matching */
struct mem_cred_t {
	credential_set_t set;
	void *add_cert;
	void *add_cert_ref;
	void *get_cert_ref;
	void *add_crl;
	void *add_key;
	void *remove_key;
	void (*add_shared)(mem_cred_t *this, shared_key_t *shared, ...);
	void *add_shared_list;
	void *add_shared_unique;
	void *remove_shared_unique;
	void *create_unique_shared_enumerator;
	void *add_cdp;
	void *replace_certs;
	void *replace_secrets;
	void *clear;
	void *clear_secrets;
	void (*destroy)(mem_cred_t *this);
};

/* libstrongswan functions, looked up with dlsym (src/ffi/symbols.rs) */
typedef shared_key_t *(*shared_key_create_fn_t)(shared_key_type_t type, chunk_t key);
typedef mem_cred_t *(*mem_cred_create_fn_t)(void);
typedef enumerator_t *(*enumerator_create_single_fn_t)(void *item, void (*cleanup)(void *item));
typedef enumerator_t *(*enumerator_create_nested_fn_t)(enumerator_t *outer,
		enumerator_t *(*inner_constructor)(void *outer, void *data), void *data,
		void (*destructor)(void *data));

/* ---- library_t (global `lib`) ---------------------------------------------------------- */

/* ---- processor and jobs (processing/processor.h, processing/jobs/job.h) ---------------- */

typedef struct job_t job_t;

typedef enum {
	JOB_PRIO_CRITICAL = 0,
	JOB_PRIO_HIGH = 1,
	JOB_PRIO_MEDIUM = 2,
	JOB_PRIO_LOW = 3,
} job_priority_t;

typedef enum {
	JOB_REQUEUE_TYPE_NONE = 0,
} job_requeue_type_t;

typedef enum {
	JOB_STATUS_QUEUED = 0,
} job_status_t;

typedef struct timeval timeval_t;

/* Returned by value from execute (24 bytes: through a hidden pointer on SysV x86-64).
 * `schedule` is an anonymous enum in strongSwan (unsigned int with GCC). */
typedef struct {
	job_requeue_type_t type;
	unsigned int schedule;
	union {
		uint32_t rel;
		timeval_t abs;
	} time;
} job_requeue_t;

/* complete: the processor reads status and every slot */
struct job_t {
	job_status_t status;
	job_requeue_t (*execute)(job_t *this);
	bool (*cancel)(job_t *this);
	job_priority_t (*get_priority)(job_t *this);
	void (*destroy)(job_t *this);
};

typedef struct processor_t processor_t;

struct processor_t {
	void *get_total_threads;
	void *get_idle_threads;
	void *get_working_threads;
	void *get_job_load;
	void (*queue_job)(processor_t *this, job_t *job);
	/* execute_job, set_threads, cancel, destroy: not used */
};

typedef struct library_t library_t;

struct library_t {
	void *get;
	void *set;
	const char *ns;
	void *conf;
	void *printf_hook;
	proposal_keywords_t *proposal;
	void *caps;
	crypto_factory_t *crypto;
	void *creds;
	credential_manager_t *credmgr;
	void *encoding;
	void *ocsp;
	void *metadata;
	void *fetcher;
	void *resolver;
	void *db;
	void *plugins;
	processor_t *processor;
	void *scheduler;
	void *watcher;
	void *streams;
	void *hosts;
	settings_t *settings;
	void *integrity;
	void *leak_detective;
};

/* ---- libcharon: daemon_t (global `charon`), bus, IKE SA, hosts ------------------------ */

typedef struct host_t host_t;

struct host_t {
	void *clone;
	void *get_sockaddr;
	void *get_sockaddr_len;
	int (*get_family)(host_t *this);
	bool (*is_anyaddr)(host_t *this);
	chunk_t (*get_address)(host_t *this);
	void *get_port;
	void *set_port;
	void *ip_equals;
	void *equals;
	void *destroy;
};

typedef struct ike_sa_t ike_sa_t;

/* ike_sa_state_t (sa/ike_sa.h): the values we test. */
typedef enum {
	IKE_ESTABLISHED = 2,
	IKE_REKEYING = 4,
	IKE_REKEYED = 5,
} ike_sa_state_t;

struct ike_sa_t {
	void *get_id;
	void *get_version;
	uint32_t (*get_unique_id)(ike_sa_t *this);
	ike_sa_state_t (*get_state)(ike_sa_t *this);
	void *set_state;
	char *(*get_name)(ike_sa_t *this);
	void *get_statistic;
	void *set_statistic;
	host_t *(*get_my_host)(ike_sa_t *this);
	void *set_my_host;
	host_t *(*get_other_host)(ike_sa_t *this);
	/* later slots (ids, configs, ME block, ...) are not used */
};

typedef struct bus_t bus_t;

typedef struct listener_t listener_t;

/* listener_t (bus/listeners/listener.h): complete, because charon reads every slot of a
 * registered listener; NULL slots are skipped. Same 20 slots in 6.0.1 and 6.1.0. */
struct listener_t {
	void *alert;
	void *ike_state_change;
	void *child_state_change;
	void *message;
	void *ike_keys;
	void *ike_derived_keys;
	void *child_keys;
	void *child_derived_keys;
	bool (*ike_updown)(listener_t *this, ike_sa_t *ike_sa, bool up);
	bool (*ike_rekey)(listener_t *this, ike_sa_t *old, ike_sa_t *new);
	void *ike_update;
	void *ike_reestablish_pre;
	void *ike_reestablish_post;
	void *child_updown;
	void *child_rekey;
	void *children_migrate;
	void *authorize;
	void *narrow;
	void *assign_vips;
	void *handle_vips;
};

struct bus_t {
	void (*add_listener)(bus_t *this, listener_t *listener);
	void (*remove_listener)(bus_t *this, listener_t *listener);
	void *add_logger;
	void *remove_logger;
	void *set_sa;
	ike_sa_t *(*get_sa)(bus_t *this);
	/* log, vlog, alert, events ...: not used */
};

typedef struct daemon_t daemon_t;

struct daemon_t {
	void *socket;
	void *kernel;
	void *ike_sa_manager;
	void *child_sa_manager;
	void *traps;
	void *shunts;
	void *redirect;
	void *backends;
	void *sender;
	void *receiver;
	void *attributes;
	bus_t *bus;
	/* controller, eap, xauth, ME block, initialize, ...: not used */
};

/* ---- logging ------------------------------------------------------------------------- */

/* debug_t is an enum in strongSwan; its numbers differ by version, so none are declared here:
 * 6.0.1: CFG=5 ... LIB=17, MAX=18; 6.1.0 (>= 6.0.2): WCH=5 inserted, CFG=6 ... LIB=18, MAX=19
 * (the 6.1.0 values are checked by tests/abi/probe.c). */
typedef int debug_t;
typedef enum {
	LEVEL_SILENT = -1,
	LEVEL_AUDIT = 0,
	LEVEL_CTRL = 1,
	LEVEL_DIAG = 2,
	LEVEL_RAW = 3,
	LEVEL_PRIVATE = 4,
} level_t;

typedef void (*dbg_fn_t)(debug_t group, level_t level, char *fmt, ...);

#endif /* STRONGSWAN_QKD_ABI_H */
