//! Reading the files a user names (a spec, a cassette, a template): only regular files,
//! and only up to a documented size, so a FIFO cannot block a run for ever (a blocked
//! `open` or `read` ignores the signals a run is stopped with) and `/dev/zero` cannot
//! fill the machine's memory.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest spec read: a spec is a few hundred bytes of JSON; a megabyte is a mistake.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// The largest cassette read: every prompt and reply of a run, with room to spare.
pub const MAX_CASSETTE_BYTES: u64 = 64 << 20;
/// The largest prompt template read.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The text of the regular file at `path`, refused when it is anything else (a FIFO, a
/// device, a directory), larger than `limit` bytes, or not UTF-8. The errors say which;
/// the caller names the file.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let bytes = read_at_most(open_regular(path)?, limit)?;
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// Whether `path` is a regular file of at most `limit` bytes (as it is now), without
/// reading it.
pub fn check_regular(path: &Path, limit: u64) -> io::Result<()> {
    if open_regular(path)?.metadata()?.len() > limit {
        return Err(too_large(limit));
    }
    Ok(())
}

fn open_regular(path: &Path) -> io::Result<File> {
    // Without O_NONBLOCK, opening a FIFO waits for a writer, for ever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    // The open file's own metadata, not the path's: a path swapped after the check
    // cannot slip a FIFO past it, and nothing is read from anything but a regular file.
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind(&metadata)),
        ));
    }
    Ok(file)
}

/// The file's bytes, refused past `limit`: the size in the metadata can change while
/// it is read, so the read itself is bounded.
fn read_at_most(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("is larger than the limit of {}", size(limit)),
    )
}

fn kind(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(&path, "{}").unwrap();
        assert_eq!(read_text(&path, 2).unwrap(), "{}");
        let error = read_text(&path, 1).unwrap_err().to_string();
        assert_eq!(error, "is larger than the limit of 1 bytes");
    }

    #[test]
    fn refuses_devices_fifos_and_directories_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, kind) in [
            (Path::new("/dev/zero"), "a device"),
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
        ] {
            let error = read_text(path, MAX_SPEC_BYTES).unwrap_err().to_string();
            assert_eq!(error, format!("is {kind}, not a regular file"));
        }
    }
}
