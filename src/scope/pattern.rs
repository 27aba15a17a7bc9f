//! Scope path patterns: the fourth part of a scope such as `relayfile:fs:read:/github/**`.
//!
//! The grammar is the relayfile path contract v1. A pattern is `*` or an absolute path whose
//! segments are non-empty, are not `.` or `..`, and carry a glob only in the last segment, and
//! only as exactly `*` (every descendant at any depth), exactly `**` (the directory and every
//! descendant) or a single trailing `*` after a non-empty name (a raw byte prefix that may cross
//! `/`). Everything else is invalid, and an invalid pattern matches nothing: the contract
//! treats mid-path globs as a hard "no" so that a scope minted for a laxer matcher cannot widen
//! access here.
//!
//! Matching is on bytes, case-sensitive and without any normalization: the caller decides what
//! path it asks about. Containment ([`PathPattern::within`]) compares two patterns as sets of
//! byte strings, never by treating a pattern as a path.

use std::fmt;

/// A valid scope path pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// `*`: every path, including the empty (workspace-level) path.
    Any,
    /// `/a/b.json` or `/`: exactly that path.
    Exact(Box<str>),
    /// `/d/**`: `/d` itself and everything below it (`/**`: the whole tree).
    Subtree(Dir),
    /// `/d/*`: everything below `/d` at any depth, but not `/d` itself.
    Descendants(Dir),
    /// `/d/name*`: every path whose bytes start with `/d/name` (may cross `/`).
    Prefix(Box<str>),
}

/// A directory named by a `/**` or `/*` pattern, with its child prefix precomputed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dir {
    /// The directory node, `/` for the root.
    pub node: Box<str>,
    /// What every path below the node starts with: `node + "/"`, or `/` for the root.
    pub child_prefix: Box<str>,
}

impl Dir {
    fn new(node: &str) -> Dir {
        let node = if node.is_empty() { "/" } else { node };
        let child_prefix = if node == "/" {
            "/".to_owned()
        } else {
            format!("{node}/")
        };
        Dir {
            node: node.into(),
            child_prefix: child_prefix.into(),
        }
    }
}

/// Which grammar rule an invalid scope path breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRule {
    /// The path is empty (e.g. `relayfile:fs:read:`).
    Empty,
    /// The path neither is `*` nor starts with `/`.
    NotAbsolute,
    /// Two slashes in a row.
    EmptySegment,
    /// The path ends with `/` (only `/` itself may).
    TrailingSlash,
    /// A `.` segment.
    DotSegment,
    /// A `..` segment.
    DotDotSegment,
    /// A glob in a segment other than the last one.
    MidPathGlob,
    /// `**` that is not the whole last segment (e.g. `/github/x**`).
    DoubleStarInName,
    /// A `*` that is not the final byte of the last segment (e.g. `/github/re*po`).
    GlobInsideName,
}

impl PathRule {
    /// A stable identifier for programs (`mid_path_glob`, ...).
    pub fn code(self) -> &'static str {
        match self {
            PathRule::Empty => "empty_path",
            PathRule::NotAbsolute => "not_absolute",
            PathRule::EmptySegment => "empty_segment",
            PathRule::TrailingSlash => "trailing_slash",
            PathRule::DotSegment => "dot_segment",
            PathRule::DotDotSegment => "dot_dot_segment",
            PathRule::MidPathGlob => "mid_path_glob",
            PathRule::DoubleStarInName => "double_star_in_name",
            PathRule::GlobInsideName => "glob_inside_name",
        }
    }
}

/// Why a scope path is invalid: the rule, and the 1-based segment that breaks it (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    pub rule: PathRule,
    /// 1-based index of the offending segment (`/github/*/issues`: segment 2).
    pub segment: Option<usize>,
    /// The offending segment's text.
    pub segment_text: Option<String>,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seg = match (&self.segment, &self.segment_text) {
            (Some(i), Some(t)) => format!(" (segment {i}, {t:?})"),
            _ => String::new(),
        };
        let what = match self.rule {
            PathRule::Empty => "the scope path is empty; write `*` for everything".to_owned(),
            PathRule::NotAbsolute => "the scope path must be `*` or start with `/`".to_owned(),
            PathRule::EmptySegment => format!("empty path segment (`//`){seg}"),
            PathRule::TrailingSlash => {
                "trailing `/`; write `/dir/**` for a directory and everything below it".to_owned()
            }
            PathRule::DotSegment => format!("`.` segments are not allowed{seg}"),
            PathRule::DotDotSegment => format!("`..` segments are not allowed{seg}"),
            PathRule::MidPathGlob => {
                format!("mid-path glob{seg}: a glob may only appear in the last segment")
            }
            PathRule::DoubleStarInName => {
                format!("`**` must be the whole last segment{seg}; write `/dir/**` or `/dir/name*`")
            }
            PathRule::GlobInsideName => format!(
                "`*` may only end the last segment{seg}; write `/dir/name*` for a name prefix"
            ),
        };
        f.write_str(&what)
    }
}

