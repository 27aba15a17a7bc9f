//! Relayfile VFS path normalization and directory containment (contract v1).
//!
//! Normalization is deliberately shallow, as the contract pins it: an empty path becomes `/`, a
//! missing leading `/` is added and one trailing `/` is trimmed. Dot segments and interior empty
//! segments are kept as literal names: they never alias another path, so nothing here can be
//! tricked into treating `/a/../b` as `/b`.

/// Normalize a relayfile path as contract v1 does.
pub fn normalize(path: &str) -> String {
    let path = path.trim();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    out.push_str(path);
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// Whether `candidate` is `base` or below it, after normalizing both.
pub fn contains(base: &str, candidate: &str) -> bool {
    let base = normalize(base);
    let candidate = normalize(candidate);
    base == "/"
        || candidate == base
        || (candidate.starts_with(&base) && candidate.as_bytes().get(base.len()) == Some(&b'/'))
}

/// The parent directory of a canonical path (`/` for top-level names and for `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `dir` joined with a child `name` (`/` + name at the root).
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_and_join() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
