//! A light look at the CNI configuration directory for `Status` (NetworkReady): is there a
//! network config berth could use? The network crate owns running CNI.

use std::path::Path;

/// The name of the network the lexicographically first usable config file defines,
/// `Ok(None)` when there is none, or why the chosen file is unusable.
pub fn find_network_config(dir: &Path) -> Result<Option<String>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let Some(first) = files.first() else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(first).map_err(|e| format!("read {}: {e}", first.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", first.display()))?;
    let name = v
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("{}: no network name", first.display()))?;
    let has_plugins = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .is_some_and(|p| !p.is_empty())
        || v.get("type").is_some();
    if !has_plugins {
        return Err(format!("{}: defines no plugins", first.display()));
    }
    Ok(Some(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_file_decides() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_network_config(&d.path().join("missing")), Ok(None));
        assert_eq!(find_network_config(d.path()), Ok(None));
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(find_network_config(d.path()), Ok(Some("b".into())));
        std::fs::write(d.path().join("10-a.conf"), "{").unwrap();
        assert!(
            find_network_config(d.path())
                .unwrap_err()
                .contains("10-a.conf")
        );
    }
}
