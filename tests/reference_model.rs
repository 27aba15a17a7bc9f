//! The compiled scope engine against a plain reference matcher, by proptest.
//!
//! The reference below is written for clarity, straight from the contract's wording: it scans
//! every scope string for every question and shares no code with the engine. Generated scopes
//! and paths lean on the edges: `..`, `.`, empty segments, unicode, colons, whitespace,
//! trailing slashes, and names that share a byte prefix (`a`, `ab`, `a:b`).

use proptest::prelude::*;
use relayauth_mount::scope::{Requirement, ScopeSet, within};

// ---------------------------------------------------------------- the reference

const FAMILIES: [(&str, &[&str]); 4] = [
    ("fs", &["read", "write", "create", "delete", "manage"]),
    ("ops", &["read", "replay", "cancel", "manage"]),
    ("sync", &["read", "trigger", "manage"]),
    ("integration", &["read", "manage"]),
];

fn family_actions(resource: &str) -> Option<&'static [&'static str]> {
    FAMILIES
        .iter()
        .find(|(f, _)| *f == resource)
        .map(|(_, a)| *a)
}

fn ref_action_ok(resource: &str, granted: &str, required: &str) -> bool {
    if granted == "*" {
        return true;
    }
    match family_actions(resource) {
        Some(actions) => {
            if !actions.contains(&granted) || !actions.contains(&required) {
                return false;
            }
            if granted == required {
                return true;
            }
            let write_like = resource == "fs" && (required == "create" || required == "delete");
            if granted == "manage" {
                return required == "read" || required == "write" || write_like;
            }
            granted == "write" && write_like
        }
        None => {
            granted == required
                || (granted == "manage" && (required == "read" || required == "write"))
        }
    }
}

fn ref_valid(path: &str) -> bool {
    if path == "*" {
        return true;
    }
    if !path.starts_with('/') {
        return false;
    }
    if path == "/" {
        return true;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() || *seg == "." || *seg == ".." {
            return false;
        }
        let last = i == segments.len() - 1;
        if !last && seg.contains('*') {
            return false;
        }
        if last && seg.contains('*') {
            let ok = *seg == "*"
                || *seg == "**"
                || (seg.matches('*').count() == 1 && seg.ends_with('*'));
            if !ok {
                return false;
            }
        }
    }
    true
}

fn ref_path_matches(pattern: &str, file: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(dir) = pattern.strip_suffix("/**") {
        if dir.is_empty() {
            return file.starts_with('/');
        }
        return file == dir || file.starts_with(&format!("{dir}/"));
    }
    if let Some(dir) = pattern.strip_suffix("/*") {
        let below = format!("{dir}/");
        return file.starts_with(&below) && file.len() > below.len();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return file.starts_with(prefix);
    }
    file == pattern
}

fn literal_forms(required: &str) -> Vec<String> {
    let mut v = vec![required.to_owned()];
    if required == "fs:create" || required == "fs:delete" {
        v.push("fs:write".to_owned());
    }
    v
}

/// Plane, resource and action of a 3/4-part scope satisfy `required` (path aside).
fn ref_grant_covers(parts: &[&str], required: &str) -> bool {
    let (res, act) = required.split_once(':').unwrap_or(("", ""));
    if parts[0].is_empty() || parts[1].is_empty() || parts[2].is_empty() {
        return false;
    }
    let resource = match parts[0] {
        "relayfile" | "*" => parts[1],
        "workspace" => "fs",
        _ => return false,
    };
    (resource == res || resource == "*") && ref_action_ok(res, parts[2], act)
}

fn reference_allows(scopes: &[String], required: &str, file: &str) -> bool {
    reference_allows_exact(scopes, required, file.trim())
}

fn reference_allows_exact(scopes: &[String], required: &str, file: &str) -> bool {
    let mut narrow = false;
    for scope in scopes {
        let parts: Vec<&str> = scope.splitn(4, ':').collect();
        if parts.len() < 3 || !ref_grant_covers(&parts, required) {
            continue;
        }
        match parts.get(3) {
            None => return true,
            Some(p) => {
                narrow = true;
                let p = p.trim();
                if ref_valid(p) && ref_path_matches(p, file) {
                    return true;
                }
            }
        }
    }
    let literal = scopes.iter().any(|s| literal_forms(required).contains(s));
    literal && !narrow
}

fn ref_mounts_at(pattern: &str) -> String {
    if pattern == "*" || pattern == "/" {
        return "/".into();
    }
    let dir = if let Some(d) = pattern.strip_suffix("/**") {
        d.to_owned()
    } else if let Some(d) = pattern.strip_suffix("/*") {
        d.to_owned()
    } else if let Some(p) = pattern.strip_suffix('*') {
        p[..p.rfind('/').unwrap_or(0)].to_owned()
    } else {
        pattern.to_owned()
    };
    if dir.is_empty() { "/".into() } else { dir }
}

