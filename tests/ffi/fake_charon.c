/*
 * fake_charon: plays libstrongswan + libcharon around libstrongswan-qkd.so, so that
 * tests/ffi_charon.rs can drive the plugin's exported symbols and vtables exactly as charon
 * does (docs/strongswan-abi.md: "Loading: entry symbols and the version check", "Plugin
 * object and features", "Key exchange objects", "How strongSwan drives an exchange",
 * "Charon's globals") without a strongSwan installation.
 *
 * It exports the globals the plugin looks up with dlsym(RTLD_DEFAULT, ...) (link with
 * -rdynamic): `lib`, `dbg`, `charon`, `key_exchange_method_names`, `enum_add_enum_names`,
 * `enum_remove_enum_names` and, built with -DSTRONGSWAN_VERSION='"6.1.0"' (or any other
 * version), `library_init_register`. In that build the only version-shaped string in this
 * executable is STRONGSWAN_VERSION, as in a >= 6.0.2 libstrongswan; the plugin must find it
 * by reading the file that defines library_init_register. The >= 6.0.3 loader's version
 * check is emulated too, unless --no-version-check (6.0.2, or a constructor found through
 * RTLD_DEFAULT). Built without it, the fake plays 6.0.1: no library_init_register, no check.
 *
 * Usage: fake_charon PLUGIN.so SETTINGS MODE [--conn NAME] [--remote A.B.C.D]
 *                    [--reload-settings SETTINGS2] [--no-version-check] [--hold]
 *   SETTINGS: lines "full.key=value" (e.g. charon.plugins.qkd.sae_id=sae-a), '#' comments.
 *   MODE: initiator | responder (one role of one exchange, data as hex lines on
 *         stdin/stdout) | probe (defensive paths, reload, no KME traffic). --hold: print
 *         "HOLD reloading" before the reloads and "HOLD unloading" before the unload, and
 *         each time wait for a line (or EOF) on stdin, so that the test can watch what the
 *         loaded plugin does meanwhile (e.g. how many keys its key buffers fetch).
 *
 * stdout, one fact per line (tests/ffi_charon.rs asserts on them):
 *   version S      value of qkd_plugin_version after dlopen
 *   DH HEX         public value of the fake ECDH object the plugin created
 *   KE HEX         our KE data, to be passed to the peer (the peer's arrives as "KE HEX")
 *   SECRET HEX     the shared secret
 *   FAIL CALL      CALL returned FALSE / NULL (then cleanup continues, as charon's would)
 *   reload N       return value of plugin->reload
 *   ppk HEX        (mode ppk) the PPK the plugin's credential set gave for --ppk-id
 *   again N        (mode ppk) 1 if a second lookup of the same PPK_ID found a key
 *   ok - WHAT / not ok - WHAT   invariants checked here; any "not ok" makes the exit code 1
 * stderr: the plugin's log lines as "dbg[GROUP:LEVEL] text".
 * Exit codes: 0 done (even if the exchange failed), 1 an invariant failed, 2 usage or
 * environment error, 3 the plugin refused to load.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "strongswan_abi.h"

/* The layouts charon and we must agree on (docs/strongswan-abi.md); tests/abi checks the
 * header against real strongSwan, this guards the fake against header edits. */
_Static_assert(sizeof(chunk_t) == 16, "chunk_t");
_Static_assert(sizeof(key_exchange_t) == 48, "key_exchange_t has 6 slots");
_Static_assert(sizeof(plugin_t) == 32, "plugin_t");
_Static_assert(sizeof(plugin_feature_t) == 24, "plugin_feature_t");
_Static_assert(offsetof(plugin_feature_t, arg) == 8, "plugin_feature_t.arg");
_Static_assert(offsetof(plugin_feature_t, arg.reg.f) == 16, "plugin_feature_t.arg.reg.f");
_Static_assert(sizeof(library_t) == 200, "library_t");
_Static_assert(offsetof(library_t, settings) == 0xb0, "lib->settings");
_Static_assert(offsetof(crypto_factory_t, create_ke) == 0x50, "crypto->create_ke");
_Static_assert(offsetof(daemon_t, bus) == 0x58, "charon->bus");
_Static_assert(offsetof(bus_t, get_sa) == 0x28, "bus->get_sa");
_Static_assert(offsetof(ike_sa_t, get_name) == 0x28, "ike_sa->get_name");
_Static_assert(offsetof(ike_sa_t, get_other_host) == 0x50, "ike_sa->get_other_host");

static const chunk_t chunk_empty = { NULL, 0 };

/* ---- invariants ------------------------------------------------------------------------ */

static int failed_checks;

static void check(bool ok, const char *fmt, ...)
{
	va_list args;

	printf(ok ? "ok - " : "not ok - ");
	va_start(args, fmt);
	vprintf(fmt, args);
	va_end(args);
	printf("\n");
	fflush(stdout);
	if (!ok)
	{
		failed_checks++;
	}
}

static void fact(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vprintf(fmt, args);
	va_end(args);
	printf("\n");
	fflush(stdout);
}

static void die(const char *what)
{
	fprintf(stderr, "fake_charon: %s\n", what);
	exit(2);
}

static void print_hex(const char *tag, chunk_t c)
{
	printf("%s ", tag);
	for (size_t i = 0; i < c.len; i++)
	{
		printf("%02x", c.ptr[i]);
	}
	printf("\n");
	fflush(stdout);
}

/* charon frees returned chunks with chunk_free (public values) or chunk_clear (secrets). */
static void chunk_free(chunk_t *c)
{
	free(c->ptr);
	*c = chunk_empty;
}

static void chunk_clear(chunk_t *c)
{
	if (c->ptr)
	{
		memset(c->ptr, 0, c->len);
	}
	chunk_free(c);
}

