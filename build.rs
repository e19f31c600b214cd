//! Generates Rust declarations from our own C declarations of the strongSwan ABI subset
//! (include/strongswan_abi.h). Debian ships no strongSwan headers; tests/abi_layout.rs checks
//! that header against the real 6.1.0 sources.

use std::env;
use std::path::PathBuf;

fn main() {
    let header = "include/strongswan_abi.h";
    println!("cargo:rerun-if-changed={header}");

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type(".*_t")
        .allowlist_type("key_exchange_method_t|plugin_feature_kind_t|plugin_feature_type_t")
        .allowlist_var(
            "KE_.*|SHARED_.*|CURVE_.*|ECP_.*|MODP_.*|FEATURE_.*|RNG_.*|LEVEL_.*|KEY_EXCHANGE_METHOD|IKE_ESTABLISHED|IKE_REKEYING|IKE_REKEYED",
        )
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(false)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on include/strongswan_abi.h (is libclang-dev installed?)");

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("strongswan_abi.rs");
    bindings.write_to_file(out).expect("writing bindgen output");
}
