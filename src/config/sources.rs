//! Where settings come from: the TOML file, the environment (`CALLENGINE_…`, `DATABASE_URL`),
//! merged over the defaults as a JSON tree before it is typed.

use super::*;

pub(super) fn read_toml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|err| ConfigError::Toml {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    serde_json::to_value(table).map_err(|err| ConfigError::Toml {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// Overlays `layer` onto `base`, table by table.
pub(super) fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (key, value) in layer {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Applies `CALLENGINE_*` and `DATABASE_URL` variables; returns which variable set each key.
pub(super) fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name == "DATABASE_URL"
                || (name.starts_with(ENV_PREFIX)
                    && name != CONFIG_FILE_ENV
                    && !name.starts_with(LOADGEN_ENV_PREFIX))
        })
        .collect();
    // DATABASE_URL first so that CALLENGINE_DATABASE__URL, applied later, wins.
    vars.sort_by_key(|(name, _)| name != "DATABASE_URL");
    let mut origins = BTreeMap::new();
    for (name, raw) in vars {
        let path: Vec<String> = if name == "DATABASE_URL" {
            vec!["database".into(), "url".into()]
        } else {
            name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect()
        };
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var: name,
                message: "empty key segment".into(),
            });
        }
        set_path(tree, &path, &raw).map_err(|message| ConfigError::Env {
            var: name.clone(),
            message,
        })?;
        origins.insert(path.join("."), name);
    }
    Ok(origins)
}

/// Sets one key from an environment string, typed after the value it replaces.
pub(super) fn set_path(tree: &mut Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut node = tree;
    let (last, parents) = path.split_last().ok_or("empty key")?;
    for key in parents {
        let map = node.as_object_mut().ok_or("not a table")?;
        node = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let map = node
        .as_object_mut()
        .ok_or_else(|| format!("`{}` is not a table", parents.join(".")))?;
    let value = match map.get(last) {
        Some(Value::Bool(_)) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(format!("expected true or false, got {raw:?}")),
        },
        Some(Value::Number(n)) if n.is_f64() => raw
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("expected a number, got {raw:?}"))?,
        Some(Value::Number(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("expected an integer, got {raw:?}"))?,
        Some(Value::Object(_)) | Some(Value::Array(_)) => {
            return Err("this key is a table or list and cannot be set from the environment".into())
        }
        _ => Value::String(raw.to_string()),
    };
    map.insert(last.clone(), value);
    Ok(())
}