static bool chunk_equals(chunk_t a, chunk_t b)
{
	return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* ---- dbg ------------------------------------------------------------------------------- */

#ifdef STRONGSWAN_VERSION
/* >= 6.0.2: DBG_WCH inserted at 5 */
static const char *group_names[] = { "DMN", "MGR", "IKE", "CHD", "JOB", "WCH", "CFG", "KNL", "NET",
	"ASN", "ENC", "TNC", "IMC", "IMV", "PTS", "TLS", "APP", "ESP", "LIB" };
#else
static const char *group_names[] = { "DMN", "MGR", "IKE", "CHD", "JOB", "CFG", "KNL", "NET", "ASN",
	"ENC", "TNC", "IMC", "IMV", "PTS", "TLS", "APP", "ESP", "LIB" };
#endif
#define GROUP_COUNT ((int)(sizeof(group_names) / sizeof(group_names[0])))

static void fake_dbg(debug_t group, level_t level, char *fmt, ...)
{
	va_list args;

	if (group >= 0 && group < GROUP_COUNT)
	{
		fprintf(stderr, "dbg[%s:%d] ", group_names[group], level);
	}
	else
	{
		fprintf(stderr, "dbg[?%d:%d] ", group, level);
	}
	va_start(args, fmt);
	vfprintf(stderr, fmt, args);
	va_end(args);
	fprintf(stderr, "\n");
}

dbg_fn_t dbg = fake_dbg;

#ifdef STRONGSWAN_VERSION
/* The running version; the >= 6.0.3 loader compares it with <name>_plugin_version. */
static const char VERSION[] = STRONGSWAN_VERSION;

/* Exported only by >= 6.0.2; the plugin locates libstrongswan's file through it. */
void library_init_register(void *init)
{
	(void)init;
}
#endif

/* ---- enum names ------------------------------------------------------------------------ */

static struct {
	int64_t first;
	int64_t last;
	enum_name_t *next;
	char *names[1];
} curve_names = { CURVE_25519, CURVE_25519, NULL, { "CURVE_25519" } };

enum_name_t *key_exchange_method_names = (enum_name_t*)&curve_names;

static int enum_add_calls, enum_remove_calls;
static enum_name_t *enum_added, *enum_removed;

/* As libstrongswan: append to the chain (the plugin's entry must come with next = NULL). */
void enum_add_enum_names(enum_name_t *e, enum_name_t *names)
{
	enum_add_calls++;
	enum_added = names;
	check(e == key_exchange_method_names, "enum_add_enum_names on key_exchange_method_names");
	check(names && names->next == NULL, "added enum names start with next = NULL");
	while (e->next)
	{
		e = e->next;
	}
	e->next = names;
}

void enum_remove_enum_names(enum_name_t *e, enum_name_t *names)
{
	enum_remove_calls++;
	enum_removed = names;
	for (; e && e->next; e = e->next)
	{
		if (e->next == names)
		{
			e->next = names->next;
			return;
		}
	}
	check(false, "enum_remove_enum_names: names were in the list");
}

/* %N's lookup */
static const char *enum_to_name(enum_name_t *e, int64_t value)
{
	for (; e; e = e->next)
	{
		if (value >= e->first && value <= e->last)
		{
			return e->names[value - e->first];
		}
	}
	return NULL;
}

/* ---- settings -------------------------------------------------------------------------- */

#define MAX_SETTINGS 64

typedef struct {
	int count;
	char *keys[MAX_SETTINGS];
	char *values[MAX_SETTINGS];
} table_t;

static table_t table;

static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
	{
		s++;
	}
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
	{
		*--end = '\0';
	}
	return s;
}

static void free_table(table_t *t)
{
	for (int i = 0; i < t->count; i++)
	{
		free(t->keys[i]);
		free(t->values[i]);
	}
	t->count = 0;
}

static void load_table(table_t *t, const char *path)
{
	char *line = NULL, *eq;
	size_t size = 0;
	FILE *f = fopen(path, "r");

	if (!f)
	{
		die("cannot open the settings file");
	}
	free_table(t);
	while (getline(&line, &size, f) != -1)
	{
		char *l = trim(line);

		if (!*l || *l == '#')
		{
			continue;
		}
		eq = strchr(l, '=');
		if (!eq || t->count == MAX_SETTINGS)
		{
			die("bad settings line (want key=value) or too many settings");
		}
		*eq = '\0';
		t->keys[t->count] = strdup(trim(l));
		t->values[t->count] = strdup(trim(eq + 1));
		t->count++;
	}
	free(line);
	fclose(f);
}

static char *lookup(const char *key)
{
	for (int i = 0; i < table.count; i++)
	{
		if (strcmp(table.keys[i], key) == 0)
		{
			return table.values[i];
		}
	}
	return NULL;
}

static char *settings_get_str(settings_t *this, char *key, char *def, ...)
{
	char buf[512];
	va_list args;
	char *value;

	(void)this;
	va_start(args, def);
	vsnprintf(buf, sizeof(buf), key, args);
	va_end(args);
	value = lookup(buf);
	return value ? value : def;
}

/* As settings_value_as_bool(): yes/true/enabled/1, no/false/disabled/0, else the default. */
static bool settings_get_bool(settings_t *this, char *key, int def, ...)
{
	static const char *yes[] = { "1", "yes", "true", "enabled" };
	static const char *no[] = { "0", "no", "false", "disabled" };
	char buf[512];
	va_list args;
	char *value;

	(void)this;
	va_start(args, def);
	vsnprintf(buf, sizeof(buf), key, args);
	va_end(args);
	value = lookup(buf);
	for (size_t i = 0; value && i < sizeof(yes) / sizeof(yes[0]); i++)
	{
		if (strcasecmp(value, yes[i]) == 0)
		{
			return true;
		}
		if (strcasecmp(value, no[i]) == 0)
		{
			return false;
		}
	}
	return def;
}

typedef struct {
	enumerator_t public;
	char **names;
	int count;
	int pos;
} section_enumerator_t;

static bool section_enumerate(enumerator_t *public, ...)
{
	section_enumerator_t *this = (section_enumerator_t*)public;
	va_list args;
	char **out;

	if (this->pos >= this->count)
	{
		return false;
	}
	va_start(args, public);
	out = va_arg(args, char**);
	va_end(args);
	*out = this->names[this->pos++];
	return true;
}

static void section_destroy(enumerator_t *public)
{
	section_enumerator_t *this = (section_enumerator_t*)public;

	for (int i = 0; i < this->count; i++)
	{
		free(this->names[i]);
	}
	free(this->names);
	free(this);
}

