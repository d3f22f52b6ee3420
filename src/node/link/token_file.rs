//! The token an edge presents upstream, and the file it is read again from when it changes (a
//! rotation tool renewing a JWT): the link sends the fresh token on its open connection, or,
//! when the upstream refused the old one, connects again with it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The token, and the file it came from.
pub(crate) struct Credentials {
    pub(crate) token: Option<String>,
    pub(crate) file: Option<PathBuf>,
}

/// How often the token file is looked at.
pub(crate) const TOKEN_FILE_EVERY: Duration = Duration::from_secs(1);

/// A token file, and when it last changed.
pub(crate) struct TokenFile {
    path: PathBuf,
    at: Option<SystemTime>,
}

impl TokenFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        let at = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        TokenFile { path, at }
    }

    /// The file's token, when the file changed since it was last read and holds one (an empty
    /// or unreadable file keeps the token in use, and says so).
    pub(crate) fn fresh(&mut self) -> Option<String> {
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if now == self.at {
            return None;
        }
        self.at = now;
        match std::fs::read_to_string(&self.path) {
            Ok(t) if !t.trim().is_empty() => {
                tracing::info!(file = %self.path.display(), "the upstream token file changed: renewing the token");
                Some(t.trim().to_string())
            }
            Ok(_) => {
                tracing::warn!(file = %self.path.display(), "the upstream token file is empty; the token in use stays");
                None
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot read the upstream token file; the token in use stays");
                None
            }
        }
    }
}
