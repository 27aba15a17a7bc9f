//! Every case of every relayfile path contract v1 fixture file, through the library and through
//! the `check` / `scopes` commands, each reported by name. A missing fixture file fails the run.

mod common;

use std::path::Path;

use libtest_mimic::{Arguments, Failed, Trial};
use relayauth_mount::scope::{PathPattern, Requirement, Scope, ScopeSet, path};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct FixtureFile<T> {
    contract: String,
    version: u32,
    area: String,
    cases: Vec<T>,
}

#[derive(Clone, Deserialize)]
struct AuthCase {
    name: String,
    scopes: Vec<String>,
    required: String,
    file: String,
    expect: AuthExpect,
}
#[derive(Clone, Deserialize)]
struct AuthExpect {
    auth_matches: bool,
}

#[derive(Clone, Deserialize)]
struct ScopePathCase {
    name: String,
    scope_path: String,
    #[serde(default)]
    probe_files: Vec<String>,
    expect: ScopePathExpect,
}
#[derive(Clone, Deserialize)]
struct ScopePathExpect {
    valid: bool,
    mounts_at: Option<String>,
}

#[derive(Clone, Deserialize)]
struct NormCase {
    name: String,
    path: String,
    expect: NormExpect,
}
#[derive(Clone, Deserialize)]
struct NormExpect {
    normalized: String,
}

#[derive(Clone, Deserialize)]
struct ContainCase {
    name: String,
    base: String,
    candidate: String,
    expect: ContainExpect,
}
#[derive(Clone, Deserialize)]
struct ContainExpect {
    contains: bool,
}

fn load<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    area: &str,
) -> Result<Vec<T>, String> {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        format!(
            "contract fixture {} cannot be read ({e}); the fixtures are vendored in \
             tests/fixtures/relayfile-path-contract-v1 (or set RELAYFILE_CONTRACT_DIR)",
            p.display()
        )
    })?;
    let f: FixtureFile<T> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a fixture file: {e}", p.display()))?;
    if f.contract != "relayfile-path-contract" || f.version != 1 || f.area != area {
        return Err(format!(
            "{}: header is ({}, {}, {}), expected (relayfile-path-contract, 1, {area})",
            p.display(),
            f.contract,
            f.version,
            f.area
        ));
    }
    if f.cases.is_empty() {
        return Err(format!("{}: no cases", p.display()));
    }
    Ok(f.cases)
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(msg().into()) }
}

/// The scope string a fixture's bare scope path stands for.
fn scope_for(path: &str) -> String {
    format!("relayfile:fs:read:{path}")
}

fn auth_lib(c: &AuthCase) -> Result<(), Failed> {
    let req = Requirement::parse(&c.required).map_err(|e| e.to_string())?;
    let set = ScopeSet::new(&c.scopes);
    let got = set.check(&req, &c.file).is_some();
    check(got == c.expect.auth_matches, || {
        format!(
            "scopes {:?} {} on {:?}: got {got}, want {}",
            c.scopes, c.required, c.file, c.expect.auth_matches
        )
    })
}

fn auth_cli(c: &AuthCase) -> Result<(), Failed> {
    let scopes = serde_json::to_string(&c.scopes).map_err(|e| e.to_string())?;
    let (code, v) = common::run_json(&[
        "check",
        "--scopes-json",
        &scopes,
        "--require",
        &c.required,
        "--path",
        &c.file,
        "--json",
    ]);
    let want = c.expect.auth_matches;
    check(v["allowed"] == Value::Bool(want), || {
        format!("allowed = {}, want {want}", v["allowed"])
    })?;
    check(code == if want { 0 } else { 1 }, || {
        format!("exit code {code}")
    })?;
    check(
        v["requirement"] == Value::String(c.required.clone()),
        || format!("requirement {}", v["requirement"]),
    )?;
    if want {
        check(
            v["error_code"].is_null() && v["matched_scope"].is_string(),
            || format!("{v}"),
        )
    } else {
        check(
            v["error_code"] == "insufficient_scope" && v["matched_scope"].is_null(),
            || format!("{v}"),
        )
    }
}

fn scope_path_lib(c: &ScopePathCase) -> Result<(), Failed> {
    let parsed = PathPattern::parse(c.scope_path.trim());
    check(parsed.is_ok() == c.expect.valid, || {
        format!("valid = {}, want {}", parsed.is_ok(), c.expect.valid)
    })?;
    let mounts = parsed.as_ref().ok().map(|p| p.mounts_at().to_owned());
    check(mounts == c.expect.mounts_at, || {
        format!("mounts_at = {mounts:?}, want {:?}", c.expect.mounts_at)
    })?;
    let scope = Scope::parse(&scope_for(&c.scope_path));
    check(scope.is_valid() == c.expect.valid, || {
        "scope-level validity disagrees".into()
    })?;
    check(
        scope.mounts_at().map(str::to_owned) == c.expect.mounts_at,
        || "scope-level mounts_at disagrees".into(),
    )?;
    let set = ScopeSet::new([scope_for(&c.scope_path)]);
    let req = Requirement::parse("fs:read").map_err(|e| e.to_string())?;
    for probe in &c.probe_files {
        check(set.check(&req, probe).is_none(), || {
            format!("invalid scope path matched probe {probe:?}")
        })?;
        check(!set.visible(probe.as_bytes()), || {
            format!("invalid scope path made {probe:?} visible")
        })?;
    }
    Ok(())
}