/* The distinct names of the subsections of the formatted section, in file order. */
static enumerator_t *settings_create_section_enumerator(settings_t *this, char *section, ...)
{
	section_enumerator_t *e = calloc(1, sizeof(*e));
	char prefix[512];
	size_t plen;
	va_list args;

	(void)this;
	va_start(args, section);
	vsnprintf(prefix, sizeof(prefix) - 1, section, args);
	va_end(args);
	strcat(prefix, ".");
	plen = strlen(prefix);
	e->names = calloc(MAX_SETTINGS, sizeof(char*));
	for (int i = 0; i < table.count; i++)
	{
		const char *rest = table.keys[i] + plen, *dot;
		bool seen = false;

		if (strncmp(table.keys[i], prefix, plen) != 0 || !(dot = strchr(rest, '.')))
		{
			continue;
		}
		for (int j = 0; j < e->count; j++)
		{
			seen |= strlen(e->names[j]) == (size_t)(dot - rest) &&
					strncmp(e->names[j], rest, dot - rest) == 0;
		}
		if (!seen)
		{
			e->names[e->count++] = strndup(rest, dot - rest);
		}
	}
	e->public.enumerate = section_enumerate;
	e->public.destroy = section_destroy;
	return &e->public;
}

static settings_t settings = {
	.get_str = settings_get_str,
	.get_bool = settings_get_bool,
	.create_section_enumerator = settings_create_section_enumerator,
};

/* ---- proposal keywords ----------------------------------------------------------------- */

static int tokens_registered;
static char *token_name;
static int token_type;
static uint16_t token_alg, token_keysize;

static void register_token(proposal_keywords_t *this, const char *name, transform_type_t type,
						   uint16_t algorithm, uint16_t keysize)
{
	(void)this;
	tokens_registered++;
	free(token_name);
	token_name = strdup(name); /* libstrongswan copies it too */
	token_type = type;
	token_alg = algorithm;
	token_keysize = keysize;
}

static proposal_keywords_t proposal = {
	.register_token = register_token,
};

/* ---- crypto factory with a toy ECDH ---------------------------------------------------- */

/* Not a real ECDH: public = 32 random bytes, shared = own XOR peer (symmetric, so both peers
 * agree and the test can recompute it from the two "DH" lines). */
typedef struct {
	key_exchange_t public;
	u_char own[32];
	u_char peer[32];
	bool have_peer;
} fake_dh_t;

static int dh_created, dh_destroyed;

static bool dh_get_public_key(key_exchange_t *public, chunk_t *value)
{
	fake_dh_t *this = (fake_dh_t*)public;

	value->ptr = malloc(32);
	value->len = 32;
	memcpy(value->ptr, this->own, 32);
	return true;
}

static bool dh_set_public_key(key_exchange_t *public, chunk_t value)
{
	fake_dh_t *this = (fake_dh_t*)public;

	if (value.len != 32)
	{
		return false;
	}
	memcpy(this->peer, value.ptr, 32);
	this->have_peer = true;
	return true;
}

static bool dh_get_shared_secret(key_exchange_t *public, chunk_t *secret)
{
	fake_dh_t *this = (fake_dh_t*)public;

	if (!this->have_peer)
	{
		return false;
	}
	secret->ptr = malloc(32);
	secret->len = 32;
	for (int i = 0; i < 32; i++)
	{
		secret->ptr[i] = this->own[i] ^ this->peer[i];
	}
	return true;
}

static key_exchange_method_t dh_get_method(key_exchange_t *public)
{
	(void)public;
	return CURVE_25519;
}

static void dh_destroy(key_exchange_t *public)
{
	memset(public, 0, sizeof(fake_dh_t));
	free(public);
	dh_destroyed++;
}

static key_exchange_t *fake_dh_create(void)
{
	fake_dh_t *this = calloc(1, sizeof(*this));
	FILE *f = fopen("/dev/urandom", "r");

	if (!f || fread(this->own, 1, 32, f) != 32)
	{
		die("/dev/urandom");
	}
	fclose(f);
	this->public = (key_exchange_t){
		.get_shared_secret = dh_get_shared_secret,
		.set_public_key = dh_set_public_key,
		.get_public_key = dh_get_public_key,
		.get_method = dh_get_method,
		.destroy = dh_destroy,
	};
	dh_created++;
	print_hex("DH", (chunk_t){ this->own, 32 });
	return &this->public;
}

/* What the plugin loader registered through add_ke (one entry: the plugin's). */
static key_exchange_method_t registered_method;
static ke_constructor_t registered_constructor;
static pthread_rwlock_t factory_lock = PTHREAD_RWLOCK_INITIALIZER;

/* As crypto_factory_t.create_ke: under the factory's read lock, calls the registered
 * constructor as create(method, g, p); the plugin's nested create_ke(CURVE_25519) takes the
 * read lock recursively, as in charon. */
static key_exchange_t *create_ke(crypto_factory_t *this, key_exchange_method_t method, ...)
{
	key_exchange_t *ke = NULL;

	(void)this;
	pthread_rwlock_rdlock(&factory_lock);
	if (method == CURVE_25519)
	{
		ke = fake_dh_create();
	}
	else if (registered_constructor && method == registered_method)
	{
		ke = registered_constructor(method, chunk_empty, chunk_empty);
	}
	pthread_rwlock_unlock(&factory_lock);
	return ke;
}

static crypto_factory_t crypto = {
	.create_ke = create_ke,
};

/* ---- credentials: the manager, mem_cred_t, shared keys, identities, enumerators ---------- */

/* As libstrongswan's shared_key.c: the key is wiped when the last reference goes. */
struct shared_key_t {
	chunk_t key;
};

static int shared_keys_created, shared_keys_destroyed;

shared_key_t *shared_key_create(shared_key_type_t type, chunk_t key)
{
	shared_key_t *this = malloc(sizeof(*this));

	check(type == SHARED_PPK, "shared_key_create(SHARED_PPK, ...)");
	this->key = key;
	shared_keys_created++;
	return this;
}

static void shared_key_destroy(shared_key_t *this)
{
	memset(this->key.ptr, 0, this->key.len);
	free(this->key.ptr);
	free(this);
	shared_keys_destroyed++;
}

/* identification_t: an FQDN-like identity, its encoding the text */
typedef struct {
	identification_t public;
	chunk_t encoding;
} fake_id_t;

static int ids_alive;

static chunk_t id_get_encoding(identification_t *this)
{
	return ((fake_id_t *)this)->encoding;
}

