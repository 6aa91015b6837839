//! Where chatd keeps its state, and the files it creates there.
//!
//! Every command resolves the data directory with the same rule, so `chatd
//! online`, `chatd export` and `chatd token` find the state of the `chatd run`
//! on the same host without being told where it is.
//!
//! What chatd keeps there is private: it creates files with mode 0600 and
//! directories with mode 0700 whatever the umask (the process's umask is
//! 077 besides), and `chatd run` refuses a data directory that other users
//! could write to, since they could swap the certificate, the key or the
//! token secret it trusts.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::chat::auth::MIN_SECRET_BYTES;

/// Name of the JWT secret file inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";

/// The systemd service's state directory (`StateDirectory=chatd`).
const SYSTEM_DIR: &str = "/var/lib/chatd";

/// Resolves the data directory from the command line and the environment.
///
/// In order: `explicit` (`--data-dir`), `$CHATD_DATA_DIR`, `$STATE_DIRECTORY`
/// (first entry), `/var/lib/chatd` if it exists, `$XDG_DATA_HOME/chatd`,
/// `$HOME/.local/share/chatd`, and `./chatd-data` as a last resort.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    resolve_with(explicit, |name| std::env::var_os(name), Path::is_dir)
}

/// [`resolve`] with the environment and the file system injected, so tests
/// do not depend on the machine they run on.
fn resolve_with(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    is_dir: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    // An empty variable counts as unset: `CHATD_DATA_DIR= chatd ...` must not
    // mean "the current directory".
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("CHATD_DATA_DIR") {
        return PathBuf::from(dir);
    }
    // systemd joins several StateDirectory= entries with ':'.
    if let Some(dirs) = non_empty("STATE_DIRECTORY") {
        let dirs = dirs.to_string_lossy().into_owned();
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    let system = Path::new(SYSTEM_DIR);
    if is_dir(system) {
        return system.to_path_buf();
    }
    if let Some(xdg) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("chatd");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".local/share/chatd");
    }
    PathBuf::from("chatd-data")
}

/// Creates `dir` (mode 0700, parents as needed) if it is missing and checks
/// that chatd can write into it.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    let existed = dir.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            if existed {
                return Ok(());
            }
            // The umask may have dropped bits; set the mode exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        })
        .with_context(|| {
            format!(
                "cannot create the data directory {}: create it yourself with write \
                 access for this user, or pick another one with --data-dir",
                dir.display()
            )
        })?;
    // Probe with a real file: permission bits alone do not tell about
    // read-only mounts or ACLs.
    let probe = dir.join(format!(".chatd-write-test-{}", std::process::id()));
    write_new_file(&probe, b"", 0o600)
        .and_then(|()| fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "the data directory {} is not writable: fix its owner or permissions, \
                 or pick another one with --data-dir",
                dir.display()
            )
        })
}

/// Reads the JWT secret at `path`, creating it first if it is missing.
///
/// A new secret is 64 random hex characters and a newline, in a file of mode
/// 0600. The key is the file's content with surrounding white space trimmed.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    if !path.exists() {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let mut hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        hex.push('\n');
        create_atomically(path, hex.as_bytes(), 0o600).with_context(|| {
            format!(
                "cannot create the JWT secret file {}: check that its directory exists \
                 and is writable, or point --jwt-secret at an existing secret",
                path.display()
            )
        })?;
    }
    load_secret(path)
}

/// Reads an existing JWT secret file: its content with surrounding white
/// space trimmed, as bytes. A missing, empty or short (under
/// [`MIN_SECRET_BYTES`]) secret is an error.
pub fn load_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let content = fs::read(path).with_context(|| {
        format!(
            "cannot read the JWT secret file {}: check the path and its permissions",
            path.display()
        )
    })?;
    let key = content.trim_ascii();
    if key.is_empty() {
        bail!(
            "the JWT secret file {} is empty: put a long random string in it, or delete \
             it to have chatd generate one (tokens signed with the old secret stop working)",
            path.display()
        );
    }
    if key.len() < MIN_SECRET_BYTES {
        bail!(
            "the JWT secret in {} is {} bytes long; HS256 needs at least {MIN_SECRET_BYTES} \
             bytes (RFC 7518 section 3.2): put a longer random string in it \
             (`openssl rand -hex 32 > {}`), or delete it to have chatd generate one \
             (tokens signed with the old secret stop working)",
            path.display(),
            key.len(),
            path.display()
        );
    }
    Ok(key.to_vec())
}

/// Checks that no other user can write to `dir` or anything in it (or to
/// `files` elsewhere, such as `--jwt-secret`): no group or world write bit,
/// owned by this user (or root). The error lists every offender and the
/// command that fixes it.
pub fn check_private(dir: &Path, files: &[&Path]) -> anyhow::Result<()> {
    let mut offenders = Vec::new();
    visit(dir, 0, &mut offenders)?;
    for file in files {
        visit(file, MAX_DEPTH, &mut offenders)?;
    }
    if offenders.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = offenders
        .iter()
        .map(|(path, why)| format!("  {}: {why}", path.display()))
        .collect();
    let paths: Vec<String> = offenders
        .iter()
        .map(|(path, _)| shell_quote(&path.to_string_lossy()))
        .collect();
    bail!(
        "refusing to start: other users could change what chatd trusts (its certificate, \
         key, token secret or history):\n{}\nfix it with: chmod go-w {} \
         (and chown any file owned by another user to the user chatd runs as)",
        list.join("\n"),
        paths.join(" ")
    )
}

