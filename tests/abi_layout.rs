//! ABI check: our own declarations in include/strongswan_abi.h against the real strongSwan
//! 6.1.0 headers (Debian forky's source package, fetched and configured by
//! tests/abi/fetch-headers.sh into .cache/strongswan-6.1.0).
//!
//! 1. tests/abi/probe.c is compiled twice, against our header (-DQKD_OWN_ABI) and against
//!    the real headers (-include config.h), and the two `name offset/size` outputs must be
//!    identical line by line (offsets and sizes of every member, sizeof/alignof of every
//!    struct we declare completely, every enumerator, the debug group numbers).
//! 2. Every struct member and enumerator declared in our header must have a probe line
//!    (a declaration added without a probe line fails here).
//! 3. The type of every typed member and function-pointer typedef in our header is checked
//!    against the real one with `__builtin_types_compatible_p` in a generated C file compiled
//!    with the real headers (signatures: return type, parameter types, varargs).
//!
//! Environment:
//! * QKD_SKIP_ABI_CHECK=1 — if the real headers cannot be obtained (no cache and the fetch
//!   fails, e.g. no network), skip with a loud message instead of failing. Without it such a
//!   run FAILS: this check must never pass silently. With headers available it always runs.
//! * QKD_ABI_CACHE=<dir> — cache dir (default <repo>/.cache), also read by the fetch script.
//! * CC — C compiler (default `cc`).

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const SS_VERSION: &str = "6.1.0";

/// Structs we declare only up to some slot: their sizeof is not compared.
const PARTIAL_STRUCTS: &[&str] = &[
    "crypto_factory_t",
    "ike_sa_t",
    "bus_t",
    "daemon_t",
    "processor_t",
    "credential_manager_t",
];

/// Types only our header has (the real header uses anonymous enums for plugin_feature_t's
/// kind and type, and declares `dbg` without a typedef). Members of these types are checked
/// by size/offset only; dbg_fn_t is compared with `__typeof__(dbg)`.
const OWN_ONLY_TYPES: &[&str] = &["plugin_feature_kind_t", "plugin_feature_type_t"];
const TYPEDEF_COUNTERPART: &[(&str, &str)] = &[
    ("dbg_fn_t", "__typeof__(dbg)"),
    ("shared_key_create_fn_t", "__typeof__(&shared_key_create)"),
    ("mem_cred_create_fn_t", "__typeof__(&mem_cred_create)"),
    (
        "enumerator_create_single_fn_t",
        "__typeof__(&enumerator_create_single)",
    ),
    (
        "enumerator_create_nested_fn_t",
        "__typeof__(&enumerator_create_nested)",
    ),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    match env::var_os("QKD_ABI_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo().join(".cache"),
    }
}