static identification_t *id_create(const char *text);

static identification_t *id_clone(identification_t *this)
{
	fake_id_t *id = (fake_id_t *)this;
	char buf[128];

	snprintf(buf, sizeof(buf), "%.*s", (int)id->encoding.len, id->encoding.ptr);
	return id_create(buf);
}

static void id_destroy(identification_t *this)
{
	free(((fake_id_t *)this)->encoding.ptr);
	free(this);
	ids_alive--;
}

static identification_t *id_create(const char *text)
{
	fake_id_t *this = calloc(1, sizeof(*this));

	this->public.get_encoding = id_get_encoding;
	this->public.clone = id_clone;
	this->public.destroy = id_destroy;
	this->encoding.len = strlen(text);
	this->encoding.ptr = (u_char *)strdup(text);
	ids_alive++;
	return &this->public;
}

static bool id_equals(identification_t *a, identification_t *b)
{
	chunk_t x = a->get_encoding(a), y = b->get_encoding(b);

	return x.len == y.len && memcmp(x.ptr, y.ptr, x.len) == 0;
}

/* enumerator.c: enumerate() passes its varargs on to venumerate(va_list) */
typedef bool (*venumerate_t)(enumerator_t *this, va_list args);

static bool enumerate_default(enumerator_t *this, ...)
{
	va_list args;
	bool ok;

	va_start(args, this);
	ok = ((venumerate_t)this->venumerate)(this, args);
	va_end(args);
	return ok;
}

/* mem_cred_t holding at most one shared key and its first owner; its enumerator yields
 * (shared_key_t *, id_match_t *me, id_match_t *other) as mem_cred.c's shared_filter. */
typedef struct {
	mem_cred_t public;
	shared_key_t *shared;
	identification_t *owner;
} fake_mem_cred_t;

typedef struct {
	enumerator_t public;
	fake_mem_cred_t *mem;
	identification_t *me;
	bool done;
} mem_cred_enumerator_t;

static int mem_creds_alive, mem_cred_enumerators_alive;

static bool mem_cred_venumerate(enumerator_t *this, va_list args)
{
	mem_cred_enumerator_t *e = (mem_cred_enumerator_t *)this;
	shared_key_t **out = va_arg(args, shared_key_t **);
	int *me = va_arg(args, int *), *other = va_arg(args, int *);
	int match = 0;

	if (e->done || !e->mem->shared)
	{
		return false;
	}
	e->done = true;
	if (e->me)
	{
		if (!e->mem->owner || !id_equals(e->mem->owner, e->me))
		{
			return false;
		}
		match = 20; /* ID_MATCH_PERFECT */
	}
	*out = e->mem->shared;
	if (me)
	{
		*me = match;
	}
	if (other)
	{
		*other = 0;
	}
	return true;
}

static void mem_cred_enumerator_destroy(enumerator_t *this)
{
	free(this);
	mem_cred_enumerators_alive--;
}

static enumerator_t *mem_cred_create_shared_enumerator(credential_set_t *set,
		shared_key_type_t type, identification_t *me, identification_t *other)
{
	mem_cred_enumerator_t *e = calloc(1, sizeof(*e));

	(void)other;
	check(type == SHARED_PPK, "mem_cred enumerates SHARED_PPK");
	e->public.enumerate = enumerate_default;
	e->public.venumerate = (void *)mem_cred_venumerate;
	e->public.destroy = mem_cred_enumerator_destroy;
	e->mem = (fake_mem_cred_t *)set;
	e->me = me;
	mem_cred_enumerators_alive++;
	return &e->public;
}

static void mem_cred_add_shared(mem_cred_t *this, shared_key_t *shared, ...)
{
	fake_mem_cred_t *mem = (fake_mem_cred_t *)this;
	identification_t *owner;
	va_list args;

	va_start(args, shared);
	while ((owner = va_arg(args, identification_t *)))
	{
		if (mem->owner)
		{
			owner->destroy(owner);
		}
		else
		{
			mem->owner = owner;
		}
	}
	va_end(args);
	mem->shared = shared;
}

static void mem_cred_destroy(mem_cred_t *this)
{
	fake_mem_cred_t *mem = (fake_mem_cred_t *)this;

	check(mem_cred_enumerators_alive == 0, "no enumerator of a mem_cred_t outlives it");
	if (mem->shared)
	{
		shared_key_destroy(mem->shared);
	}
	if (mem->owner)
	{
		mem->owner->destroy(mem->owner);
	}
	free(mem);
	mem_creds_alive--;
}

mem_cred_t *mem_cred_create(void)
{
	fake_mem_cred_t *this = calloc(1, sizeof(*this));

	this->public.set.create_shared_enumerator = mem_cred_create_shared_enumerator;
	this->public.add_shared = mem_cred_add_shared;
	this->public.destroy = mem_cred_destroy;
	mem_creds_alive++;
	return &this->public;
}

/* enumerator.c's single and nested enumerators, destroy order included */
typedef struct {
	enumerator_t public;
	void *item;
	void (*cleanup)(void *item);
	bool done;
} single_enumerator_t;

static bool single_venumerate(enumerator_t *this, va_list args)
{
	single_enumerator_t *e = (single_enumerator_t *)this;
	void **item = va_arg(args, void **);

	if (e->done)
	{
		return false;
	}
	*item = e->item;
	e->done = true;
	return true;
}

static void single_destroy(enumerator_t *this)
{
	single_enumerator_t *e = (single_enumerator_t *)this;

	if (e->cleanup)
	{
		e->cleanup(e->item);
	}
	free(e);
}

enumerator_t *enumerator_create_single(void *item, void (*cleanup)(void *item))
{
	single_enumerator_t *e = calloc(1, sizeof(*e));

	e->public.enumerate = enumerate_default;
	e->public.venumerate = (void *)single_venumerate;
	e->public.destroy = single_destroy;
	e->item = item;
	e->cleanup = cleanup;
	return &e->public;
}

typedef struct {
	enumerator_t public;
	enumerator_t *outer, *inner;
	enumerator_t *(*create_inner)(void *outer, void *data);
	void *data;
	void (*destructor)(void *data);
} nested_enumerator_t;