/// How deep [`check_private`] looks into the data directory (it holds
/// `tls/` and files; anything deeper was not put there by chatd).
const MAX_DEPTH: usize = 3;

fn visit(path: &Path, depth: usize, offenders: &mut Vec<(PathBuf, String)>) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let mode = meta.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if mode & 0o022 != 0 {
        offenders.push((
            path.to_owned(),
            format!("writable by other users (mode {mode:04o})"),
        ));
    } else if meta.uid() != me && meta.uid() != 0 {
        offenders.push((
            path.to_owned(),
            format!("owned by another user (uid {})", meta.uid()),
        ));
    }
    if meta.is_dir() && depth < MAX_DEPTH {
        let entries =
            fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            visit(&entry.path(), depth + 1, offenders)?;
        }
    }
    Ok(())
}

/// `text` quoted for a POSIX shell when it needs it.
fn shell_quote(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Creates `path` holding `contents` unless it already exists, without a
/// moment where another process could see it half-written.
///
/// The data goes to a temporary file that is then hard-linked into place:
/// unlike a rename, the link never replaces a file another process created
/// meanwhile, so two racing creators agree on one content. A lost race is not
/// an error.
pub(crate) fn create_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    write_new_file(&tmp, contents, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Writes a file that must not exist yet, with `mode` from the start (never
/// briefly world-readable), and flushes it to disk.
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask may have dropped bits, never added any; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A unique name next to `path`, for building a file or directory before
/// moving it into place.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: u64 = rand::random();
    path.with_file_name(format!(".{name}.tmp-{}-{suffix:016x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn resolve_in(vars: &[(&str, &str)], system_exists: bool) -> PathBuf {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        resolve_with(None, |k| vars.get(k).cloned(), |_| system_exists)
    }

    #[test]
    fn explicit_wins_over_everything() {
        let got = resolve_with(Some(Path::new("/x")), |_| Some("/env".into()), |_| true);
        assert_eq!(got, PathBuf::from("/x"));
    }

    #[test]
    fn resolution_order() {
        let all = [
            ("CHATD_DATA_DIR", "/a"),
            ("STATE_DIRECTORY", "/b:/c"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(resolve_in(&all, true), PathBuf::from("/a"));
        assert_eq!(resolve_in(&all[1..], true), PathBuf::from("/b"));
        assert_eq!(resolve_in(&all[2..], true), PathBuf::from(SYSTEM_DIR));
        assert_eq!(resolve_in(&all[2..], false), PathBuf::from("/xdg/chatd"));
        assert_eq!(
            resolve_in(&all[3..], false),
            PathBuf::from("/home/u/.local/share/chatd")
        );
        assert_eq!(resolve_in(&[], false), PathBuf::from("chatd-data"));
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let vars = [
            ("CHATD_DATA_DIR", ""),
            ("STATE_DIRECTORY", ""),
            ("HOME", "/h"),
        ];
        assert_eq!(
            resolve_in(&vars, false),
            PathBuf::from("/h/.local/share/chatd")
        );
        assert_eq!(
            resolve_in(&[("STATE_DIRECTORY", ":/s")], false),
            PathBuf::from("/s")
        );
    }

    #[test]
    fn ensure_creates_private_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Idempotent, and leaves no probe file behind.
        ensure(&dir).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn ensure_reports_a_file_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "").unwrap();
        let err = format!("{:#}", ensure(&file).unwrap_err());
        assert!(err.contains("cannot create the data directory"), "{err}");
    }

    #[test]
    fn secret_is_created_once_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(SECRET_FILE);
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(fs::read(&path).unwrap().last(), Some(&b'\n'));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn secret_is_trimmed_and_must_be_long_enough() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let long = "correct horse battery staple, twice";
        fs::write(&path, format!("  {long} \n\n")).unwrap();
        assert_eq!(load_or_create_secret(&path).unwrap(), long.as_bytes());
        fs::write(&path, " \n").unwrap();
        let err = format!("{:#}", load_secret(&path).unwrap_err());
        assert!(err.contains("is empty"), "{err}");
        fs::write(&path, "hunter2\n").unwrap();
        let err = format!("{:#}", load_secret(&path).unwrap_err());
        assert!(
            err.contains("is 7 bytes long") && err.contains("at least 32"),
            "{err}"
        );
    }

    #[test]
    fn check_private_names_every_file_others_can_write_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data dir");
        ensure(&dir).unwrap();
        fs::create_dir(dir.join("tls")).unwrap();
        fs::write(dir.join("tls/key.pem"), "k").unwrap();
        let outside = tmp.path().join("secret");
        fs::write(&outside, "s").unwrap();
        for path in [dir.join("tls/key.pem"), outside.clone()] {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        check_private(&dir, &[&outside]).unwrap();

        fs::set_permissions(dir.join("tls/key.pem"), fs::Permissions::from_mode(0o666)).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o620)).unwrap();
        let err = format!("{:#}", check_private(&dir, &[&outside]).unwrap_err());
        assert!(
            err.contains("key.pem: writable by other users (mode 0666)"),
            "{err}"
        );
        assert!(
            err.contains("secret: writable by other users (mode 0620)"),
            "{err}"
        );
        assert!(err.contains("chmod go-w '"), "{err}");
        assert!(!err.contains("tls: "), "{err}");
    }

    #[test]
    fn missing_secret_is_an_error_for_load_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nope");
        let err = format!("{:#}", load_secret(&path).unwrap_err());
        assert!(err.contains("nope"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn create_atomically_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        create_atomically(&path, b"one", 0o600).unwrap();
        create_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
    }
}
