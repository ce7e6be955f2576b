//! Build script. Without the `nginx` feature (core, CLI, tests) it does nothing but tell cargo
//! when to rerun. With it, it checks the nginx that `nginx-sys` generated bindings for
//! (`NGINX_BUILD_DIR`, a configured `objs/` dir) before rustc starts:
//!
//! * the nginx must be configured `--with-stream` (otherwise the stream types do not exist
//!   and rustc would print hundreds of unrelated errors);
//! * nginx-sys's `ngx_feature` / `ngx_os` cfgs are forwarded (they only reach nginx-sys
//!   itself), so `src/nginx` may write `#[cfg(ngx_feature = "debug")]` and the like;
//! * differences between nginx versions become feature cfgs derived from the version the
//!   bindings were generated for (never struct offsets): see [`VERSION_FEATURES`].

use std::env;

/// `(cfg name, first nginx version that has it, what it is)`.
const VERSION_FEATURES: &[(&str, u64, &str)] = &[
    (
        "ngx_stream_virtual_servers",
        1_025_005,
        "stream server_name: ngx_stream_addr_conf_t has default_server, several servers may share an address",
    ),
    (
        "ngx_stream_upstream_resolve",
        1_027_003,
        "stream upstream `server ... resolve` in open source: ngx_stream_upstream_server_t has host",
    ),
    (
        "ngx_stream_proxy_protocol_v2",
        1_031_004,
        "stream `proxy_protocol v2`: ngx_stream_upstream_t.proxy_protocol is the version (2 bits), ngx_proxy_protocol_v2_write exists",
    ),
];

/// The oldest nginx the module supports.
const MIN_VERSION: u64 = 1_022_001;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=NGINX_BUILD_DIR");
    for (name, _, _) in VERSION_FEATURES {
        println!("cargo::rustc-check-cfg=cfg({name})");
    }
    if env::var_os("CARGO_FEATURE_NGINX").is_none() {
        println!("cargo::rustc-check-cfg=cfg(ngx_feature, values(any()))");
        println!("cargo::rustc-check-cfg=cfg(ngx_os, values(any()))");
        return;
    }
    // Set by nginx-sys from nginx_version in the configured tree's core headers.
    let version: u64 = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if version < MIN_VERSION {
        let dir = env::var("DEP_NGINX_BUILD_DIR").unwrap_or_else(|_| "(unknown)".into());
        eprintln!(
            "error: the nginx configured in {dir} is version {version}; ngx_stream_noise_module needs nginx 1.22.1 or newer"
        );
        std::process::exit(1);
    }
    for (name, since, _) in VERSION_FEATURES {
        if version >= *since {
            println!("cargo::rustc-cfg={name}");
        }
    }
    // Set by nginx-sys (links = "nginx") for its direct dependents.
    let features = env::var("DEP_NGINX_FEATURES").unwrap_or_default();
    if let Ok(check) = env::var("DEP_NGINX_FEATURES_CHECK") {
        println!("cargo::rustc-check-cfg=cfg(ngx_feature, values({check}))");
    }
    if let Ok(check) = env::var("DEP_NGINX_OS_CHECK") {
        println!("cargo::rustc-check-cfg=cfg(ngx_os, values({check}))");
    }
    for feature in features.split(',').filter(|f| !f.is_empty()) {
        println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
    }
    if let Ok(os) = env::var("DEP_NGINX_OS") {
        println!("cargo::rustc-cfg=ngx_os=\"{os}\"");
    }
    if !features.split(',').any(|f| f == "stream") {
        let dir = env::var("DEP_NGINX_BUILD_DIR").unwrap_or_else(|_| "(unknown)".into());
        eprintln!(
            "error: the nginx configured in {dir} has no stream module; \
             ngx_stream_noise_module needs nginx configured --with-stream \
             (scripts/build.sh does this; set NGINX_BUILD_DIR to its objs/ dir)"
        );
        std::process::exit(1);
    }
}
