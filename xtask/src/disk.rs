//! Free disk space, looked at before long runs: a disk that fills up otherwise shows only late,
//! as a compiler's "No space left on device" in the middle of a build (how a CI run once ended).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

const GIB: f64 = (1u64 << 30) as f64;

/// Warns, on one line per filesystem, where the places in `needs` (a name, a directory, and the
/// GiB a cold run writes there) add up to more than the filesystem has free. Only a warning:
/// what is already built or cached needs less, and the run itself says what failed.
pub fn warn_if_short(run: &str, needs: &[(&str, &Path, f64)]) {
    let mut per_filesystem: BTreeMap<String, (u64, f64, Vec<&str>)> = BTreeMap::new();
    for (name, dir, gib) in needs {
        match free(dir) {
            Ok((mount, available)) => {
                let entry = per_filesystem.entry(mount).or_insert((available, 0.0, Vec::new()));
                entry.1 += gib;
                entry.2.push(name);
            }
            Err(e) => eprintln!("warning: could not tell the free space for {name} ({}): {e:#}", dir.display()),
        }
    }
    for (mount, (available, need, names)) in per_filesystem {
        let free_gib = available as f64 / GIB;
        if free_gib < need {
            eprintln!(
                "warning: {free_gib:.1} GiB free on {mount}, where a cold `{run}` writes about {need:.0} GiB ({}); \
                 it may run out of space midway",
                names.join(", ")
            );
        }
    }
}

/// The mount point holding `dir` (or its nearest existing ancestor) and the bytes free there.
fn free(dir: &Path) -> Result<(String, u64)> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let sh = Shell::new()?;
    let out = cmd!(sh, "df --output=target,avail -B1 {existing}").quiet().read().context("running df")?;
    parse_df(&out).context("reading df's output")
}

fn parse_df(out: &str) -> Option<(String, u64)> {
    let mut fields = out.lines().nth(1)?.split_whitespace();
    let mount = fields.next()?.to_string();
    Some((mount, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn df_output_gives_the_mount_point_and_the_bytes_free() {
        let out = "Mounted on        Avail\n/          9512345600\n";
        assert_eq!(super::parse_df(out), Some(("/".to_string(), 9_512_345_600)));
        assert_eq!(super::parse_df("Mounted on Avail\n"), None);
    }

    #[test]
    fn the_free_space_of_a_path_not_made_yet_is_its_parents() {
        let (mount, _) = super::free(&std::env::temp_dir().join("not/made/yet")).unwrap();
        assert!(mount.starts_with('/'), "{mount}");
    }
}