impl std::error::Error for PathError {}

fn err(rule: PathRule, segment: Option<(usize, &str)>) -> PathError {
    PathError {
        rule,
        segment: segment.map(|(i, _)| i),
        segment_text: segment.map(|(_, t)| t.to_owned()),
    }
}

impl PathPattern {
    /// Parse a scope path. The caller trims surrounding whitespace first (the contract does).
    pub fn parse(path: &str) -> Result<PathPattern, PathError> {
        if path.is_empty() {
            return Err(err(PathRule::Empty, None));
        }
        if path == "*" {
            return Ok(PathPattern::Any);
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(err(PathRule::NotAbsolute, None));
        };
        if rest.is_empty() {
            return Ok(PathPattern::Exact("/".into()));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            let at = Some((i + 1, *seg));
            match *seg {
                "" if i == last => return Err(err(PathRule::TrailingSlash, None)),
                "" => return Err(err(PathRule::EmptySegment, at)),
                "." => return Err(err(PathRule::DotSegment, at)),
                ".." => return Err(err(PathRule::DotDotSegment, at)),
                _ => {}
            }
            if i != last && seg.contains('*') {
                return Err(err(PathRule::MidPathGlob, at));
            }
        }
        let name = segments[last];
        let parent = &path[..path.len() - name.len() - 1];
        match name {
            "**" => Ok(PathPattern::Subtree(Dir::new(parent))),
            "*" => Ok(PathPattern::Descendants(Dir::new(parent))),
            _ if !name.contains('*') => Ok(PathPattern::Exact(path.into())),
            _ if name.contains("**") => {
                Err(err(PathRule::DoubleStarInName, Some((last + 1, name))))
            }
            _ if name.find('*') == Some(name.len() - 1) => {
                Ok(PathPattern::Prefix(path[..path.len() - 1].into()))
            }
            _ => Err(err(PathRule::GlobInsideName, Some((last + 1, name)))),
        }
    }