fn scope_path_cli(c: &ScopePathCase) -> Result<(), Failed> {
    let scope = scope_for(&c.scope_path);
    let (code, v) = common::run_json(&["scopes", "validate", &scope, "--json"]);
    let row = &v[0];
    check(row["scope"] == Value::String(scope.clone()), || {
        format!("{row}")
    })?;
    check(row["valid"] == Value::Bool(c.expect.valid), || {
        format!("{row}")
    })?;
    let want_mount = c
        .expect
        .mounts_at
        .clone()
        .map_or(Value::Null, Value::String);
    check(row["mounts_at"] == want_mount, || format!("{row}"))?;
    check(row["error"].is_null() == c.expect.valid, || {
        format!("{row}")
    })?;
    check(code == if c.expect.valid { 0 } else { 1 }, || {
        format!("exit code {code}")
    })?;
    for probe in &c.probe_files {
        let (code, v) = common::run_json(&[
            "check", "--scope", &scope, "--op", "read", "--path", probe, "--json",
        ]);
        check(code == 1 && v["allowed"] == false, || {
            format!("probe {probe:?}: {v}")
        })?;
    }
    Ok(())
}

fn norm_lib(c: &NormCase) -> Result<(), Failed> {
    let got = path::normalize(&c.path);
    check(got == c.expect.normalized, || {
        format!(
            "normalize({:?}) = {got:?}, want {:?}",
            c.path, c.expect.normalized
        )
    })
}

fn norm_cli(c: &NormCase) -> Result<(), Failed> {
    let (code, v) = common::run_json(&["scopes", "normalize", &c.path, "--json"]);
    check(
        code == 0 && v[0]["normalized"] == Value::String(c.expect.normalized.clone()),
        || format!("{v}"),
    )
}

fn contain_lib(c: &ContainCase) -> Result<(), Failed> {
    let got = path::contains(&c.base, &c.candidate);
    check(got == c.expect.contains, || {
        format!("contains({:?}, {:?}) = {got}", c.base, c.candidate)
    })?;
    // The same question asked of the scope engine: the exact candidate within base/**.
    let base = path::normalize(&c.base);
    let parent = if base == "/" {
        "/**".to_owned()
    } else {
        format!("{base}/**")
    };
    let child = path::normalize(&c.candidate);
    let within = relayauth_mount::scope::within([scope_for(&child)], [scope_for(&parent)]).within;
    check(within == c.expect.contains, || {
        format!("scope containment says {within}")
    })
}

fn contain_cli(c: &ContainCase) -> Result<(), Failed> {
    let (code, v) = common::run_json(&[
        "scopes",
        "contains",
        "--base",
        &c.base,
        "--candidate",
        &c.candidate,
        "--json",
    ]);
    let want = c.expect.contains;
    check(
        v["contains"] == Value::Bool(want) && code == if want { 0 } else { 1 },
        || format!("{v}"),
    )?;
    let base = path::normalize(&c.base);
    let parent = if base == "/" {
        "/**".to_owned()
    } else {
        format!("{base}/**")
    };
    let (code, v) = common::run_json(&[
        "scopes",
        "within",
        "--child",
        &scope_for(&path::normalize(&c.candidate)),
        "--parent",
        &scope_for(&parent),
        "--json",
    ]);
    check(
        v["within"] == Value::Bool(want) && code == if want { 0 } else { 1 },
        || format!("{v}"),
    )
}

fn trials<T: Clone + Send + 'static + serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    area: &str,
    name: fn(&T) -> &str,
    lib: fn(&T) -> Result<(), Failed>,
    cli: fn(&T) -> Result<(), Failed>,
) -> Vec<Trial> {
    match load::<T>(dir, file, area) {
        Err(e) => vec![Trial::test(format!("{area}::fixture-file"), move || {
            Err(e.into())
        })],
        Ok(cases) => cases
            .into_iter()
            .flat_map(|c| {
                let c2 = c.clone();
                [
                    Trial::test(format!("{area}::lib::{}", name(&c)), move || lib(&c)),
                    Trial::test(format!("{area}::cli::{}", name(&c2)), move || cli(&c2)),
                ]
            })
            .collect(),
    }
}

fn main() {
    let args = Arguments::from_args();
    let dir = common::contract_dir();
    let mut all = Vec::new();
    all.extend(trials::<AuthCase>(
        &dir,
        "auth-matching.json",
        "auth-matching",
        |c| &c.name,
        auth_lib,
        auth_cli,
    ));
    all.extend(trials::<ScopePathCase>(
        &dir,
        "scope-paths.json",
        "scope-paths",
        |c| &c.name,
        scope_path_lib,
        scope_path_cli,
    ));
    all.extend(trials::<NormCase>(
        &dir,
        "path-normalization.json",
        "path-normalization",
        |c| &c.name,
        norm_lib,
        norm_cli,
    ));
    all.extend(trials::<ContainCase>(
        &dir,
        "containment.json",
        "containment",
        |c| &c.name,
        contain_lib,
        contain_cli,
    ));
    libtest_mimic::run(&args, all).exit();
}
