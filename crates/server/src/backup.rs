//! Backing up and restoring a control plane: `flotilla server backup|restore`.
//!
//! A backup is one file holding a consistent copy of the database and the installation's
//! `secret.key`, which is everything a server needs to carry on (clusters are found again in
//! AWS by their tags; the database names them).
//!
//! Design decisions:
//! * Online: the copy is made with SQLite's `VACUUM INTO` through a separate read-only
//!   connection, which reads one snapshot (a read transaction under WAL) while the server
//!   keeps writing. Copying the database file would miss the WAL or catch it half-written.
//!   The copy is made inside the data directory (owner-only), since it holds the
//!   installation's HMAC secret, then read and deleted.
//! * `secret.key` travels with the database: without it, AWS keys linked through the API
//!   cannot be decrypted after a restore. The backup file is therefore as sensitive as the
//!   data directory: it is written with mode 0600, atomically (temporary file, then rename).
//! * Format: a JSON envelope, small to describe and inspect with standard tools:
//!   `{"format": "flotilla-backup", "version": 1, "created_at": <unix seconds>,
//!   "owner_id": "<installation id>", "database": {"size": n, "sha256": "<hex>",
//!   "data": "<base64>"}, "secret_key": {"size": 32, "sha256": "<hex>", "data": "<base64>"}}`.
//!   Each part carries its size and SHA-256, checked before anything is written: a
//!   truncated or altered file is refused with the part that fails. The checksums detect
//!   corruption, not a deliberate forgery (whoever can alter the file can recompute them);
//!   protect the file as you protect the data directory. The whole database is held in
//!   memory, which suits a control plane's database (megabytes).
//! * Restore writes into a data directory that must not hold a database or key yet, unless
//!   `force`; the server must be stopped (a running server keeps its open database). The
//!   database is first written to a temporary file, checked (`PRAGMA integrity_check`),
//!   opened through [`Store::open`] so its migrations run, and must hold an installation id
//!   and a user; only then are the key and the database moved into place (0600, in a 0700
//!   directory), the database last, so a present database means a complete restore.
//! * SQLite only. An installation on PostgreSQL (`--database postgres://…`, several
//!   replicas) is refused with what to do instead ([`refuse_postgres`]): `pg_dump` and
//!   `pg_restore` copy a live PostgreSQL database consistently, with the tools and options
//!   (custom format, parallel jobs, point-in-time recovery) its operators already use; a
//!   copy through this envelope would be one more, worse, way. What PostgreSQL's tools
//!   cannot copy is the data directory's `secret.key`, which must be kept with the dump.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::Store;

/// The `format` field of a backup file.
pub const FORMAT: &str = "flotilla-backup";
/// The `version` field this build writes and reads.
pub const VERSION: u32 = 1;
/// The database's file name in a data directory.
pub const DATABASE_FILE: &str = "flotilla.db";
/// The key's file name in a data directory.
pub const SECRET_KEY_FILE: &str = "secret.key";

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    created_at: i64,
    owner_id: String,
    database: Part,
    secret_key: Part,
}

#[derive(Serialize, Deserialize)]
struct Part {
    size: u64,
    sha256: String,
    data: String,
}

impl Part {
    fn new(bytes: &[u8]) -> Part {
        Part {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            data: BASE64.encode(bytes),
        }
    }

    /// The part's bytes, once its size and checksum match.
    fn bytes(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = BASE64
            .decode(self.data.as_bytes())
            .map_err(|error| anyhow::anyhow!("the {name} is not valid base64: {error}"))?;
        if bytes.len() as u64 != self.size {
            bail!(
                "the {name} has {} bytes, the backup says {}",
                bytes.len(),
                self.size
            );
        }
        if hex::encode(Sha256::digest(&bytes)) != self.sha256.to_ascii_lowercase() {
            bail!("the {name} does not match its SHA-256 checksum");
        }
        Ok(bytes)
    }
}

/// What a backup or a restore handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The installation id (the `flotilla:owner` tag value).
    pub owner_id: String,
    /// The database's size in bytes.
    pub database_bytes: u64,
    /// Node clusters in the database (any state).
    pub clusters: usize,
}

fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE_FILE)
}

fn temporary_name(dir: &Path, what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(".{what}-{}-{nanos}.tmp", std::process::id()))
}

/// Removes a file and SQLite's companions of it, ignoring the ones that do not exist.
fn remove_database_files(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("removing {}", PathBuf::from(name).display()));
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = temporary_name(dir, "write");
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Refuses `flotilla server <command>` (backup or restore) for a PostgreSQL `database_url`,
/// saying what to use instead and which key file to keep.
pub fn refuse_postgres(
    command: &str,
    database_url: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let Some(url) = database_url else {
        return Ok(());
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Ok(());
    }
    let key = data_dir.join(SECRET_KEY_FILE);
    let key = key.display();
    let how = if command == "restore" {
        format!(
            "restore the database with `pg_restore --clean --if-exists -d <database URL> flotilla.dump` \
             (servers stopped), and put the kept secret.key at {key} (mode 0600) in the data \
             directory of every replica"
        )
    } else {
        format!(
            "back the database up with `pg_dump --format=custom --file flotilla.dump <database URL>` \
             (consistent while the servers run), and keep a copy of {key} with it"
        )
    };
    bail!(
        "`flotilla server {command}` handles only a SQLite database; this installation's is \
         PostgreSQL. Instead, {how}. secret.key is the data directory's 32-byte key that seals \
         the linked AWS keys, swarm join tokens, LDAP bind passwords and the client bundles' CA \
         key stored in the database (every replica has the same one): a dump restored without \
         it cannot use them."
    )
}

