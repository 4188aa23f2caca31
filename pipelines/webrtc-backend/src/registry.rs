//! Registered devices and the JSON file that keeps them across restarts.
//! The file is `{"devices": [{"device_id", "device_name", "device_type"}]}`,
//! replaced atomically (temporary file in the same folder, then rename).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What a registration says about a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: String,
    pub device_name: String,
    pub device_type: String,
}

#[derive(Serialize, Deserialize)]
struct RegistryFile {
    devices: Vec<DeviceInfo>,
}

/// Checks a registration body; the error names the field at fault.
pub fn parse_registration(body: &[u8]) -> Result<DeviceInfo, (String, String)> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| (String::new(), format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err((
            String::new(),
            "body must be a JSON object {\"device_id\", \"device_name\", \"device_type\"}".into(),
        ));
    };
    let field = |obj: &Map<String, Value>, name: &str, max: usize| match obj.get(name) {
        None | Some(Value::Null) => Err((name.to_owned(), format!("missing field \"{name}\""))),
        Some(Value::String(s))
            if !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control) =>
        {
            Ok(s.clone())
        }
        Some(_) => Err((
            name.to_owned(),
            format!(
                "field \"{name}\" must be a non-empty string of at most {max} bytes without control characters"
            ),
        )),
    };
    let device_id = field(&obj, "device_id", 128)?;
    if device_id.chars().any(char::is_whitespace) {
        return Err((
            "device_id".into(),
            "field \"device_id\" must not contain whitespace".into(),
        ));
    }
    Ok(DeviceInfo {
        device_id,
        device_name: field(&obj, "device_name", 256)?,
        device_type: field(&obj, "device_type", 64)?,
    })
}

/// Where registrations live when `--data` is not given:
/// `$XDG_STATE_HOME/vcambridge/webrtc-backend.json`, else `~/.local/state/...`.
pub fn default_path() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/state"),
            _ => {
                return Err(
                    "neither XDG_STATE_HOME nor HOME is set: give the registration file with --data FILE"
                        .into(),
                );
            }
        },
    };
    Ok(base.join("vcambridge").join("webrtc-backend.json"))
}

/// Reads the registrations; a missing file is an empty registry.
pub fn load(path: &Path) -> Result<Vec<DeviceInfo>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(format!(
                "cannot read the device registry {}: {e}; fix its permissions or pick another file with --data FILE",
                path.display()
            ));
        }
    };
    let file: RegistryFile = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "the device registry {} is not valid ({e}); repair or remove it, or pick another file with --data FILE",
            path.display()
        )
    })?;
    Ok(file.devices)
}

/// Replaces the file with `devices`: write a temporary file beside it, sync, rename.
pub fn save(path: &Path, devices: &[DeviceInfo]) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot {what} for the device registry {}: {e}; make its folder writable or pick another file with --data FILE",
            path.display()
        )
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("create the folder", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "registry".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let body = serde_json::to_vec_pretty(&RegistryFile {
        devices: devices.to_vec(),
    })
    .map_err(|e| fail("encode", std::io::Error::other(e)))?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write a new version", e));
    }
    // Make the rename itself durable; a failure here loses nothing already visible.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_names_the_missing_field() {
        let (field, msg) = parse_registration(br#"{"device_id":"cam1","device_type":"camera"}"#)
            .expect_err("no name");
        assert_eq!(field, "device_name");
        assert!(msg.contains("device_name"), "{msg}");
        let (field, _) =
            parse_registration(br#"{"device_id":"a b","device_name":"n","device_type":"t"}"#)
                .expect_err("space in id");
        assert_eq!(field, "device_id");
        let (field, _) =
            parse_registration(br#"{"device_id":7,"device_name":"n","device_type":"t"}"#)
                .expect_err("number id");
        assert_eq!(field, "device_id");
        assert!(parse_registration(b"nope").is_err());
        let ok = parse_registration(
            br#"{"device_id":"cam1","device_name":"Hall","device_type":"camera"}"#,
        )
        .expect("valid");
        assert_eq!(ok.device_name, "Hall");
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/reg.json");
        assert_eq!(load(&path), Ok(Vec::new()));
        let devs = vec![DeviceInfo {
            device_id: "cam1".into(),
            device_name: "Hall".into(),
            device_type: "camera".into(),
        }];
        save(&path, &devs).expect("save");
        assert_eq!(load(&path), Ok(devs));
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("reg.json")]);
        std::fs::write(&path, "{garbage").expect("write");
        let err = load(&path).expect_err("garbage");
        assert!(err.contains("--data"), "{err}");
    }
}
