//! `qkd_plugin_create`: the plugin object, its feature table and the names it registers.
//! The runtime it installs lives in [`super::runtime`].

use super::abi::{
    enum_name_t, key_exchange_method_t, plugin_feature_t, plugin_t, FEATURE_CALLBACK,
    FEATURE_CUSTOM, FEATURE_DEPENDS, FEATURE_KE, FEATURE_NONE, FEATURE_PROVIDE, FEATURE_REGISTER,
    FEATURE_SDEPEND, KEY_EXCHANGE_METHOD,
};
use super::inner_ke::CharonKe;
use super::{boundary, events, key_exchange, log as charon_log, ppk, settings, symbols, version};
use crate::config::{method_name, Config, PREFIX};
use crate::installed::{self, status_socket};
use std::ffi::{c_char, c_int, c_void};

/// `enum_name_t` with one name: makes logs and `swanctl --list-algs` print `QKD` instead of
/// `(1042)`. charon links it into `key_exchange_method_names`, so it must not move.
#[repr(C)]
struct MethodName {
    first: i64,
    last: i64,
    next: *mut enum_name_t,
    names: [*const c_char; 1],
}

#[repr(C)]
struct QkdPlugin {
    public: plugin_t,
    features: Vec<plugin_feature_t>,
    method_name: Option<Box<MethodName>>,
}

fn feature(kind: u32, arg: impl FnOnce(&mut plugin_feature_t)) -> plugin_feature_t {
    // SAFETY: plugin_feature_t is plain data; all-zero is the macros' "unused" value.
    let mut f: plugin_feature_t = unsafe { std::mem::zeroed() };
    f.kind = kind;
    f.type_ = FEATURE_KE;
    arg(&mut f);
    f
}

/// REGISTER -> PROVIDE -> DEPENDS, as strongSwan's own KE plugins list them. With a `kem`,
/// a callback feature first checks that charon can make that ML-KEM (soft-depending on it,
/// so its provider is loaded before) and the qkd method depends on the check: an unmet
/// DEPENDS alone is only logged at level 2, so the check logs why itself.
fn features(config: &Config) -> Vec<plugin_feature_t> {
    let constructor = key_exchange::create as *mut c_void;
    let mut features = Vec::new();
    if let Some(kem) = config.kem {
        features.extend([
            feature(FEATURE_CALLBACK, |f| {
                f.type_ = FEATURE_NONE;
                f.arg.cb.f = Some(check_kem);
            }),
            custom(FEATURE_PROVIDE),
            feature(FEATURE_SDEPEND, |f| f.arg.ke = kem as key_exchange_method_t),
        ]);
    }
    features.extend([
        feature(FEATURE_REGISTER, |f| f.arg.reg.f = constructor),
        feature(FEATURE_PROVIDE, |f| {
            f.arg.ke = config.method_id as key_exchange_method_t
        }),
    ]);
    if let Some(group) = config.dh_group {
        features.push(feature(FEATURE_DEPENDS, |f| {
            f.arg.ke = group as key_exchange_method_t
        }));
    }
    if config.kem.is_some() {
        features.push(custom(FEATURE_DEPENDS));
    }
    features
}

/// The custom feature the kem check provides and the qkd method depends on.
fn custom(kind: u32) -> plugin_feature_t {
    feature(kind, |f| {
        f.type_ = FEATURE_CUSTOM;
        f.arg.custom = c"qkd-kem".as_ptr() as *mut c_char;
    })
}

/// Loading: can charon's crypto factory make the configured ML-KEM? Unloading: nothing.
unsafe extern "C" fn check_kem(
    _: *mut plugin_t,
    _: *mut plugin_feature_t,
    reg: bool,
    _: *mut c_void,
) -> bool {
    boundary("kem check", false, || {
        let kem = installed::current().and_then(|rt| rt.config.kem);
        let Some(kem) = kem.filter(|_| reg) else {
            return true;
        };
        match CharonKe::create(kem) {
            Ok(_) => true,
            Err(e) => {
                log::error!(
                    target: "cfg",
                    "qkd: not loading the qkd method: {PREFIX}.kem = {}, but {e}. ML-KEM needs \
                     strongSwan >= 6.0.2 with OpenSSL >= 3.5 (openssl plugin) or the ml plugin; \
                     Debian trixie's 6.0.1 has none. Set kem = none or use such a build",
                    method_name(kem)
                );
                false
            }
        }
    })
}

