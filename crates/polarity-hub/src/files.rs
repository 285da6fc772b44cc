//! Reading files whose names come from users and from other files, safely.
//!
//! A path given on the command line or found in a config, an index or a checkpoint pointer may name a
//! FIFO (reading it blocks forever), a directory or a device; a name read from a file may be absolute or
//! climb out of its directory with `..`. Every polarity loader opens such paths through this module:
//!
//! - [`open_regular`] / [`read_regular`] / [`read_regular_to_string`] open without blocking and refuse
//!   anything that is not a regular file (symbolic links to regular files, as in the hub cache, are
//!   fine); [`read_regular_to_string_within`] also bounds the size;
//! - [`join_inside`] joins a name read from a file to the directory it must stay in, refusing absolute
//!   names, `..` and empty names.
//!
//! Errors are [`std::io::Error`]s whose message names the path, so each crate wraps them in its own error
//! type with the context it has.
//!
//! ```
//! use polarity_hub::files::join_inside;
//! use std::path::Path;
//!
//! let dir = Path::new("/models/bert");
//! assert_eq!(join_inside(dir, "model-00001-of-00002.safetensors").unwrap(), dir.join("model-00001-of-00002.safetensors"));
//! assert!(join_inside(dir, "../../etc/passwd").is_err());
//! assert!(join_inside(dir, "/etc/passwd").is_err());
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Opens `path` for reading if it is a regular file (after following symbolic links). A FIFO, a
/// directory or a device is an [`io::ErrorKind::InvalidInput`] error naming the path; opening never
/// blocks.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = open_nonblocking(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file (it is {})", path.display(), describe(&metadata.file_type())),
        ));
    }
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one; it does not
    // change reads from regular files.
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_dir() { "a directory" } else { "not a file" }
}

/// Reads a whole regular file (see [`open_regular`]); errors name the path.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_regular(path).map_err(|error| with_path(path, error))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|error| with_path(path, error))?;
    Ok(bytes)
}

/// Reads a whole regular UTF-8 file (see [`open_regular`]); errors name the path.
pub fn read_regular_to_string(path: &Path) -> io::Result<String> {
    read_regular_to_string_within(path, u64::MAX)
}

/// [`read_regular_to_string`] for a file of at most `limit` bytes: a larger one (a config or index that
/// is not what its name says) is an [`io::ErrorKind::InvalidData`] error naming the path and both sizes,
/// before anything is read.
pub fn read_regular_to_string_within(path: &Path, limit: u64) -> io::Result<String> {
    let file = open_regular(path).map_err(|error| with_path(path, error))?;
    let size = file.metadata().map_err(|error| with_path(path, error))?.len();
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {size} bytes, more than the {limit} such a file may have", path.display()),
        ));
    }
    let mut bytes = Vec::new();
    // `take`: the file may grow between the size check and the read.
    file.take(limit).read_to_end(&mut bytes).map_err(|error| with_path(path, error))?;
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not UTF-8 text", path.display())))
}

/// Whether `path` exists as a regular file (following links). Use before choosing between alternatives
/// (`model.safetensors` or its index), so that a FIFO or a directory of that name is not mistaken for one.
pub fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).map(|metadata| metadata.is_file()).unwrap_or(false)
}

/// `dir` joined with `name`, a relative path read from a file (a shard of an index, a checkpoint
/// pointer), refused if it could leave `dir`: absolute, with a `..`, a drive prefix, or empty. Only the
/// name is checked: symbolic links inside `dir` (the hub cache's snapshots point into its blobs) are
/// followed as usual.
pub fn join_inside(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let relative = Path::new(name);
    let escapes = name.is_empty()
        || relative.components().any(|component| !matches!(component, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain relative name inside {}", dir.display()),
        ));
    }
    Ok(dir.join(relative))
}

fn with_path(path: &Path, error: io::Error) -> io::Error {
    let message = error.to_string();
    if message.contains(&path.display().to_string()) {
        error
    } else {
        io::Error::new(error.kind(), format!("{}: {message}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = Path::new("/cache/snapshots/abc");
        for name in ["", "..", "../x", "a/../../x", "/etc/passwd", "a/../b"] {
            assert!(join_inside(dir, name).is_err(), "{name:?} accepted");
        }
        assert_eq!(join_inside(dir, "./shard-1.safetensors").unwrap(), dir.join("./shard-1.safetensors"));
        assert_eq!(join_inside(dir, "sub/shard").unwrap(), dir.join("sub/shard"));
    }

    #[test]
    fn directories_and_fifos_are_not_regular_files() {
        let dir = std::env::temp_dir().join(format!("polarity-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = read_regular(&dir).unwrap_err();
        assert!(error.to_string().contains("a directory"), "{error}");

        let fifo = dir.join("latest");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        if made {
            let error = read_regular_to_string(&fifo).unwrap_err();
            assert!(error.to_string().contains("a FIFO") && error.to_string().contains("latest"), "{error}");
            assert!(!is_regular_file(&fifo));
        }

        let file = dir.join("config.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(read_regular_to_string(&file).unwrap(), "{}");
        assert!(is_regular_file(&file));
        let missing = read_regular(&dir.join("missing.json")).unwrap_err();
        assert!(missing.to_string().contains("missing.json"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
