//! A scratch directory, removed with everything in it when its handle drops (unless kept).
//! The product itself never needs one; tests and the tools (dev PKI, temp stores) do, and both
//! sides of the crate boundary use this one.

use std::path::{Path, PathBuf};

/// A directory removed (recursively) on drop, unless kept.
pub struct TempDir(PathBuf, bool);

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p, false))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Leaves the directory in place on drop (the logs of a failed run are the evidence).
    pub fn keep(&mut self) {
        self.1 = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
