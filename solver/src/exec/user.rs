//! USER for RUN: `name`, `uid`, `name:group`, `uid:gid`, resolved through
//! the rootfs's /etc/passwd and /etc/group as runc does.

use super::error::{ExecError, Result};
use super::fsview::FsView;

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from /etc/group memberships).
    pub additional_gids: Vec<u32>,
    /// Home directory, for HOME when the environment has none.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn lines(data: Option<Vec<u8>>) -> Vec<Vec<String>> {
    String::from_utf8_lossy(&data.unwrap_or_default())
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Resolves a USER value against the view's /etc/passwd and /etc/group.
pub fn resolve(view: &FsView, spec: &str) -> Result<ExecUser> {
    let passwd: Vec<PasswdEntry> = lines(view.read_file("/etc/passwd")?)
        .into_iter()
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.clone(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let groups: Vec<GroupEntry> = lines(view.read_file("/etc/group")?)
        .into_iter()
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.clone(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    // runc's defaults: uid 0, gid 0, home /.
    let (uid, mut gid, name, home) = match user.parse::<u32>() {
        Ok(n) => match passwd.iter().find(|p| p.uid == n) {
            Some(p) => (n, p.gid, Some(p.name.clone()), p.home.clone()),
            None => (n, 0, None, "/".to_string()),
        },
        Err(_) => match passwd.iter().find(|p| p.name == user) {
            Some(p) => (p.uid, p.gid, Some(p.name.clone()), p.home.clone()),
            None => {
                return Err(ExecError::User(format!(
                    "unable to find user {user}: no matching entries in passwd file"
                )))
            }
        },
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    ExecError::User(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        };
    }
    // Supplementary groups come with a known user name, unless the group
    // was given explicitly (then, as in runc, only that group).
    let mut additional_gids = Vec::new();
    if group.is_none() {
        if let Some(name) = &name {
            for g in &groups {
                if g.members.iter().any(|m| m == name)
                    && g.gid != gid
                    && !additional_gids.contains(&g.gid)
                {
                    additional_gids.push(g.gid);
                }
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn view() -> (tempfile::TempDir, FsView) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            t.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\nstaff:x:50:other,app\n",
        )
        .unwrap();
        let v = FsView::new(vec![t.path().to_path_buf()]);
        (t, v)
    }

    #[test]
    fn users_resolve_like_runc() {
        let (_t, v) = view();
        let u = resolve(&v, "app").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone(), u.home.as_str()),
            (1000, 1001, vec![10, 50], "/home/app")
        );
        let u = resolve(&v, "1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        let u = resolve(&v, "4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let u = resolve(&v, "app:wheel").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 10, 0));
        let u = resolve(&v, "1000:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        let u = resolve(&v, "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert!(resolve(&v, "nobody")
            .unwrap_err()
            .to_string()
            .contains("unable to find user nobody"));
        assert!(resolve(&v, "app:nogroup")
            .unwrap_err()
            .to_string()
            .contains("unable to find group nogroup"));
    }
}
