//! Finding and opening the file a request names, on the blocking pool (every `stat`, `realpath`
//! and `open` here may wait on the disk). Confinement: the path below `root` is built from
//! checked segments (`path::target`), and unless `follow_symlinks` the file's real path (all
//! links resolved) must lie below `root`'s real path, with no hidden segment between them; a
//! file that fails either check is as missing. Only regular files are served: a folder is
//! answered by its index, anything else (a device, a FIFO) is missing, and files are opened
//! non-blocking so a FIFO swapped in after the check cannot hold a thread.

use super::path::Target;
use crate::config::{Coding, StaticFiles};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open file and what the answer needs to know about it.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
    /// The precompressed sibling opened instead of the file, if one was.
    pub coding: Option<Coding>,
    /// The file as asked for (not its sibling): its name gives the type.
    pub path: PathBuf,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and matched at once: a box would only add an allocation"
)]
pub enum Found {
    File(Opened),
    /// A folder with an index, asked for without its trailing `/`.
    Slash,
    Missing,
}

/// `root` as requests see it: its real path when links must not lead out of it.
struct Root<'a> {
    files: &'a StaticFiles,
    real: Option<PathBuf>,
}

impl Root<'_> {
    /// `None` when `root` itself is gone (every request is then missing).
    fn open(files: &StaticFiles) -> io::Result<Option<Root<'_>>> {
        if files.follow_symlinks {
            return Ok(Some(Root { files, real: None }));
        }
        match std::fs::canonicalize(&files.root) {
            Ok(real) => Ok(Some(Root {
                files,
                real: Some(real),
            })),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `real` (a resolved path) is below `root` and not hidden there.
    fn holds(&self, real: &Path) -> bool {
        let Some(root) = &self.real else { return true };
        let Ok(below) = real.strip_prefix(root) else {
            return false;
        };
        below.iter().all(|part| {
            let bytes = part.as_encoded_bytes();
            bytes.first() != Some(&b'.')
                || self.files.dotfiles.iter().any(|d| d.as_bytes() == bytes)
        })
    }
}

/// The file `target` names, its index if it names a folder, or neither. `wants` are the
/// precompressed codings the client takes, best first.
pub fn find(files: &StaticFiles, target: &Target, wants: &[Coding]) -> io::Result<Found> {
    let Some(root) = Root::open(files)? else {
        return Ok(Found::Missing);
    };
    if target.refused {
        return Ok(Found::Missing);
    }
    let path = files.root.join(&target.rel);
    if !target.dir {
        if let Some(sibling) = sibling(&root, &path, wants)? {
            return Ok(Found::File(sibling));
        }
    }
    // opened before it is known to be a file: one `fstat` tells what it is
    let Some((file, meta)) = open_any(&root, &path)? else {
        return Ok(Found::Missing);
    };
    if meta.is_file() {
        // `/a.txt/` names a folder, which `a.txt` is not
        let opened = Opened {
            file,
            meta,
            coding: None,
            path,
        };
        return Ok(if target.dir {
            Found::Missing
        } else {
            Found::File(opened)
        });
    }
    if !meta.is_dir() {
        return Ok(Found::Missing);
    }
    drop(file);
    if !target.dir {
        let has_index = files
            .index
            .iter()
            .any(|name| matches!(located(&root, &path.join(name)), Ok(Some(_))));
        return Ok(if has_index {
            Found::Slash
        } else {
            Found::Missing
        });
    }
    for name in &files.index {
        if let Some(opened) = open(&root, &path.join(name), wants)? {
            return Ok(Found::File(opened));
        }
    }
    Ok(Found::Missing)
}

/// The `fallback` file, if the route has one and it is there.
pub fn fallback(files: &StaticFiles, wants: &[Coding]) -> io::Result<Option<Opened>> {
    let (Some(fallback), Some(root)) = (&files.fallback, Root::open(files)?) else {
        return Ok(None);
    };
    open(&root, &files.root.join(fallback), wants)
}

/// `path` opened, or the sibling of the best coding in `wants` that is there; `None` when
/// neither is a regular file inside `root`.
fn open(root: &Root<'_>, path: &Path, wants: &[Coding]) -> io::Result<Option<Opened>> {
    if let Some(sibling) = sibling(root, path, wants)? {
        return Ok(Some(sibling));
    }
    let opened = open_any(root, path)?
        .filter(|(_, meta)| meta.is_file())
        .map(|(file, meta)| Opened {
            file,
            meta,
            coding: None,
            path: path.to_path_buf(),
        });
    Ok(opened)
}