fn skip_allowed() -> bool {
    env::var("QKD_SKIP_ABI_CHECK")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Returns the configured strongSwan tree, running the fetch script if needed.
/// None = unavailable and skipping was allowed.
fn strongswan_tree() -> Option<PathBuf> {
    let tree = cache_dir().join(format!("strongswan-{SS_VERSION}"));
    let ready = |t: &Path| t.join(".qkd-abi-ready").is_file() && t.join("config.h").is_file();
    if ready(&tree) {
        return Some(tree);
    }
    let script = repo().join("tests/abi/fetch-headers.sh");
    eprintln!(
        "abi_layout: no cached strongSwan {SS_VERSION} headers, running {}",
        script.display()
    );
    let t0 = Instant::now();
    let out = Command::new("bash").arg(&script).output();
    let secs = t0.elapsed().as_secs_f64();
    let failure = match out {
        Ok(o) if o.status.success() && ready(&tree) => {
            eprintln!("abi_layout: fetch + configure took {secs:.1}s");
            return Some(tree);
        }
        Ok(o) => format!(
            "{} exited with {} after {secs:.1}s:\n{}{}",
            script.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("cannot run bash {}: {e}", script.display()),
    };
    if skip_allowed() {
        eprintln!(
            "\n*** abi_layout: SKIPPED (QKD_SKIP_ABI_CHECK=1): the strongSwan {SS_VERSION} headers \
             could not be obtained, include/strongswan_abi.h is NOT checked ***\n{failure}"
        );
        return None;
    }
    panic!(
        "cannot obtain the real strongSwan {SS_VERSION} headers, so include/strongswan_abi.h \
         cannot be checked.\n{failure}\nThe fetch needs the Debian archive (apt-get source, \
         forky) and the packages dpkg-dev, gcc, make. Set QKD_SKIP_ABI_CHECK=1 to skip this \
         check knowingly."
    );
}

fn cc() -> String {
    env::var("CC")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cc".into())
}

fn run_cc(args: &[String], what: &str) {
    let out = Command::new(cc())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run C compiler `{}`: {e}", cc()));
    if !out.status.success() {
        panic!(
            "{what}: `{} {}` failed:\n{}",
            cc(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn real_cflags(tree: &Path) -> Vec<String> {
    vec![
        "-include".into(),
        tree.join("config.h").display().to_string(),
        format!("-I{}", tree.join("src/libstrongswan").display()),
        format!("-I{}", tree.join("src/libcharon").display()),
    ]
}

/// Compiles and runs the probe; returns its lines as (name, value) in order.
fn probe(variant: &str, flags: Vec<String>, tmp: &Path) -> Vec<(String, String)> {
    let exe = tmp.join(format!("abi_probe_{variant}"));
    let mut args = vec!["-std=gnu11".to_string(), "-Wall".into()];
    if variant == "own" {
        args.push("-Werror".into());
    }
    args.extend(flags);
    args.push(repo().join("tests/abi/probe.c").display().to_string());
    args.push("-o".into());
    args.push(exe.display().to_string());
    run_cc(&args, &format!("compiling the {variant} probe"));
    let out = Command::new(&exe).output().expect("run probe");
    assert!(
        out.status.success(),
        "{variant} probe failed: {:?}",
        out.status
    );
    let text = String::from_utf8(out.stdout).expect("probe output is UTF-8");
    fs::write(tmp.join(format!("abi_probe_{variant}.txt")), &text).ok();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad probe line {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

// ---- a small parser for our own header ------------------------------------------------------

#[derive(Debug)]
struct Member {
    /// dotted path, e.g. `arg.reg.f`
    path: String,
    /// the declaration with the name removed (an abstract type name), None for
    /// placeholders and nested aggregates
    ty: Option<String>,
    flexible: bool,
}

#[derive(Debug, Default)]
struct Header {
    structs: BTreeMap<String, Vec<Member>>,
    enumerators: Vec<(String, String)>, // (enum type, constant)
    fn_typedefs: Vec<(String, String)>, // (name, abstract type)
}

fn strip_comments_and_cpp(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i + 2..].find("*/").expect("unterminated comment") + i + 4;
        out.push(' ');
        rest = &rest[end..];
    }
    out.push_str(rest);
    let mut res = String::new();
    let mut cont = false;
    for line in out.lines() {
        let line = line.split("//").next().unwrap();
        let is_cpp = cont || line.trim_start().starts_with('#');
        cont = is_cpp && line.trim_end().ends_with('\\');
        if !is_cpp {
            res.push_str(line);
        }
        res.push('\n');
    }
    res
}

fn tokenize(src: &str) -> Vec<String> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            toks.push(src[s..i].to_string());
        } else if src[i..].starts_with("...") {
            toks.push("...".into());
            i += 3;
        } else {
            toks.push((c as char).to_string());
            i += 1;
        }
    }
    toks
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Splits tokens on `sep` at bracket depth 0.
fn split_top(toks: &[String], sep: &str) -> Vec<Vec<String>> {
    let mut parts = vec![Vec::new()];
    let mut depth = 0i32;
    for t in toks {
        match t.as_str() {
            "{" | "(" | "[" => depth += 1,
            "}" | ")" | "]" => depth -= 1,
            _ => {}
        }
        if depth == 0 && t == sep {
            parts.push(Vec::new());
        } else {
            parts.last_mut().unwrap().push(t.clone());
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Index of the `}` matching the `{` at `open`.
fn matching_brace(toks: &[String], open: usize) -> usize {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if t == "{" {
            depth += 1;
        } else if t == "}" {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    panic!("unbalanced braces in header")
}

/// Name position in a declarator: `( * NAME )` for function pointers, else the last
/// identifier (before a trailing `[...]`).
fn declarator_name(d: &[String]) -> usize {
    for i in 0..d.len().saturating_sub(3) {
        if d[i] == "(" && d[i + 1] == "*" && is_ident(&d[i + 2]) && d[i + 3] == ")" {
            return i + 2;
        }
    }
    let mut end = d.len();
    if d.last().map(String::as_str) == Some("]") {
        end = d.iter().rposition(|t| t == "[").expect("[");
    }
    (0..end)
        .rev()
        .find(|&i| is_ident(&d[i]))
        .expect("member name")
}

fn parse_members(body: &[String], prefix: &str, out: &mut Vec<Member>) {
    for decl in split_top(body, ";") {
        if (decl[0] == "union" || decl[0] == "struct")
            && decl.get(1).map(String::as_str) == Some("{")
        {
            let close = matching_brace(&decl, 1);
            let name = decl[close + 1..]
                .iter()
                .find(|t| is_ident(t))
                .expect("nested member name");
            let path = format!("{prefix}{name}");
            out.push(Member {
                path: path.clone(),
                ty: None,
                flexible: false,
            });
            parse_members(&decl[2..close], &format!("{path}."), out);
            continue;
        }
        let n = declarator_name(&decl);
        let flexible =
            decl.len() >= 2 && decl[decl.len() - 2..] == ["[".to_string(), "]".to_string()];
        let mut ty: Vec<String> = decl.clone();
        ty.remove(n);
        let placeholder = ty == ["void", "*"];
        out.push(Member {
            path: format!("{prefix}{}", decl[n]),
            ty: if placeholder {
                None
            } else {
                Some(ty.join(" "))
            },
            flexible,
        });
    }
}

fn parse_header(src: &str) -> Header {
    let toks = tokenize(&strip_comments_and_cpp(src));
    let mut h = Header::default();
    for decl in split_top(&toks, ";") {
        let brace = decl.iter().position(|t| t == "{");
        let kw = decl
            .iter()
            .position(|t| t == "struct" || t == "enum" || t == "union");
        match (brace, kw) {
            (Some(open), Some(k)) if k < open => {
                let close = matching_brace(&decl, open);
                // struct NAME { ... }  or  typedef struct { ... } NAME
                let name = if k + 1 < open {
                    decl[k + 1].clone()
                } else {
                    decl[close + 1..]
                        .iter()
                        .rev()
                        .find(|t| is_ident(t))
                        .expect("type name")
                        .clone()
                };
                let body = &decl[open + 1..close];
                if decl[k] == "enum" {
                    for e in split_top(body, ",") {
                        h.enumerators.push((name.clone(), e[0].clone()));
                    }
                } else {
                    let mut members = Vec::new();
                    parse_members(body, "", &mut members);
                    h.structs.insert(name, members);
                }
            }
            _ if decl[0] == "typedef" && decl.iter().any(|t| t == "(") => {
                let d = &decl[1..];
                let n = declarator_name(d);
                let mut ty = d.to_vec();
                ty.remove(n);
                h.fn_typedefs.push((d[n].clone(), ty.join(" ")));
            }
            _ => {}
        }
    }
    h
}

// ---- the checks ------------------------------------------------------------------------------

/// Every declaration of our header must have a probe line; returns the problems.
fn coverage(h: &Header, probe_keys: &BTreeSet<String>) -> Vec<String> {
    let mut missing = Vec::new();
    let mut need = |k: String| {
        if !probe_keys.contains(&k) {
            missing.push(k);
        }
    };
    for (s, members) in &h.structs {
        let partial = PARTIAL_STRUCTS.contains(&s.as_str());
        if !partial {
            need(format!("sizeof({s})"));
        }
        for m in members {
            need(format!("{s}.{}", m.path));
        }
    }
    for (_, e) in &h.enumerators {
        need(format!("enum {e}"));
    }
    for p in PARTIAL_STRUCTS {
        if probe_keys.contains(&format!("sizeof({p})")) {
            missing.push(format!(
                "sizeof({p}) must not be probed: we declare {p} partially"
            ));
        }
    }
    missing
}

/// Generates the C file with one type-compatibility assertion per typed declaration.
fn signature_checks(h: &Header) -> (String, usize) {
    let mut c = String::from(
        "#include <library.h>\n#include <utils/debug.h>\n#include <collections/enumerator.h>\n\
         #include <settings/settings.h>\n#include <plugins/plugin.h>\n\
         #include <plugins/plugin_feature.h>\n#include <crypto/transform.h>\n\
         #include <crypto/key_exchange.h>\n#include <crypto/rngs/rng.h>\n\
         #include <crypto/crypto_factory.h>\n#include <crypto/proposal/proposal_keywords.h>\n\
         #include <networking/host.h>\n#include <daemon.h>\n#include <bus/bus.h>\n\
         #include <sa/ike_sa.h>\n#include <credentials/credential_manager.h>\n\
         #include <credentials/sets/mem_cred.h>\n#include <utils/identification.h>\n\
         #define SIG(what, a, b) _Static_assert(__builtin_types_compatible_p(a, b), \
         \"ABI-SIG \" what \" differs from strongSwan 6.1.0\")\n",
    );
    let mut n = 0;
    let own_only = |ty: &str| {
        tokenize(ty)
            .iter()
            .any(|t| OWN_ONLY_TYPES.contains(&t.as_str()))
    };
    for (s, members) in &h.structs {
        for m in members {
            let Some(ty) = &m.ty else { continue };
            if own_only(ty) {
                continue;
            }
            let real = format!("__typeof__((({s} *)0)->{})", m.path);
            writeln!(c, "SIG(\"{s}.{}\", {real}, {ty});", m.path).unwrap();
            n += 1;
        }
    }
    for (name, ty) in &h.fn_typedefs {
        let real = TYPEDEF_COUNTERPART
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| name.clone());
        writeln!(c, "SIG(\"typedef {name}\", {real}, {ty});").unwrap();
        n += 1;
    }
    c.push_str("int main(void) { return 0; }\n");
    (c, n)
}

#[test]
fn strongswan_abi_matches_6_1_0_headers() {
    let Some(tree) = strongswan_tree() else {
        return;
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let header_path = repo().join("include/strongswan_abi.h");
    let header = parse_header(&fs::read_to_string(&header_path).expect("read our header"));

    let own = probe(
        "own",
        vec![
            "-DQKD_OWN_ABI".into(),
            format!("-I{}", repo().join("include").display()),
        ],
        &tmp,
    );
    let real = probe("real", real_cflags(&tree), &tmp);

    // 1. layouts and values
    let real_map: BTreeMap<&str, &str> =
        real.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let own_map: BTreeMap<&str, &str> = own.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut diff = String::new();
    for (k, v) in &own {
        match real_map.get(k.as_str()) {
            Some(rv) if rv == v => {}
            Some(rv) => writeln!(diff, "  {k}: ours {v}, strongSwan {SS_VERSION} {rv}").unwrap(),
            None => writeln!(
                diff,
                "  {k}: ours {v}, strongSwan {SS_VERSION} has no such line"
            )
            .unwrap(),
        }
    }
    for (k, rv) in &real {
        if !own_map.contains_key(k.as_str()) {
            writeln!(
                diff,
                "  {k}: only in the strongSwan {SS_VERSION} probe ({rv})"
            )
            .unwrap();
        }
    }
    assert!(
        diff.is_empty(),
        "include/strongswan_abi.h disagrees with strongSwan {SS_VERSION} ({}):\n{diff}\
         (full outputs: {}/abi_probe_own.txt, abi_probe_real.txt)",
        tree.display(),
        tmp.display()
    );

    // 2. every declaration has a probe line
    let keys: BTreeSet<String> = own.iter().map(|(k, _)| k.clone()).collect();
    let missing = coverage(&header, &keys);
    assert!(
        missing.is_empty(),
        "tests/abi/probe.c does not cover these declarations of include/strongswan_abi.h:\n  {}",
        missing.join("\n  ")
    );

    // 3. member and typedef types (function signatures) against the real headers
    let (sig_src, sig_count) = signature_checks(&header);
    let sig_c = tmp.join("abi_signatures.c");
    fs::write(&sig_c, &sig_src).unwrap();
    let mut args = vec!["-std=gnu11".to_string(), "-fsyntax-only".into()];
    args.extend(real_cflags(&tree));
    args.push(sig_c.display().to_string());
    let out = Command::new(cc()).args(&args).output().expect("run cc");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("ABI-SIG") || l.contains("error"))
            .collect();
        panic!(
            "declared types in include/strongswan_abi.h disagree with strongSwan {SS_VERSION} \
             (generated checks: {}):\n{}\n(a type only our header has must be listed in \
             OWN_ONLY_TYPES)",
            sig_c.display(),
            lines.join("\n")
        );
    }

    eprintln!(
        "abi_layout: {} probe lines identical (ours vs strongSwan {SS_VERSION} headers), \
         {} structs / {} members / {} enumerators covered, {sig_count} declared types compatible",
        own.len(),
        header.structs.len(),
        header.structs.values().map(Vec::len).sum::<usize>(),
        header.enumerators.len()
    );
}

#[test]
fn header_parser_sees_nested_members() {
    let h = parse_header(
        "typedef struct { int a; union { int x; struct { bool f; void *g; } r; } u; } t_t;\n\
         typedef enum { A = 1, B, } e_t;\ntypedef int (*fp_t)(int x, ...);\n\
         struct s_t { char *(*get)(s_t *this, char *k, ...); void *pad; char *names[]; };",
    );
    let paths: Vec<&str> = h.structs["t_t"].iter().map(|m| m.path.as_str()).collect();
    assert_eq!(paths, ["a", "u", "u.x", "u.r", "u.r.f", "u.r.g"]);
    assert_eq!(
        h.enumerators,
        [
            ("e_t".to_string(), "A".to_string()),
            ("e_t".into(), "B".into())
        ]
    );
    assert_eq!(
        h.fn_typedefs,
        [("fp_t".to_string(), "int ( * ) ( int x , ... )".to_string())]
    );
    let s = &h.structs["s_t"];
    assert_eq!(
        s[0].ty.as_deref(),
        Some("char * ( * ) ( s_t * this , char * k , ... )")
    );
    assert!(s[1].ty.is_none());
    assert_eq!(s[2].path, "names");
    assert!(s[2].flexible);
}