/// Copies the database of `data_dir` (running server or not) and its `secret.key` into
/// the backup file `output` (mode 0600, replaced atomically if it exists).
pub async fn backup(data_dir: &Path, output: &Path) -> anyhow::Result<Summary> {
    let database = database_path(data_dir);
    if !database.exists() {
        bail!(
            "{} does not exist: no database to back up (an installation on PostgreSQL: pass \
             its --database URL to be told how to back it up)",
            database.display()
        );
    }
    let key_path = data_dir.join(SECRET_KEY_FILE);
    // Through `SecretKey::load`: refuses a key others could read, checks its size.
    crate::secrets::SecretKey::load(&key_path)?;
    let key =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;

    let snapshot = temporary_name(data_dir, "backup");
    let copied = async {
        snapshot_database(&database, &snapshot).await?;
        // The bytes are read before the check, which opens (and may migrate) the copy.
        let bytes =
            std::fs::read(&snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
        let summary = inspect(&snapshot).await?;
        anyhow::Ok((summary, bytes))
    }
    .await;
    let _ = remove_database_files(&snapshot);
    let (summary, bytes) = copied?;

    let envelope = Envelope {
        format: FORMAT.to_owned(),
        version: VERSION,
        created_at: flotilla_api::date::now_unix(),
        owner_id: summary.owner_id.clone(),
        database: Part::new(&bytes),
        secret_key: Part::new(&key),
    };
    let text = serde_json::to_vec(&envelope).context("encoding the backup")?;
    write_private(output, &text)?;
    Ok(summary)
}

/// `VACUUM INTO` through a read-only connection: one consistent snapshot, even while the
/// server writes.
async fn snapshot_database(database: &Path, snapshot: &Path) -> anyhow::Result<()> {
    let target = snapshot
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", snapshot.display()))?
        .to_owned();
    Store::snapshot_file(database, &target)
        .await
        .with_context(|| format!("copying {} (VACUUM INTO)", database.display()))?;
    // VACUUM INTO creates the file with the default mode; it is inside the 0700 data
    // directory, and is tightened anyway before anything else reads it.
    std::fs::set_permissions(snapshot, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", snapshot.display()))?;
    Ok(())
}

/// Checks a database file (integrity, migrations, an installation and a user) and
/// summarizes it. Opening it through the store runs the migrations on it.
async fn inspect(path: &Path) -> anyhow::Result<Summary> {
    let verdict = Store::integrity_check(path)
        .await
        .context("the database is not a readable SQLite database")?;
    if verdict != "ok" {
        bail!("the database fails SQLite's integrity check: {verdict}");
    }
    let store = Store::open(path)
        .await
        .context("the database cannot be opened and migrated")?;
    let checked = async {
        let owner_id = store
            .owner_id()
            .await?
            .context("the database holds no installation id")?;
        if store.user_count().await? == 0 {
            bail!("the database holds no user");
        }
        let clusters = store.clusters().await?.len();
        anyhow::Ok((owner_id, clusters))
    }
    .await;
    store.close().await;
    let (owner_id, clusters) = checked?;
    let database_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Summary {
        owner_id,
        database_bytes,
        clusters,
    })
}

/// Restores the backup file `input` into `data_dir`. Refuses a directory that already
/// holds a database or a key unless `force` (then they are replaced; stop the server
/// first).
pub async fn restore(data_dir: &Path, input: &Path, force: bool) -> anyhow::Result<Summary> {
    let text = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let corrupt = |error: anyhow::Error| {
        error.context(format!(
            "{} is not a usable Flotilla backup (corrupted or truncated?)",
            input.display()
        ))
    };
    let envelope: Envelope = serde_json::from_slice(&text)
        .map_err(|error| corrupt(anyhow::anyhow!("not a backup envelope: {error}")))?;
    if envelope.format != FORMAT {
        return Err(corrupt(anyhow::anyhow!(
            "format '{}', expected '{FORMAT}'",
            envelope.format
        )));
    }
    if envelope.version != VERSION {
        bail!(
            "{} is a version {} backup; this flotilla reads version {VERSION}",
            input.display(),
            envelope.version
        );
    }
    let database = envelope.database.bytes("database").map_err(corrupt)?;
    let key = envelope.secret_key.bytes("secret key").map_err(corrupt)?;
    if key.len() != 32 {
        return Err(corrupt(anyhow::anyhow!(
            "the secret key has {} bytes, not 32",
            key.len()
        )));
    }

    let database_file = database_path(data_dir);
    let key_file = data_dir.join(SECRET_KEY_FILE);
    let mut wal = database_file.as_os_str().to_owned();
    wal.push("-wal");
    let existing: Vec<&Path> = [database_file.as_path(), Path::new(&wal), key_file.as_path()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() && !force {
        bail!(
            "{} already holds a Flotilla installation ({}); restore into an empty directory, or pass --force to replace it (with the server stopped)",
            data_dir.display(),
            existing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", data_dir.display()))?;

    // Check the database as a file of its own before touching what is there.
    let staged = temporary_name(data_dir, "restore");
    let checked = async {
        write_private(&staged, &database)?;
        let summary = inspect(&staged).await?;
        if summary.owner_id != envelope.owner_id {
            bail!(
                "the database belongs to installation {}, the backup says {}",
                summary.owner_id,
                envelope.owner_id
            );
        }
        anyhow::Ok(summary)
    }
    .await;
    let summary = match checked {
        Ok(summary) => summary,
        Err(error) => {
            let _ = remove_database_files(&staged);
            return Err(corrupt(error));
        }
    };
    let moved = (|| {
        let mut staged_wal = staged.as_os_str().to_owned();
        staged_wal.push("-wal");
        if Path::new(&staged_wal).exists() {
            bail!("the checked database left a write-ahead log behind; nothing was restored");
        }
        remove_database_files(&database_file)?;
        write_private(&key_file, &key)?;
        std::fs::rename(&staged, &database_file)
            .with_context(|| format!("moving the database to {}", database_file.display()))
    })();
    if let Err(error) = moved {
        let _ = remove_database_files(&staged);
        return Err(error);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_checks_its_size_and_checksum() {
        let part = Part::new(b"hello");
        assert_eq!(part.bytes("x").expect("intact"), b"hello");
        let mut altered = Part::new(b"hello");
        altered.data = BASE64.encode(b"hellp");
        let error = altered.bytes("database").expect_err("altered");
        assert!(error.to_string().contains("SHA-256"), "{error}");
        let mut short = Part::new(b"hello");
        short.data = BASE64.encode(b"hell");
        assert!(short.bytes("database").is_err());
    }
}