/// The sibling of `path` for the best coding in `wants` that has one (a regular file inside
/// `root`).
fn sibling(root: &Root<'_>, path: &Path, wants: &[Coding]) -> io::Result<Option<Opened>> {
    for &coding in wants {
        let mut sibling = path.as_os_str().to_owned();
        sibling.push(extension(coding));
        let found = open_any(root, Path::new(&sibling))?.filter(|(_, meta)| meta.is_file());
        if let Some((file, meta)) = found {
            let path = path.to_path_buf();
            let coding = Some(coding);
            return Ok(Some(Opened {
                file,
                meta,
                coding,
                path,
            }));
        }
    }
    Ok(None)
}

/// The name `path` is opened by: its real path when confined (links resolved and checked),
/// else itself; `None` when missing or outside `root`.
fn located(root: &Root<'_>, path: &Path) -> io::Result<Option<PathBuf>> {
    if root.real.is_none() {
        return Ok(Some(path.to_path_buf()));
    }
    match std::fs::canonicalize(path) {
        Ok(real) if root.holds(&real) => Ok(Some(real)),
        Ok(_) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `path` opened (a file or a folder, or anything else: the caller looks), if it is there and
/// inside `root`.
fn open_any(root: &Root<'_>, path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let Some(name) = located(root, path)? else {
        return Ok(None);
    };
    // a FIFO must not hold the thread, a terminal must not become ours
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if root.real.is_some() {
        // the real path has no link left: one put in its place since is not followed
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&name)
    {
        Ok(file) => file,
        Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(Some((file, meta)))
}

/// The sibling's suffix: `app.js.br`, `app.js.zst`, `app.js.gz`.
fn extension(coding: Coding) -> &'static str {
    match coding {
        Coding::Br => ".br",
        Coding::Zstd => ".zst",
        Coding::Gzip => ".gz",
    }
}

/// Errors that mean "no such file here": it does not exist, a part of the path is no folder,
/// the name is too long, or it may not be read (nginx answers that `403`; here it is as
/// missing, so a probe learns nothing; logged at `debug`, as a request could repeat it at any
/// rate).
fn is_missing(e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::NotFound => true,
        io::ErrorKind::PermissionDenied => {
            tracing::debug!(error = %e, "a file under a `files` root cannot be read; answered 404");
            true
        }
        _ => matches!(
            e.raw_os_error(),
            Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::path::target;

    fn files(root: &Path) -> StaticFiles {
        StaticFiles {
            root: root.to_path_buf(),
            index: vec!["index.html".into()],
            fallback: None,
            precompressed: vec![],
            follow_symlinks: false,
            dotfiles: vec![],
            strip_prefix: false,
        }
    }

    fn found(files: &StaticFiles, path: &str, wants: &[Coding]) -> String {
        match find(files, &target(path, None, &files.dotfiles), wants).unwrap() {
            Found::File(o) => {
                let name = o.path.strip_prefix(&files.root).unwrap().display();
                format!("{name} {:?} {}", o.coding, o.meta.len())
            }
            Found::Slash => "slash".into(),
            Found::Missing => "missing".into(),
        }
    }

    #[test]
    fn files_indexes_siblings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("index.html"), "home").unwrap();
        std::fs::write(root.join("docs/index.html"), "docs").unwrap();
        std::fs::write(root.join("app.js"), "js!").unwrap();
        std::fs::write(root.join("app.js.br"), "b").unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("app.js"), root.join("in.js")).unwrap();
        let mut f = files(root);

        assert_eq!(found(&f, "/", &[]), "index.html None 4");
        assert_eq!(found(&f, "/docs/", &[]), "docs/index.html None 4");
        assert_eq!(found(&f, "/docs", &[]), "slash");
        assert_eq!(found(&f, "/empty", &[]), "missing");
        assert_eq!(found(&f, "/empty/", &[]), "missing");
        assert_eq!(found(&f, "/app.js/", &[]), "missing");
        assert_eq!(found(&f, "/app.js", &[]), "app.js None 3");
        assert_eq!(
            found(&f, "/app.js", &[Coding::Zstd, Coding::Br]),
            "app.js Some(Br) 1"
        );
        assert_eq!(found(&f, "/nope", &[]), "missing");
        assert_eq!(found(&f, "/out", &[]), "missing");
        assert_eq!(found(&f, "/in.js", &[]), "in.js None 3");
        f.follow_symlinks = true;
        assert_eq!(found(&f, "/out", &[]), "out None 1");
    }

    #[test]
    fn a_fifo_is_missing_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            return;
        }
        assert_eq!(found(&files(dir.path()), "/pipe", &[]), "missing");
    }
}