static bool nested_venumerate(enumerator_t *this, va_list args)
{
	nested_enumerator_t *e = (nested_enumerator_t *)this;

	while (true)
	{
		while (!e->inner)
		{
			void *outer;

			if (!e->outer->enumerate(e->outer, &outer))
			{
				return false;
			}
			e->inner = e->create_inner(outer, e->data);
		}
		if (((venumerate_t)e->inner->venumerate)(e->inner, args))
		{
			return true;
		}
		e->inner->destroy(e->inner);
		e->inner = NULL;
	}
}

static void nested_destroy(enumerator_t *this)
{
	nested_enumerator_t *e = (nested_enumerator_t *)this;

	if (e->destructor)
	{
		e->destructor(e->data);
	}
	if (e->inner)
	{
		e->inner->destroy(e->inner);
	}
	e->outer->destroy(e->outer);
	free(e);
}

enumerator_t *enumerator_create_nested(enumerator_t *outer,
		enumerator_t *(*inner_constructor)(void *outer, void *data), void *data,
		void (*destructor)(void *data))
{
	nested_enumerator_t *e = calloc(1, sizeof(*e));

	e->public.enumerate = enumerate_default;
	e->public.venumerate = (void *)nested_venumerate;
	e->public.destroy = nested_destroy;
	e->outer = outer;
	e->create_inner = inner_constructor;
	e->data = data;
	e->destructor = destructor;
	return &e->public;
}

/* credential_manager.c: the plugin's set, while registered */
static credential_set_t *credential_set;
static int sets_added, sets_removed;

static void credmgr_add_set(credential_manager_t *this, credential_set_t *set)
{
	(void)this;
	credential_set = set;
	sets_added++;
}

static void credmgr_remove_set(credential_manager_t *this, credential_set_t *set)
{
	(void)this;
	if (set == credential_set)
	{
		credential_set = NULL;
		sets_removed++;
	}
}

static credential_manager_t credmgr = {
	.add_set = credmgr_add_set,
	.remove_set = credmgr_remove_set,
};

/* credential_manager.c's get_shared over our one set: the best match, a reference kept
 * (here: the key copied out, as ike_auth.c clones it) */
static bool get_shared_ppk(identification_t *me, chunk_t *out)
{
	enumerator_t *e;
	shared_key_t *key;
	int match_me = -1, match_other = -1;
	bool found = false;

	e = credential_set->create_shared_enumerator(credential_set, SHARED_PPK, me, NULL);
	if (!e)
	{
		return false;
	}
	if (e->enumerate(e, &key, &match_me, &match_other))
	{
		check(!me || match_me == 20, "the PPK matches its PPK_ID perfectly");
		check(match_other == 0, "no other identity was asked for");
		out->len = key->key.len;
		out->ptr = malloc(out->len);
		memcpy(out->ptr, key->key.ptr, out->len);
		found = true;
	}
	e->destroy(e);
	return found;
}

/* ike_init.c's send_use_ppk and ike_auth.c's get_ppk_r, against the plugin's set */
static void ppk_lookups(const char *ppk_id)
{
	identification_t *id = id_create(ppk_id);
	void *(*slot)(void);
	chunk_t key = { NULL, 0 };

	check(credential_set != NULL, "the plugin registers a credential set");
	if (!credential_set)
	{
		return;
	}
	slot = (void *(*)(void))credential_set->create_private_enumerator;
	check(slot && slot() == NULL, "no private keys from the set");
	slot = (void *(*)(void))credential_set->create_cert_enumerator;
	check(slot && slot() == NULL, "no certificates from the set");
	slot = (void *(*)(void))credential_set->create_cdp_enumerator;
	check(slot && slot() == NULL, "no CDPs from the set");
	((void (*)(void))credential_set->cache_cert)();
	check(credential_set->create_shared_enumerator(credential_set, SHARED_ANY + 1, id, NULL) == NULL,
		  "no IKE PSK from the set");
	check(get_shared_ppk(NULL, &key), "a PPK exists (USE_PPK is sent)");
	free(key.ptr);
	if (get_shared_ppk(id, &key))
	{
		print_hex("ppk", key);
		memset(key.ptr, 0, key.len);
		free(key.ptr);
	}
	check(mem_creds_alive == 1 && mem_cred_enumerators_alive == 0,
		  "the lookup's mem_cred_t and enumerators are gone, the placeholder stays");
	fact("again %d", get_shared_ppk(id, &key));
	id->destroy(id);
}

/* ---- library_t, daemon_t ----------------------------------------------------------------- */

/* processor.c: queued jobs run once the worker threads exist (charon->start, after the
 * privileges were dropped); see run_queued_jobs(). */
static job_t *queued_jobs[4];
static int queued_count, jobs_destroyed;

static void processor_queue_job(processor_t *this, job_t *job)
{
	(void)this;
	if (queued_count < 4)
	{
		queued_jobs[queued_count++] = job;
	}
}

static processor_t processor = {
	.queue_job = processor_queue_job,
};

static void run_queued_jobs(void)
{
	for (int i = 0; i < queued_count; i++)
	{
		job_requeue_t requeue = queued_jobs[i]->execute(queued_jobs[i]);

		check(requeue.type == JOB_REQUEUE_TYPE_NONE, "the start job runs once (JOB_REQUEUE_NONE)");
		check(queued_jobs[i]->get_priority(queued_jobs[i]) == JOB_PRIO_MEDIUM,
			  "the start job has medium priority");
		queued_jobs[i]->destroy(queued_jobs[i]);
		jobs_destroyed++;
	}
	queued_count = 0;
}

static library_t fake_lib = {
	.ns = "charon",
	.processor = &processor,
	.proposal = &proposal,
	.crypto = &crypto,
	.settings = &settings,
	.credmgr = &credmgr,
};

library_t *lib = &fake_lib;

static u_char remote_addr[4] = { 192, 0, 2, 99 };
static char *connection_name = "(unnamed)";

static int host_get_family(host_t *this)
{
	(void)this;
	return AF_INET;
}

static chunk_t host_get_address(host_t *this)
{
	(void)this;
	return (chunk_t){ remote_addr, sizeof(remote_addr) };
}

static host_t other_host = {
	.get_family = host_get_family,
	.get_address = host_get_address,
};

static char *ike_sa_get_name(ike_sa_t *this)
{
	(void)this;
	return connection_name;
}