/// The `qkd` keyword (and through strongSwan's ke1_..ke7_ parser `ke1_qkd` etc.) for
/// proposals, and the name `QKD` for the method number. Tokens cannot be unregistered.
fn register_names(method_id: u16) -> Option<Box<MethodName>> {
    let lib = symbols::lib()?;
    // SAFETY: lib->proposal is NULL or the live keyword registry; the name is copied (strdup).
    unsafe {
        if let Some(proposal) = lib.proposal.as_mut() {
            if let Some(register) = proposal.register_token {
                register(proposal, c"qkd".as_ptr(), KEY_EXCHANGE_METHOD, method_id, 0);
            }
        }
    }
    let names = symbols::enum_names()?;
    let mut name = Box::new(MethodName {
        first: method_id.into(),
        last: method_id.into(),
        next: std::ptr::null_mut(),
        names: [c"QKD".as_ptr()],
    });
    // SAFETY: `add` is libstrongswan's enum_add_enum_names on its live list; `name` is
    // heap-pinned until plugin destroy removes it again.
    unsafe {
        (names.add)(
            names.key_exchange_methods,
            &mut *name as *mut MethodName as *mut enum_name_t,
        )
    };
    Some(name)
}

#[no_mangle]
pub extern "C" fn qkd_plugin_create() -> *mut plugin_t {
    boundary("qkd_plugin_create", std::ptr::null_mut(), || {
        charon_log::install();
        // Loaders before 6.0.3 (and the RTLD_DEFAULT path) never compare qkd_plugin_version.
        if !version::abi_allows_loading() {
            return std::ptr::null_mut();
        }
        let rt = match settings::load_config().and_then(installed::install) {
            Ok(rt) => rt,
            Err(e) => {
                log::error!(target: "cfg", "qkd: not loading: {e}");
                return std::ptr::null_mut();
            }
        };
        let plugin = Box::new(QkdPlugin {
            public: plugin_t {
                get_name: Some(get_name),
                get_features: Some(get_features),
                reload: Some(reload),
                destroy: Some(destroy),
            },
            features: features(&rt.config),
            method_name: register_names(rt.config.method_id),
        });
        log::info!(
            target: "cfg",
            "qkd: SAE '{}', method {} (QKD), {}-bit keys, fallback = {}, {} peer(s), in-method: {}",
            rt.config.sae_id,
            rt.config.method_id,
            rt.config.key_size,
            rt.config.fallback,
            rt.config.peers.len(),
            crate::ke::describe_methods(rt.config.inner_methods().into_iter())
        );
        // Key supply start (after the privilege drop) and IKE SA authentication events.
        events::register();
        // RFC 8784 PPK lookups answered from the KME (peers.<conn>.ppk).
        ppk::register();
        Box::into_raw(plugin) as *mut plugin_t
    })
}

/// No panic boundary: returning a constant cannot panic.
unsafe extern "C" fn get_name(_: *mut plugin_t) -> *mut c_char {
    // Static: the crypto factory keeps this pointer as the provider name.
    c"qkd".as_ptr() as *mut c_char
}

unsafe extern "C" fn get_features(this: *mut plugin_t, out: *mut *mut plugin_feature_t) -> c_int {
    boundary("get_features", 0, || {
        // SAFETY: `this` is NULL or the plugin object qkd_plugin_create returned (its first
        // member is the plugin_t charon holds); `out` is checked for NULL before the write.
        match (unsafe { (this as *mut QkdPlugin).as_mut() }, out.is_null()) {
            (Some(plugin), false) => {
                // SAFETY: `out` is non-NULL and points to charon's result variable.
                unsafe { *out = plugin.features.as_mut_ptr() };
                plugin.features.len() as c_int
            }
            _ => 0,
        }
    })
}

/// `swanctl --reload-settings` (policy in [`installed::reload`]).
/// Also (re)starts the status socket: reloads run in a worker thread, after charon dropped
/// its capabilities (see installed/status_socket.rs).
unsafe extern "C" fn reload(_: *mut plugin_t) -> bool {
    boundary("reload", false, || {
        let reloaded = installed::reload(settings::load_config());
        if let Some(rt) = installed::current() {
            status_socket::ensure(rt.config.status_socket.as_deref(), true);
            // A reload runs in a worker thread; a new runtime's supply starts here.
            rt.supply.start();
        }
        reloaded
    })
}

unsafe extern "C" fn destroy(this: *mut plugin_t) {
    boundary("plugin destroy", (), || {
        if this.is_null() {
            return;
        }
        // SAFETY: a non-NULL `this` is the Box qkd_plugin_create leaked; charon destroys a
        // plugin once.
        let plugin = unsafe { Box::from_raw(this as *mut QkdPlugin) };
        if let (Some(mut name), Some(names)) = (plugin.method_name, symbols::enum_names()) {
            // SAFETY: removes the entry register_names added to the same live list.
            unsafe {
                (names.remove)(
                    names.key_exchange_methods,
                    &mut *name as *mut MethodName as *mut enum_name_t,
                )
            };
        }
        events::unregister();
        ppk::unregister();
        status_socket::stop();
        installed::uninstall();
    })
}
