//! `--disk path=FILE[,readonly=on]`: parsing and opening the VM's disk images.

use std::path::PathBuf;
use std::sync::Arc;

use ftvm_devices::disk::Disk;

use crate::error::CliError;

/// Most `--disk` options.
pub const MAX_DISKS: usize = 4;

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// Writes are refused (the guest sees a read-only disk).
    pub readonly: bool,
}

/// Parses `path=FILE[,readonly=on|off]`.
pub fn parse_disk_spec(spec: &str) -> Result<DiskSpec, CliError> {
    let bad = |why: String| CliError::Usage(format!("--disk {spec}: {why}"));
    let mut path = None;
    let mut readonly = false;
    for part in spec.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(bad(format!(
                "'{part}' is not key=value (expected path=FILE[,readonly=on])"
            )));
        };
        match key {
            "path" if value.is_empty() => return Err(bad("path= is empty".into())),
            "path" if path.is_some() => return Err(bad("path= given twice".into())),
            "path" => path = Some(PathBuf::from(value)),
            "readonly" => {
                readonly = match value {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    other => return Err(bad(format!("readonly={other}: expected on or off"))),
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (known: path, readonly)"
                )))
            }
        }
    }
    let path = path.ok_or_else(|| bad("path=FILE is required".into()))?;
    Ok(DiskSpec { path, readonly })
}

/// Parses and opens every `--disk` (in order: the guest's disk 0, 1, ...).
pub fn open_disks(specs: &[String]) -> Result<Vec<Arc<Disk>>, CliError> {
    if specs.len() > MAX_DISKS {
        return Err(CliError::Usage(format!(
            "{} --disk options given: at most {MAX_DISKS} disks",
            specs.len()
        )));
    }
    let mut disks = Vec::new();
    for spec in specs {
        let s = parse_disk_spec(spec)?;
        let disk = Disk::open(&s.path, s.readonly)
            .map_err(|e| CliError::Usage(format!("--disk {spec}: {e}")))?;
        disks.push(Arc::new(disk));
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        assert_eq!(
            parse_disk_spec("path=/a/b.img").unwrap(),
            DiskSpec {
                path: "/a/b.img".into(),
                readonly: false
            }
        );
        assert!(parse_disk_spec("path=x,readonly=on").unwrap().readonly);
        for (bad, why) in [
            ("/a/b.img", "not key=value"),
            ("readonly=on", "path=FILE is required"),
            ("path=", "empty"),
            ("path=x,readonly=maybe", "expected on or off"),
            ("path=x,cache=none", "unknown key 'cache'"),
            ("path=x,path=y", "twice"),
        ] {
            let e = parse_disk_spec(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        let e = open_disks(&["path=/nonexistent/x.img".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/x.img") && e.contains("No such file"),
            "{e}"
        );
        let five = vec!["path=x".to_string(); 5];
        assert!(open_disks(&five)
            .unwrap_err()
            .to_string()
            .contains("at most 4"));
    }
}