static host_t *ike_sa_get_other_host(ike_sa_t *this)
{
	(void)this;
	return &other_host;
}

static uint32_t ike_sa_get_unique_id(ike_sa_t *this)
{
	(void)this;
	return 1;
}

static ike_sa_t ike_sa = {
	.get_unique_id = ike_sa_get_unique_id,
	.get_name = ike_sa_get_name,
	.get_other_host = ike_sa_get_other_host,
};

static ike_sa_t *bus_get_sa(bus_t *this)
{
	(void)this;
	return &ike_sa;
}

/* bus.c: the plugin's listener, while registered */
static listener_t *listener;
static int listeners_added, listeners_removed;

static void bus_add_listener(bus_t *this, listener_t *l)
{
	(void)this;
	listener = l;
	listeners_added++;
}

static void bus_remove_listener(bus_t *this, listener_t *l)
{
	(void)this;
	if (l == listener)
	{
		listener = NULL;
		listeners_removed++;
	}
}

static bus_t bus = {
	.add_listener = bus_add_listener,
	.remove_listener = bus_remove_listener,
	.get_sa = bus_get_sa,
};

static daemon_t fake_daemon = {
	.bus = &bus,
};

daemon_t *charon = &fake_daemon;

/* ---- plugin loading (plugin_loader.c) --------------------------------------------------- */

static int configured_method(void)
{
	char *v = lookup("charon.plugins.qkd.method_id");

	return v ? atoi(v) : 1042;
}

static plugin_feature_t expected_feature(plugin_feature_kind_t kind, int ke, void *f)
{
	plugin_feature_t e;

	memset(&e, 0, sizeof(e)); /* the PLUGIN_* macros leave unused bytes zero */
	e.kind = kind;
	e.type = FEATURE_KE;
	if (kind == FEATURE_REGISTER)
	{
		e.arg.reg.final = false;
		e.arg.reg.f = f;
	}
	else
	{
		e.arg.ke = ke;
	}
	return e;
}

/* get_name, get_features; then loads the features the way the plugin loader does. */
static void load_features(plugin_t *plugin, int method)
{
	plugin_feature_t *features = NULL;
	char *name = plugin->get_name(plugin);
	int count;

	check(name && strcmp(name, "qkd") == 0, "get_name is \"qkd\"");
	check(name == plugin->get_name(plugin), "get_name returns a static string");
	count = plugin->get_features(plugin, &features);
	check(count == 3 && features, "get_features returns 3 features (got %d)", count);
	if (count != 3 || !features)
	{
		return;
	}
	{
		plugin_feature_t reg = expected_feature(FEATURE_REGISTER, 0, features[0].arg.reg.f);
		plugin_feature_t provide = expected_feature(FEATURE_PROVIDE, method, NULL);
		plugin_feature_t depends = expected_feature(FEATURE_DEPENDS, CURVE_25519, NULL);

		check(memcmp(&features[0], &reg, sizeof(reg)) == 0 && features[0].arg.reg.f,
			  "feature 0 is PLUGIN_REGISTER(KE, constructor)");
		check(memcmp(&features[1], &provide, sizeof(provide)) == 0,
			  "feature 1 is PLUGIN_PROVIDE(KE, %d) (kind %d type %d ke %d)", method,
			  features[1].kind, features[1].type, features[1].arg.ke);
		check(memcmp(&features[2], &depends, sizeof(depends)) == 0,
			  "feature 2 is PLUGIN_DEPENDS(KE, CURVE_25519)");
	}
	{
		plugin_feature_t *again = NULL;

		check(plugin->get_features(plugin, &again) == count && again == features,
			  "the feature array stays in place (the loader keeps pointers into it)");
	}
	/* DEPENDS(KE, 31) is met (create_ke provides CURVE_25519); loading PROVIDE(KE, id) is
	 * lib->crypto->add_ke(crypto, id, "qkd", reg.f). */
	registered_method = features[1].arg.ke;
	registered_constructor = (ke_constructor_t)features[0].arg.reg.f;
}

/* Unloading: remove_ke (the constructor leaves the factory), then plugin->destroy. */
static void unload(plugin_t *plugin)
{
	ke_constructor_t constructor = registered_constructor;
	enum_name_t *added = enum_added;

	pthread_rwlock_wrlock(&factory_lock);
	registered_constructor = NULL;
	pthread_rwlock_unlock(&factory_lock);
	plugin->destroy(plugin);
	check(listeners_added == 1 && listeners_removed == 1 && !listener,
		  "plugin destroy removes the one listener it added");
	check(enum_remove_calls == 1 && enum_removed == added,
		  "plugin destroy calls enum_remove_enum_names with the names it added");
	check(enum_to_name(key_exchange_method_names, registered_method) == NULL,
		  "after destroy the method has no name");
	check(sets_added == 1 && sets_removed == 1 && !credential_set,
		  "plugin destroy removes the credential set it added");
	check(mem_creds_alive == 0 && shared_keys_created == shared_keys_destroyed,
		  "every mem_cred_t and shared key the plugin made is destroyed");
	if (constructor)
	{
		check(constructor(registered_method, chunk_empty, chunk_empty) == NULL,
			  "the constructor returns NULL once the plugin is destroyed");
	}
}

/* ---- one role of an exchange ----------------------------------------------------------- */

/* Reads the peer's "KE HEX" line; false on EOF (the peer failed and sent nothing). */
static bool read_peer_ke(chunk_t *out)
{
	char *line = NULL;
	size_t size = 0;
	ssize_t n = getline(&line, &size, stdin);
	char *hex;

	if (n < 0)
	{
		free(line);
		return false;
	}
	hex = trim(line);
	if (strncmp(hex, "KE ", 3) != 0)
	{
		die("expected a \"KE HEX\" line on stdin");
	}
	hex += 3;
	out->len = strlen(hex) / 2;
	out->ptr = malloc(out->len + 1);
	for (size_t i = 0; i < out->len; i++)
	{
		unsigned int byte;

		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
		{
			die("bad hex on stdin");
		}
		out->ptr[i] = byte;
	}
	free(line);
	return true;
}

typedef struct {
	key_exchange_t *ke;
	chunk_t first, second;
	bool ok_first, ok_second;
} secret_job_t;

/* charon calls get_shared_secret from another worker thread than set/get_public_key
 * (docs/strongswan-abi.md, "Key exchange objects"); bus listeners may call it again. */
