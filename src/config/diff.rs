//! What a change of a bundle would change, package by package and file by
//! file: the comparison of two renders. Pure.

use std::fmt::Write as _;

use similar::TextDiff;

use super::{Package, Rendered};

/// How one package changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageChange {
    /// The service the package is for; empty for every node.
    pub service: String,
    /// Its id now, if it exists now.
    pub from: Option<String>,
    /// Its id after the change, if it still exists.
    pub to: Option<String>,
    /// Each changed file: its path and a unified diff (or a note for
    /// binary content and modes).
    pub files: Vec<(String, String)>,
}

impl PackageChange {
    /// The same id before and after: no node switches for it.
    pub fn unchanged(&self) -> bool {
        self.from == self.to
    }
}

/// The changes from `before` to `after`, one entry per package either has,
/// common first, then by service.
pub fn diff(before: &Rendered, after: &Rendered) -> Vec<PackageChange> {
    let mut services: Vec<&str> = before
        .packages
        .iter()
        .chain(&after.packages)
        .map(|p| p.service.as_str())
        .collect();
    services.sort();
    services.dedup();
    let find = |r: &'_ Rendered, s: &str| r.packages.iter().find(|p| p.service == s).cloned();
    services
        .into_iter()
        .map(|service| {
            let (old, new) = (find(before, service), find(after, service));
            PackageChange {
                service: service.to_owned(),
                from: old.as_ref().map(|p| p.id.clone()),
                to: new.as_ref().map(|p| p.id.clone()),
                files: files(old.as_ref(), new.as_ref()),
            }
        })
        .collect()
}

fn files(old: Option<&Package>, new: Option<&Package>) -> Vec<(String, String)> {
    let mut paths: Vec<&String> = old
        .iter()
        .chain(new.iter())
        .flat_map(|p| p.files.keys())
        .collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for path in paths {
        let a = old.and_then(|p| p.files.get(path));
        let b = new.and_then(|p| p.files.get(path));
        if a == b {
            continue;
        }
        let text = |f: Option<&super::File>| {
            f.map(|f| String::from_utf8(f.content.clone()).map_err(|_| ()))
                .transpose()
        };
        let mut body = String::new();
        if let (Some(a), Some(b)) = (a, b)
            && a.mode != b.mode
        {
            let _ = writeln!(body, "mode {:o} → {:o}", a.mode, b.mode);
        }
        match (text(a), text(b)) {
            (Ok(x), Ok(y)) => {
                let (x, y) = (x.unwrap_or_default(), y.unwrap_or_default());
                let (from, to) = (
                    if a.is_some() {
                        format!("a/{path}")
                    } else {
                        "/dev/null".into()
                    },
                    if b.is_some() {
                        format!("b/{path}")
                    } else {
                        "/dev/null".into()
                    },
                );
                if x != y {
                    body.push_str(
                        &TextDiff::from_lines(&x, &y)
                            .unified_diff()
                            .context_radius(3)
                            .header(&from, &to)
                            .to_string(),
                    );
                }
            }
            _ => body.push_str("binary content differs\n"),
        }
        out.push((path.clone(), body));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::File;

    fn package(service: &str, id: &str, files: &[(&str, &str)]) -> Package {
        Package {
            service: service.into(),
            id: id.into(),
            content_digest: String::new(),
            files: files
                .iter()
                .map(|(p, c)| {
                    (
                        (*p).to_owned(),
                        File {
                            mode: 0o644,
                            content: c.as_bytes().to_vec(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn rendered(packages: Vec<Package>) -> Rendered {
        Rendered {
            packages,
            expanded: BTreeMap::new(),
            values: BTreeMap::new(),
            input_digest: String::new(),
        }
    }

    #[test]
    fn a_diff_names_each_package_s_ids_and_each_changed_file_line_by_line() {
        let before = rendered(vec![
            package(
                "",
                "web--cfg.1",
                &[("etc/web.conf", "port = 80\nname = web\n")],
            ),
            package("db", "web-db--cfg.1", &[("etc/db.conf", "size = 1\n")]),
        ]);
        let after = rendered(vec![
            package(
                "",
                "web--cfg.2",
                &[
                    ("etc/web.conf", "port = 8080\nname = web\n"),
                    ("etc/new", "x\n"),
                ],
            ),
            package("db", "web-db--cfg.1", &[("etc/db.conf", "size = 1\n")]),
        ]);
        let changes = diff(&before, &after);
        assert_eq!(changes.len(), 2);
        let common = &changes[0];
        assert_eq!(
            (common.from.as_deref(), common.to.as_deref()),
            (Some("web--cfg.1"), Some("web--cfg.2"))
        );
        assert_eq!(common.files.len(), 2);
        let (path, body) = &common.files[1];
        assert_eq!(path, "etc/web.conf");
        assert!(body.contains("-port = 80\n+port = 8080\n"), "{body}");
        assert!(body.contains("--- a/etc/web.conf"), "{body}");
        assert!(
            common.files[0].1.contains("--- /dev/null"),
            "{:?}",
            common.files[0]
        );
        assert!(changes[1].unchanged() && changes[1].files.is_empty());
    }
}
