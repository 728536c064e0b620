//! The admin API's Unix socket (`[admin] socket`): created owner-only, a stale one from a killed
//! run replaced, removed when berth stops.
//!
//! The socket is bound under a temporary name beside the final one, set to mode 0600, then
//! renamed into place: at no moment is a socket with the umask's wider mode reachable under the
//! configured path (setting the umask instead would change it for the whole process). A file at
//! the path that is not a socket is left alone and refused; a socket someone still answers on is
//! refused (another berth runs there); one nobody answers on is a leftover and replaced.
//! Removal on stop is by [`Drop`] and only when the path still names the socket this run made.
//!
//! Rule of dependency: a leaf under `server` (tokio, std).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The bound socket; removes its file when dropped.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file this run made.
    made: (u64, u64),
}

impl AdminSocket {
    /// Binds `path` as described in the module docs. The error says what is in the way.
    pub fn bind(path: &Path) -> Result<AdminSocket, String> {
        let what = |e: io::Error| format!("{}: {e}", path.display());
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(format!(
                    "{}: exists and is not a socket (refusing to replace it)",
                    path.display()
                ));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "{}: in use (another berth answers on it)",
                        path.display()
                    ));
                }
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing a stale admin socket");
                    std::fs::remove_file(path).map_err(what)?;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(what)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| std::fs::metadata(path));
        match placed {
            Ok(m) => Ok(AdminSocket {
                listener,
                path: path.to_owned(),
                made: (m.dev(), m.ino()),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(what(e))
            }
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.made);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