static void *get_secrets(void *data)
{
	secret_job_t *job = data;

	job->ok_first = job->ke->get_shared_secret(job->ke, &job->first);
	job->ok_second = job->ke->get_shared_secret(job->ke, &job->second);
	return NULL;
}

static void shared_secret(key_exchange_t *ke)
{
	secret_job_t job = { .ke = ke };
	pthread_t thread;

	if (pthread_create(&thread, NULL, get_secrets, &job) != 0 || pthread_join(thread, NULL) != 0)
	{
		die("pthread");
	}
	if (!job.ok_first)
	{
		fact("FAIL get_shared_secret");
		return;
	}
	check(job.ok_second && chunk_equals(job.first, job.second),
		  "get_shared_secret is idempotent (same secret twice)");
	print_hex("SECRET", job.first);
	chunk_clear(&job.first);
	chunk_clear(&job.second);
}

static void initiator(int method)
{
	key_exchange_t *ke = lib->crypto->create_ke(lib->crypto, method);
	chunk_t value = chunk_empty, again = chunk_empty, peer;

	if (!ke)
	{
		fact("FAIL create_ke");
		return;
	}
	if (!ke->get_public_key(ke, &value))
	{
		/* charon: "creating KE payload failed", the IKE SA is destroyed */
		fact("FAIL get_public_key");
		ke->destroy(ke);
		return;
	}
	/* A COOKIE or INVALID_KE retry asks the same object again: no new KME request. */
	check(ke->get_public_key(ke, &again) && chunk_equals(value, again) && value.ptr != again.ptr,
		  "get_public_key is idempotent and returns a fresh copy");
	check(ke->get_method(ke) == (key_exchange_method_t)method, "get_method is %d", method);
	print_hex("KE", value);
	chunk_free(&value);
	chunk_free(&again);

	if (!read_peer_ke(&peer))
	{
		fact("NO_PEER_KE");
		ke->destroy(ke);
		return;
	}
	if (!ke->set_public_key(ke, peer))
	{
		/* charon: "applying key exchange public value failed", SA destroyed */
		fact("FAIL set_public_key");
		check(!ke->get_shared_secret(ke, &value), "no shared secret after a failed exchange");
	}
	else
	{
		shared_secret(ke);
	}
	chunk_free(&peer);
	ke->destroy(ke);
}

static void responder(int method)
{
	key_exchange_t *ke;
	chunk_t peer, value = chunk_empty, again = chunk_empty;

	if (!read_peer_ke(&peer))
	{
		fact("NO_PEER_KE");
		return;
	}
	ke = lib->crypto->create_ke(lib->crypto, method);
	if (!ke)
	{
		fact("FAIL create_ke");
		chunk_free(&peer);
		return;
	}
	/* KEM order: set_public_key (request), then get_public_key (response). */
	if (!ke->set_public_key(ke, peer))
	{
		/* charon: "applying KE public value failed", NO_PROPOSAL_CHOSEN */
		fact("FAIL set_public_key");
		chunk_free(&peer);
		ke->destroy(ke);
		return;
	}
	/* charon passes a borrowed chunk: the plugin must have copied what it needs */
	memset(peer.ptr, 0xAA, peer.len);
	chunk_free(&peer);
	if (!ke->get_public_key(ke, &value))
	{
		fact("FAIL get_public_key");
		ke->destroy(ke);
		return;
	}
	check(ke->get_public_key(ke, &again) && chunk_equals(value, again) && value.ptr != again.ptr,
		  "get_public_key is idempotent and returns a fresh copy");
	check(ke->get_method(ke) == (key_exchange_method_t)method, "get_method is %d", method);
	print_hex("KE", value);
	chunk_free(&value);
	chunk_free(&again);
	shared_secret(ke);
	ke->destroy(ke);
}

/* ---- defensive paths ------------------------------------------------------------------- */

/* --hold: says what comes next and waits for the test's go (a line, or EOF). */
static void hold_until(bool hold, const char *next)
{
	int c;

	if (!hold)
	{
		return;
	}
	fact("HOLD %s", next);
	do
	{
		c = getchar();
	}
	while (c != EOF && c != '\n');
}

static void probe(plugin_t *plugin, int method, const char *reload_settings, bool hold)
{
	u_char garbage[] = "this is not KE data";
	chunk_t out = chunk_empty;
	key_exchange_t *ke;

	check(registered_constructor(method + 1, chunk_empty, chunk_empty) == NULL,
		  "the constructor returns NULL for another method");
	check(registered_constructor(CURVE_25519, chunk_empty, chunk_empty) == NULL,
		  "the constructor returns NULL for CURVE_25519");

	ke = lib->crypto->create_ke(lib->crypto, method);
	check(ke != NULL, "create_ke(%d) gives an object", method);
	if (!ke)
	{
		return;
	}
	check(ke->get_method(ke) == (key_exchange_method_t)method, "get_method before any exchange");
	check(!ke->get_public_key(ke, NULL), "get_public_key(NULL) is FALSE");
	check(!ke->get_shared_secret(ke, NULL), "get_shared_secret(NULL) is FALSE");
	check(!ke->get_shared_secret(ke, &out) && out.ptr == NULL,
		  "get_shared_secret before the exchange is FALSE");
	check(!ke->set_seed(ke, chunk_empty, NULL), "set_seed is FALSE (no test vectors)");
	check(!ke->set_public_key(ke, (chunk_t){ NULL, 5 }), "set_public_key({NULL, 5}) is FALSE");
	ke->destroy(ke);

	ke = lib->crypto->create_ke(lib->crypto, method);
	check(!ke->set_public_key(ke, chunk_empty), "set_public_key(empty) is FALSE");
	ke->destroy(ke);

	ke = lib->crypto->create_ke(lib->crypto, method);
	check(!ke->set_public_key(ke, (chunk_t){ garbage, sizeof(garbage) }),
		  "set_public_key(garbage) is FALSE");
	check(!ke->get_public_key(ke, &out) && out.ptr == NULL,
		  "no response after a refused request");
	check(!ke->get_shared_secret(ke, &out) && out.ptr == NULL,
		  "no shared secret after a refused request");
	check(!ke->set_public_key(ke, (chunk_t){ garbage, sizeof(garbage) }),
		  "a second set_public_key is FALSE");
	ke->destroy(ke);

	{
		/* far larger than any KE payload (IKE fragments aside) */
		chunk_t big = { malloc(70000), 70000 };

		memset(big.ptr, 0x01, big.len);
		ke = lib->crypto->create_ke(lib->crypto, method);
		check(!ke->set_public_key(ke, big), "set_public_key(70000 bytes of 0x01) is FALSE");
		ke->destroy(ke);
		chunk_free(&big);
	}

	hold_until(hold, "reloading");
	fact("reload %d", plugin->reload ? plugin->reload(plugin) : -1);
	if (reload_settings)
	{
		load_table(&table, reload_settings);
		fact("reload %d", plugin->reload(plugin));
		ke = lib->crypto->create_ke(lib->crypto, method);
		check(ke && ke->get_method(ke) == (key_exchange_method_t)method,
			  "after reload, create_ke(%d) still works", method);
		if (ke)
		{
			ke->destroy(ke);
		}
	}
	hold_until(hold, "unloading");
}