    /// The deepest concrete directory this pattern implies (contract `mounts_at`).
    pub fn mounts_at(&self) -> &str {
        match self {
            PathPattern::Any => "/",
            PathPattern::Exact(p) => p,
            PathPattern::Subtree(d) | PathPattern::Descendants(d) => &d.node,
            PathPattern::Prefix(s) => match s.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &s[..i],
            },
        }
    }

    /// Whether this pattern matches `path` (bytes, exact, no normalization).
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(e) => path == e.as_bytes(),
            PathPattern::Subtree(d) => {
                path == d.node.as_bytes() || path.starts_with(d.child_prefix.as_bytes())
            }
            PathPattern::Descendants(d) => {
                path.len() > d.child_prefix.len() && path.starts_with(d.child_prefix.as_bytes())
            }
            PathPattern::Prefix(s) => path.starts_with(s.as_bytes()),
        }
    }

    /// Whether every string that starts with `x` (including `x`) is matched.
    fn matches_all_extensions(&self, x: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(_) => false,
            PathPattern::Subtree(d) => x.starts_with(&*d.child_prefix),
            PathPattern::Descendants(d) => {
                x.len() > d.child_prefix.len() && x.starts_with(&*d.child_prefix)
            }
            PathPattern::Prefix(t) => x.starts_with(&**t),
        }
    }

    /// Whether every string `x + w` with a non-empty `w` is matched.
    fn matches_all_strict_extensions(&self, x: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(_) => false,
            PathPattern::Subtree(d) | PathPattern::Descendants(d) => {
                x.starts_with(&*d.child_prefix)
            }
            PathPattern::Prefix(t) => x.starts_with(&**t),
        }
    }

    /// Containment: whether every path this pattern matches is matched by `parent`.
    ///
    /// `*` also matches the empty (workspace-level) path, which no `/...` pattern does, so `*`
    /// is within `*` only.
    pub fn within(&self, parent: &PathPattern) -> bool {
        match self {
            PathPattern::Any => matches!(parent, PathPattern::Any),
            PathPattern::Exact(x) => parent.matches(x.as_bytes()),
            PathPattern::Prefix(s) => parent.matches_all_extensions(s),
            PathPattern::Subtree(d) => {
                parent.matches(d.node.as_bytes()) && parent.matches_all_extensions(&d.child_prefix)
            }
            PathPattern::Descendants(d) => parent.matches_all_strict_extensions(&d.child_prefix),
        }
    }

    /// Whether this is the whole-namespace pattern `*`.
    pub fn is_any(&self) -> bool {
        matches!(self, PathPattern::Any)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Any => f.write_str("*"),
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Subtree(d) if &*d.node == "/" => f.write_str("/**"),
            PathPattern::Subtree(d) => write!(f, "{}/**", d.node),
            PathPattern::Descendants(d) if &*d.node == "/" => f.write_str("/*"),
            PathPattern::Descendants(d) => write!(f, "{}/*", d.node),
            PathPattern::Prefix(s) => write!(f, "{s}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        match PathPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "*", "/", "/a", "/a/**", "/**", "/*", "/a/*", "/a/b*", "/a*", "/a:b/**",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn errors_name_rule_and_segment() {
        let e = PathPattern::parse("/github/*/issues").unwrap_err();
        assert_eq!(e.rule, PathRule::MidPathGlob);
        assert_eq!(e.segment, Some(2));
        assert!(e.to_string().contains("segment 2"), "{e}");
        assert_eq!(
            PathPattern::parse("/github/x**").unwrap_err().rule,
            PathRule::DoubleStarInName
        );
        assert_eq!(
            PathPattern::parse("/git*hub/repos").unwrap_err().rule,
            PathRule::MidPathGlob
        );
        assert_eq!(
            PathPattern::parse("/github/re*po").unwrap_err().rule,
            PathRule::GlobInsideName
        );
        assert_eq!(
            PathPattern::parse("/a/*x").unwrap_err().rule,
            PathRule::GlobInsideName
        );
        assert_eq!(
            PathPattern::parse("/a/").unwrap_err().rule,
            PathRule::TrailingSlash
        );
        assert_eq!(
            PathPattern::parse("/a//b").unwrap_err().rule,
            PathRule::EmptySegment
        );
        assert_eq!(
            PathPattern::parse("**").unwrap_err().rule,
            PathRule::NotAbsolute
        );
    }

    #[test]
    fn containment_table() {
        let yes = [
            ("/github/repos/acme/*", "/github/*"),
            ("/github/acme-*", "/github/*"),
            ("/github/*", "/github/**"),
            ("/github/**", "/**"),
            ("/github*", "/**"),
            ("/github*", "/*"),
            ("/github*", "/git*"),
            ("/github/x", "/github/x*"),
            ("/github", "/github/**"),
            ("/github", "/github*"),
            ("/", "/**"),
            ("/", "/"),
            ("/**", "*"),
            ("*", "*"),
            ("/a/b/**", "/a/*"),
            ("/a/b*", "/a/*"),
            ("/a/**", "/a*"),
            ("/a/*", "/a*"),
            ("/a/*", "/a/*"),
        ];
        let no = [
            ("/github/**", "/github/*"),
            ("/github*", "/github/**"),
            ("/github*", "/github/*"),
            ("/github/x*", "/github/x/**"),
            ("*", "/**"),
            ("/**", "/*"),
            ("/**", "/"),
            ("/github/**", "/github"),
            ("/git*", "/github*"),
            ("/a/**", "/a/b*"),
            ("/a/*", "/a/b/**"),
            ("/a/*", "/a"),
            ("/github", "/github/*"),
            ("/gith", "/github*"),
        ];
        for (c, par) in yes {
            assert!(p(c).within(&p(par)), "{c} should be within {par}");
        }
        for (c, par) in no {
            assert!(!p(c).within(&p(par)), "{c} should not be within {par}");
        }
    }
}