fn reference_visible(scopes: &[String], file: &str) -> bool {
    let fs_reqs = ["fs:read", "fs:write", "fs:create", "fs:delete"];
    if fs_reqs
        .iter()
        .any(|r| reference_allows_exact(scopes, r, file))
    {
        return true;
    }
    for scope in scopes {
        let parts: Vec<&str> = scope.splitn(4, ':').collect();
        if parts.len() < 3 || !fs_reqs.iter().any(|r| ref_grant_covers(&parts, r)) {
            continue;
        }
        let pattern = parts.get(3).map_or("*", |p| p.trim());
        if !ref_valid(pattern) {
            continue;
        }
        let m = ref_mounts_at(pattern);
        if file == m || file == "/" || (!file.is_empty() && m.starts_with(&format!("{file}/"))) {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------- generators

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("ab"),
        Just("b"),
        Just("a:b"),
        Just("A"),
        Just("é"),
        Just("日本"),
        Just(".."),
        Just("."),
        Just(""),
        Just("a b"),
        Just("-"),
    ]
    .prop_map(str::to_owned)
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(segment(), 0..5),
        prop_oneof![8 => Just("/"), 1 => Just(""), 1 => Just(" /"), 1 => Just("//")],
        prop_oneof![8 => Just(""), 1 => Just("/"), 1 => Just(" ")],
    )
        .prop_map(|(segs, lead, trail)| {
            let joined = segs.join("/");
            if joined.is_empty() && lead == "/" {
                format!("/{trail}").trim_end_matches(' ').to_owned()
            } else {
                format!("{lead}{joined}{trail}")
            }
        })
}

fn scope_path() -> impl Strategy<Value = String> {
    (
        path(),
        prop_oneof![
            4 => Just(""), 3 => Just("/**"), 3 => Just("/*"), 3 => Just("*"),
            1 => Just("**"), 1 => Just("*x"), 1 => Just("/*/a"), 1 => Just("/**/a"),
        ],
        prop_oneof![10 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(p, glob, star)| {
            if star {
                "*".to_owned()
            } else if p == "/" && glob.starts_with('/') {
                glob.to_owned()
            } else {
                format!("{p}{glob}")
            }
        })
}

fn scope() -> impl Strategy<Value = String> {
    let plane = prop_oneof![6 => Just("relayfile"), 1 => Just("*"), 1 => Just("workspace"), 1 => Just("relaycast"), 1 => Just("")];
    let resource = prop_oneof![6 => Just("fs"), 1 => Just("ops"), 1 => Just("*"), 1 => Just("search"), 1 => Just("label")];
    let action = prop_oneof![
        Just("read"),
        Just("write"),
        Just("create"),
        Just("delete"),
        Just("manage"),
        Just("*"),
        Just("replay"),
        Just("frob"),
        Just(""),
    ];
    let grant = (
        plane,
        resource,
        action,
        prop::option::weighted(0.85, scope_path()),
    )
        .prop_map(|(pl, r, a, p)| match p {
            Some(p) => format!("{pl}:{r}:{a}:{p}"),
            None => format!("{pl}:{r}:{a}"),
        });
    let literal = prop_oneof![
        Just("fs:read"),
        Just("fs:write"),
        Just("fs:manage"),
        Just("fs:create"),
        Just("search:read"),
        Just("openid"),
    ]
    .prop_map(str::to_owned);
    prop_oneof![8 => grant, 1 => literal]
}

fn requirement() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("fs:read"),
        Just("fs:write"),
        Just("fs:create"),
        Just("fs:delete"),
        Just("fs:manage"),
        Just("ops:read"),
        Just("ops:replay"),
        Just("search:read"),
        Just("search:query"),
    ]
}