/* ---- main -------------------------------------------------------------------------------- */

int main(int argc, char *argv[])
{
	const char *plugin_path, *mode, *reload_settings = NULL, *ppk_id = NULL;
	bool check_version = true, hold = false;
	plugin_t *(*create)(void);
	const char **version;
	plugin_t *plugin;
	void *handle;
	int method;

	if (argc < 4)
	{
		die("usage: fake_charon PLUGIN.so SETTINGS MODE [--conn NAME] [--remote A.B.C.D] "
			"[--reload-settings SETTINGS2]");
	}
	plugin_path = argv[1];
	load_table(&table, argv[2]);
	mode = argv[3];
	for (int i = 4; i < argc; i += 2)
	{
		if (strcmp(argv[i], "--no-version-check") == 0)
		{
			check_version = false;
			i--;
		}
		else if (strcmp(argv[i], "--hold") == 0)
		{
			hold = true;
			i--;
		}
		else if (i + 1 >= argc)
		{
			die("option without a value");
		}
		else if (strcmp(argv[i], "--conn") == 0)
		{
			connection_name = argv[i + 1];
		}
		else if (strcmp(argv[i], "--remote") == 0)
		{
			if (inet_pton(AF_INET, argv[i + 1], remote_addr) != 1)
			{
				die("--remote wants an IPv4 address");
			}
		}
		else if (strcmp(argv[i], "--reload-settings") == 0)
		{
			reload_settings = argv[i + 1];
		}
		else if (strcmp(argv[i], "--ppk-id") == 0)
		{
			ppk_id = argv[i + 1];
		}
		else
		{
			die("unknown option");
		}
	}
	method = configured_method();

	/* plugin_loader.c: not RTLD_GLOBAL; the plugin's ELF constructor runs here. */
	handle = dlopen(plugin_path, RTLD_LAZY | RTLD_NODELETE);
	if (!handle)
	{
		fprintf(stderr, "fake_charon: dlopen: %s\n", dlerror());
		return 2;
	}
	version = dlsym(handle, "qkd_plugin_version");
	if (!version || !*version)
	{
		fprintf(stderr, "plugin 'qkd': failed to load - version field qkd_plugin_version missing\n");
		return 3;
	}
	fact("version %s", *version);
#ifdef STRONGSWAN_VERSION
	if (check_version && strcmp(*version, VERSION) != 0)
	{
		fprintf(stderr, "plugin 'qkd': failed to load - plugin version %s doesn't match version %s\n",
				*version, VERSION);
		return 3;
	}
#else
	(void)check_version; /* 6.0.1 checks no version */
#endif
	create = (plugin_t *(*)(void))dlsym(handle, "qkd_plugin_create");
	if (!create)
	{
		die("qkd_plugin_create missing");
	}
	plugin = create();
	if (!plugin)
	{
		fprintf(stderr, "plugin 'qkd': failed to load - qkd_plugin_create returned NULL\n");
		return 3;
	}
	check(tokens_registered == 1 && token_name && strcmp(token_name, "qkd") == 0 &&
		  token_type == KEY_EXCHANGE_METHOD && token_alg == method && token_keysize == 0,
		  "register_token(\"qkd\", KEY_EXCHANGE_METHOD, %d, 0)", method);
	check(enum_add_calls == 1, "enum_add_enum_names called once");
	{
		const char *name = enum_to_name(key_exchange_method_names, method);

		check(name && strcmp(name, "QKD") == 0, "method %d prints as QKD", method);
		check(strcmp(enum_to_name(key_exchange_method_names, CURVE_25519), "CURVE_25519") == 0,
			  "other names are untouched");
	}
	load_features(plugin, method);
	if (!registered_constructor)
	{
		return 1;
	}
	check(queued_count == 1 && jobs_destroyed == 0,
		  "the plugin queues one start job and runs nothing before charon's workers start");
	run_queued_jobs();
	check(listener && listener->ike_updown, "a listener for IKE SA up/down is registered");
	/* An IKE SA the plugin knows nothing about comes up and goes: nothing happens. */
	check(listener->ike_updown(listener, &ike_sa, true) &&
		  listener->ike_updown(listener, &ike_sa, false),
		  "ike_updown keeps the listener registered");
	check(listener->ike_rekey && listener->ike_rekey(listener, &ike_sa, &ike_sa),
		  "ike_rekey keeps the listener registered");

	if (strcmp(mode, "initiator") == 0)
	{
		initiator(method);
	}
	else if (strcmp(mode, "responder") == 0)
	{
		responder(method);
	}
	else if (strcmp(mode, "probe") == 0)
	{
		probe(plugin, method, reload_settings, hold);
	}
	else if (strcmp(mode, "ppk") == 0 && ppk_id)
	{
		ppk_lookups(ppk_id);
	}
	else
	{
		die("MODE is initiator, responder, probe or ppk (with --ppk-id)");
	}

	unload(plugin);
	check(ids_alive == 0, "every identity the plugin cloned was destroyed");
	check(dh_created == dh_destroyed, "every ECDH object the plugin created was destroyed (%d)",
		  dh_created);
	dlclose(handle);
	free(token_name);
	free_table(&table);
	fact("DONE");
	return failed_checks ? 1 : 0;
}
