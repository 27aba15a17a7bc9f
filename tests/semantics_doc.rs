//! docs/SEMANTICS.md's checked tables, each row asserted against the code that enforces it: the
//! document can only say what the decisions do.

use std::collections::BTreeMap;

use relayauth_mount::authz::{self, Forbidden, Op, Place, Verdict};
use relayauth_mount::scope::{Requirement, ScopeSet};

/// The rows of the table between `<!-- table:NAME -->` and `<!-- end -->`, cells trimmed and
/// stripped of backticks, header and separator rows skipped.
fn table(name: &str) -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SEMANTICS.md"))
        .expect("docs/SEMANTICS.md");
    let start = format!("<!-- table:{name} -->");
    let body = doc
        .split(&start)
        .nth(1)
        .unwrap_or_else(|| panic!("no table {name} in docs/SEMANTICS.md"))
        .split("<!-- end -->")
        .next()
        .unwrap();
    let rows: Vec<Vec<String>> = body
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "table {name} is empty");
    rows
}

const FS_ACTIONS: [&str; 6] = ["read", "write", "create", "delete", "manage", "*"];

fn list(cell: &str) -> Vec<String> {
    cell.split(',').map(|s| s.trim().to_owned()).collect()
}

/// Which fs actions satisfy each requirement, as the table says.
fn granted_by() -> BTreeMap<String, Vec<String>> {
    table("requirements")
        .into_iter()
        .map(|row| (row[0].clone(), list(&row[1])))
        .collect()
}

#[test]
fn the_requirements_table_is_what_the_scope_engine_grants() {
    let rows = granted_by();
    assert_eq!(rows.len(), 4);
    for (req, actions) in rows {
        let r = Requirement::parse(&req).unwrap();
        for action in FS_ACTIONS {
            let scopes = ScopeSet::new([format!("relayfile:fs:{action}:/d/**")]);
            let granted = scopes.check(&r, "/d/x").is_some();
            assert_eq!(
                granted,
                actions.iter().any(|a| a == action),
                "{req} by fs:{action}: the document and the engine disagree"
            );
        }
    }
}

fn op_named(name: &str) -> Op {
    match name {
        "see" => Op::See,
        "read" => Op::Read,
        "write" => Op::Write,
        "create" => Op::Create,
        "delete" => Op::Delete,
        other => panic!("unknown decision {other:?} in the operations table"),
    }
}

#[test]
fn the_operations_table_is_what_the_decisions_require() {
    let satisfied = granted_by();
    for row in table("operations") {
        let (what, op, needs) = (&row[0], op_named(&row[1]), &row[2]);
        let decide = |scopes: &[String]| {
            authz::decide(&ScopeSet::new(scopes), b"/d/x", &Place::Content, op).allowed()
        };
        if needs == "the path is visible" {
            assert!(decide(&["relayfile:fs:read:/d/**".to_owned()]), "{what}");
            assert!(!decide(&["relayfile:fs:read:/e/**".to_owned()]), "{what}");
            continue;
        }
        let action = needs.strip_prefix("fs:").unwrap();
        assert!(
            decide(&[format!("relayfile:fs:{action}:/d/**")]),
            "{what} is not allowed by {needs}"
        );
        // Every other plain action together does not make it.
        let others: Vec<String> = ["read", "write", "create", "delete"]
            .iter()
            .filter(|a| !satisfied[needs.as_str()].iter().any(|s| s == *a))
            .map(|a| format!("relayfile:fs:{a}:/d/**"))
            .collect();
        assert!(!decide(&others), "{what} is allowed by {others:?}");
    }
}

#[test]
fn the_errno_table_is_what_the_verdicts_map_to() {
    let scopes = ScopeSet::new(["relayfile:fs:read:/d/**"]);
    for row in table("errnos") {
        let (situation, errno) = (&row[0], &row[1]);
        let d = if situation.contains("cannot see") {
            authz::decide(&scopes, b"/hidden/x", &Place::Content, Op::Read)
        } else if situation.contains("refused for everyone") {
            authz::decide(
                &scopes,
                b"/d/x",
                &Place::Content,
                Op::Forbidden(Forbidden::HardLink),
            )
        } else if situation.contains("refused") {
            authz::decide(&scopes, b"/d/x", &Place::Content, Op::Write)
        } else {
            panic!("unknown situation {situation:?}")
        };
        let want = match errno.as_str() {
            "ENOENT" => libc::ENOENT,
            "EACCES" => libc::EACCES,
            "EPERM" => libc::EPERM,
            other => panic!("unknown errno {other}"),
        };
        assert_ne!(d.verdict(), Verdict::Allow, "{situation}");
        assert_eq!(d.errno(), Some(want), "{situation}");
    }
}

/// Every `fn` under `dir` (recursively), by name.
fn functions_in(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            functions_in(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for rest in text.split("fn ").skip(1) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
    }
}

/// The threat model in README.md names tests; each must exist (a renamed or deleted test would
/// leave a class without the proof the README claims).
#[test]
fn every_test_the_threat_model_names_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let model = readme
        .split("## Threat model")
        .nth(1)
        .expect("a threat model section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut defined = std::collections::BTreeSet::new();
    functions_in(&root.join("tests"), &mut defined);
    functions_in(&root.join("src"), &mut defined);
    let named: Vec<&str> = model
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|t| t.rsplit("::").next().unwrap_or(t))
        .filter(|t| {
            t.matches('_').count() >= 2
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(
        named.len() > 50,
        "the threat model names {} tests",
        named.len()
    );
    let missing: Vec<&&str> = named.iter().filter(|n| !defined.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "README's threat model names tests that do not exist: {missing:?}"
    );
}