/// Child scopes derived from a parent set by the narrowings (and near misses) a delegating
/// agent would write, so that "within" is often true and the property has teeth.
fn derived_child(parent: Vec<String>) -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
    let n = parent.len().max(1);
    let edits = prop::collection::vec((0..n, 0..10usize), 0..4);
    edits.prop_map(move |edits| {
        let child = edits
            .into_iter()
            .filter_map(|(i, e)| parent.get(i).map(|s| (s.clone(), e)))
            .map(|(s, e)| match e {
                0 => s,
                1 => s.replace("/**", "/a/**"),
                2 => s.replace("/**", "/*"),
                3 => s.replace("/*", "/ab*"),
                4 => s.replace(":manage", ":read").replace(":*:", ":write:"),
                5 => s.replace(":write", ":create"),
                6 => format!("{s}/a"),
                7 => s.replace("/*", "/**"),
                8 => s.replace("relayfile:", "*:"),
                _ => s.replace(":read", ":manage"),
            })
            .collect();
        (child, parent.clone())
    })
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_reference(
        scopes in prop::collection::vec(scope(), 0..8),
        req in requirement(),
        paths in prop::collection::vec(path(), 1..6),
    ) {
        let set = ScopeSet::new(&scopes);
        let r = Requirement::parse(req).unwrap();
        for p in &paths {
            let want = reference_allows(&scopes, req, p);
            let got = set.check(&r, p).is_some();
            prop_assert_eq!(got, want, "scopes {:?} {} on {:?}", scopes, req, p);
            if let Some(m) = set.check(&r, p) {
                // The reported scope really grants it, on its own.
                let alone = ScopeSet::new([&scopes[m.scope]]);
                let narrow_elsewhere = m.via == relayauth_mount::scope::Via::Literal;
                prop_assert!(alone.check(&r, p).is_some() || narrow_elsewhere);
            }
        }
    }

    #[test]
    fn visibility_agrees_with_reference(
        scopes in prop::collection::vec(scope(), 0..8),
        paths in prop::collection::vec(path(), 1..6),
    ) {
        let set = ScopeSet::new(&scopes);
        for p in &paths {
            prop_assert_eq!(set.visible(p.as_bytes()), reference_visible(&scopes, p), "scopes {:?} path {:?}", scopes, p);
            for req in ["fs:read", "fs:write", "fs:create", "fs:delete"] {
                let r = Requirement::parse(req).unwrap();
                let granted = set.check_exact(&r, p.as_bytes()).is_some();
                prop_assert_eq!(granted, reference_allows_exact(&scopes, req, p));
                // The decision code skips the visibility walk when a grant matches.
                prop_assert!(!granted || set.visible(p.as_bytes()), "granted but not visible: {:?} {}", scopes, p);
            }
        }
    }

    #[test]
    fn a_subtree_granted_as_a_whole_grants_every_path_in_it(
        scopes in prop::collection::vec(scope(), 0..8),
        dir in path(),
        below in prop::collection::vec(path(), 1..6),
    ) {
        let set = ScopeSet::new(&scopes);
        let dir = dir.trim().trim_end_matches('/').to_owned();
        let dir = if dir.is_empty() { "/".to_owned() } else { dir };
        for req in ["fs:read", "fs:write", "fs:create", "fs:delete"] {
            let r = Requirement::parse(req).unwrap();
            let index = r.known_index().unwrap();
            let whole = set.grants_all_below(index, dir.as_bytes());
            let visible = set.all_visible_below(dir.as_bytes());
            for b in &below {
                let rest = b.trim_start_matches('/');
                if rest.is_empty() {
                    continue;
                }
                let p = if dir == "/" { format!("/{rest}") } else { format!("{dir}/{rest}") };
                if whole {
                    prop_assert!(set.check_exact(&r, p.as_bytes()).is_some(), "{:?}: {} claimed below {:?} but not on {:?}", scopes, req, dir, p);
                }
                if visible {
                    prop_assert!(set.visible(p.as_bytes()), "{:?}: all visible below {:?} but not {:?}", scopes, dir, p);
                }
            }
        }
    }

    #[test]
    fn within_implies_every_child_path_is_granted_by_parent(
        child in prop::collection::vec(scope(), 0..4),
        parent in prop::collection::vec(scope(), 0..6),
        paths in prop::collection::vec(path(), 1..12),
    ) {
        let answer = within(&child, &parent);
        if answer.within {
            for req in ["fs:read", "fs:write", "fs:create", "fs:delete", "fs:manage", "ops:read", "ops:replay", "search:read", "search:query"] {
                for p in &paths {
                    if reference_allows(&child, req, p) {
                        prop_assert!(reference_allows(&parent, req, p),
                            "child {:?} within parent {:?}, but {} on {:?} only for the child", child, parent, req, p);
                    }
                }
            }
        }
        // Reported offenders really are child scopes, and within means none.
        prop_assert_eq!(answer.within, answer.offending.is_empty() && answer.invalid.is_empty());
        for s in answer.offending.iter().chain(&answer.invalid) {
            prop_assert!(child.contains(s));
        }
    }

    #[test]
    fn derived_children_within_implies_granted(
        (child, parent) in prop::collection::vec(scope(), 1..5).prop_flat_map(derived_child),
        paths in prop::collection::vec(path(), 1..12),
    ) {
        let answer = within(&child, &parent);
        if answer.within {
            for req in ["fs:read", "fs:write", "fs:create", "fs:delete", "fs:manage", "ops:read", "ops:replay", "search:read", "search:query"] {
                for p in &paths {
                    if reference_allows(&child, req, p) {
                        prop_assert!(reference_allows(&parent, req, p),
                            "child {:?} within parent {:?}, but {} on {:?} only for the child", child, parent, req, p);
                    }
                }
            }
        }
    }

    #[test]
    fn every_scope_is_within_itself_when_valid(s in scope()) {
        let answer = within([&s], [&s]);
        let valid = relayauth_mount::scope::Scope::parse(&s).is_valid();
        prop_assert_eq!(answer.within, valid, "{:?}", s);
    }
}
