//! The admin bearer token: read from an environment variable or a file, and
//! never printed. `Debug` shows `AdminToken(<redacted>)`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::Rng;

use super::raw::RawAdmin;

/// Shorter tokens are refused: they can be guessed.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;
pub const MAX_ADMIN_TOKEN_BYTES: usize = 512;
const GENERATED_TOKEN_RANDOM_BYTES: usize = 32;

#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The secret that signs redemption codes. `Debug` never shows it.
#[derive(Clone)]
pub struct CodeSecret(Vec<u8>);

impl std::fmt::Debug for CodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSecret(<redacted>)")
    }
}

impl CodeSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Shortest code secret accepted.
pub const MIN_CODE_SECRET_BYTES: usize = crate::core::code::MIN_CODE_SECRET_BYTES;

/// Resolves the redemption-code secret; an error is `(key, reason)`.
pub fn resolve_code_secret(
    raw: &super::raw::RawLifecycle,
    base: &Path,
    data_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CodeSecret, (String, String)> {
    let text = match (&raw.code_secret_env, &raw.code_secret_file) {
        (Some(_), Some(_)) => {
            return Err((
                "lifecycle".into(),
                "set at most one of code_secret_env or code_secret_file".into(),
            ));
        }
        (Some(name), None) => env(name).ok_or_else(|| {
            (
                "lifecycle.code_secret_env".to_owned(),
                format!("environment variable {name} is not set"),
            )
        })?,
        (None, file) => {
            let (path, create) = match file {
                Some(f) if Path::new(f).is_absolute() => (
                    Path::new(f).to_owned(),
                    raw.create_code_secret_file.unwrap_or(false),
                ),
                Some(f) => (base.join(f), raw.create_code_secret_file.unwrap_or(false)),
                None => (
                    data_dir.join("redemption-code.secret"),
                    raw.create_code_secret_file.unwrap_or(true),
                ),
            };
            if create && !path.exists() {
                create_token_file(&path).map_err(|e| {
                    (
                        "lifecycle.code_secret_file".to_owned(),
                        format!("cannot create {}: {e}", path.display()),
                    )
                })?;
            }
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    (
                        "lifecycle.code_secret_file".to_owned(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        }
    };
    let text = text.trim();
    if text.len() < MIN_CODE_SECRET_BYTES {
        return Err((
            "lifecycle".into(),
            format!("the code secret must be at least {MIN_CODE_SECRET_BYTES} bytes"),
        ));
    }
    Ok(CodeSecret(text.as_bytes().to_vec()))
}

/// Resolves the token; an error is `(key, reason)`.
pub fn resolve(
    raw: &RawAdmin,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AdminToken, (String, String)> {
    let token = match (&raw.token_env, &raw.token_file) {
        (Some(_), Some(_)) | (None, None) => {
            return Err((
                "admin".into(),
                "set exactly one of token_env or token_file".into(),
            ));
        }
        (Some(name), None) => {
            if raw.create_token_file {
                return Err((
                    "admin.create_token_file".into(),
                    "only applies to token_file".into(),
                ));
            }
            env(name).ok_or_else(|| {
                (
                    "admin.token_env".into(),
                    format!("environment variable {name} is not set"),
                )
            })?
        }
        (None, Some(file)) => {
            let path = if Path::new(file).is_absolute() {
                Path::new(file).to_owned()
            } else {
                base.join(file)
            };
            if raw.create_token_file && !path.exists() {
                create_token_file(&path).map_err(|e| {
                    (
                        "admin.token_file".into(),
                        format!("cannot create {}: {e}", path.display()),
                    )
                })?;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                (
                    "admin.token_file".to_owned(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            text.lines().next().unwrap_or("").to_owned()
        }
    };
    let token = token.trim().to_owned();
    if token.len() < MIN_ADMIN_TOKEN_BYTES || token.len() > MAX_ADMIN_TOKEN_BYTES {
        let key = if raw.token_env.is_some() {
            "admin.token_env"
        } else {
            "admin.token_file"
        };
        return Err((
            key.into(),
            format!("the token must be {MIN_ADMIN_TOKEN_BYTES} to {MAX_ADMIN_TOKEN_BYTES} bytes"),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            "admin".into(),
            "the token must be printable ASCII without spaces".into(),
        ));
    }
    Ok(AdminToken(token))
}

fn create_token_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = [0u8; GENERATED_TOKEN_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{token}")?;
    file.sync_all()
}
