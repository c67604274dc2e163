//! A real OpenLDAP server for tests: Debian's `slapd` in a temporary directory, on two free
//! loopback ports — LDAPS, and plain LDAP that accepts StartTLS — with a CA and a server
//! certificate made for it, and an `mdb` database under `dc=example,dc=com` holding
//! `ou=people` and `ou=groups`.
//!
//! What the user of the tests needs: Debian's `slapd` and `ldap-utils` packages
//! (`./scripts/test` installs them) and `openssl`.
//!
//! Design decisions:
//! * **One server per test** (a start takes well under a second): tests change the
//!   directory (remove a user from a group, disable one) and must not see each other's.
//! * **Real TLS.** The certificates are made by `openssl` for the test (a throwaway CA, a
//!   server certificate for 127.0.0.1 and `localhost`), so a client verifies them the way
//!   it would verify a company's directory: the CA is handed to it as PEM ([`Slapd::ca_pem`]).
//! * **Stopped even when nobody drops it.** `slapd` runs in the foreground (`-d 0`) under
//!   `setpriv --pdeathsig=TERM`, forked by a thread of its own that lives until the
//!   [`Slapd`] is dropped: the signal follows the thread that forked, so the server ends
//!   with its owner or with the test process, however that ends.
//! * Changes go through Debian's `ldapadd` / `ldapmodify` / `ldapdelete` as the directory's
//!   administrator over the loopback port, so the harness shares no code with the client
//!   under test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::host::{run, wait_for};

/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=com";
/// The directory administrator (`rootdn`), and the service account tests configure.
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const ADMIN_PASSWORD: &str = "directory-admin-secret";
/// Where users and groups live.
pub const PEOPLE: &str = "ou=people,dc=example,dc=com";
pub const GROUPS: &str = "ou=groups,dc=example,dc=com";

const SLAPD: &str = "/usr/sbin/slapd";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `slapd`; dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct Slapd {
    dir: tempfile::TempDir,
    ldaps_port: u16,
    ldap_port: u16,
    stop: Option<mpsc::Sender<()>>,
    parent: Option<std::thread::JoinHandle<()>>,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) -> anyhow::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flotilla test LDAP CA",
    ]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr)?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}

impl Slapd {
    /// Starts a server with the base entries (blocking; well under a second).
    pub fn start() -> anyhow::Result<Slapd> {
        if !Path::new(SLAPD).exists() {
            bail!(
                "no {SLAPD}: install Debian's slapd and ldap-utils packages \
                 (apt-get install slapd ldap-utils; ./scripts/test does)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("flotilla-slapd-")
            .tempdir()?;
        let path = dir.path().to_owned();
        fs::create_dir(path.join("data"))?;
        make_certificates(&path).context("making the test CA and certificate")?;
        let d = path.display();
        fs::write(
            path.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {d}/slapd.pid\n\
                 TLSCACertificateFile {d}/ca.pem\n\
                 TLSCertificateFile {d}/server.pem\n\
                 TLSCertificateKeyFile {d}/server.key\n\
                 database mdb\n\
                 maxsize 104857600\n\
                 suffix \"{SUFFIX}\"\n\
                 rootdn \"{ADMIN_DN}\"\n\
                 rootpw {ADMIN_PASSWORD}\n\
                 directory {d}/data\n"
            ),
        )?;
        let ldaps_port = crate::free_port();
        let ldap_port = crate::free_port();
        let (stop, stopped) = mpsc::channel::<()>();
        let (started, result) = mpsc::channel::<anyhow::Result<()>>();
        let config = path.join("slapd.conf");
        let log = path.join("slapd.log");
        let parent = std::thread::Builder::new()
            .name("slapd-parent".into())
            .spawn(move || {
                let child = (|| -> anyhow::Result<std::process::Child> {
                    let log = fs::File::create(&log)?;
                    Ok(Command::new("setpriv")
                        .args(["--pdeathsig=TERM", "--", SLAPD, "-d", "0", "-f"])
                        .arg(&config)
                        .arg("-h")
                        .arg(format!(
                            "ldaps://127.0.0.1:{ldaps_port}/ ldap://127.0.0.1:{ldap_port}/"
                        ))
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        .spawn()
                        .context("cannot start slapd")?)
                })();
                let mut child = match child {
                    Ok(child) => {
                        let _ = started.send(Ok(()));
                        child
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                // Until the owner drops the server (or goes away).
                let _ = stopped.recv();
                let _ = child.kill();
                let _ = child.wait();
            })?;
        result.recv().context("the slapd thread ended")??;
        let server = Slapd {
            dir,
            ldaps_port,
            ldap_port,
            stop: Some(stop),
            parent: Some(parent),
        };
        wait_for("slapd to answer", START_TIMEOUT, || {
            Ok(server
                .tool("ldapsearch")
                .args(["-b", "", "-s", "base", "(objectClass=*)"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(()))
        })
        .with_context(|| server.log())?;
        server.add(&format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n"
        ))?;
        Ok(server)
    }

    /// An `ldap-utils` command bound as the administrator over the plain loopback port.
    fn tool(&self, name: &str) -> Command {
        let mut command = Command::new(name);
        command
            .args(["-x", "-H", &format!("ldap://127.0.0.1:{}", self.ldap_port)])
            .args(["-D", ADMIN_DN, "-w", ADMIN_PASSWORD])
            .stdin(Stdio::null());
        command
    }

    fn with_ldif(&self, tool: &str, ldif: &str) -> anyhow::Result<()> {
        let file = self.dir.path().join("change.ldif");
        fs::write(&file, ldif)?;
        run(self.tool(tool).arg("-f").arg(&file)).map(|_| ())
    }

    /// `ldapadd` of LDIF entries.
    pub fn add(&self, ldif: &str) -> anyhow::Result<()> {
        self.with_ldif("ldapadd", ldif)
    }

    /// `ldapmodify` with LDIF changes.
    pub fn modify(&self, ldif: &str) -> anyhow::Result<()> {
        self.with_ldif("ldapmodify", ldif)
    }

    /// `ldapdelete` of one entry.
    pub fn delete(&self, dn: &str) -> anyhow::Result<()> {
        run(self.tool("ldapdelete").arg(dn)).map(|_| ())
    }

    /// A person under `ou=people` with this uid, full name and password; its DN.
    pub fn add_user(&self, uid: &str, full_name: &str, password: &str) -> anyhow::Result<String> {
        let dn = format!("uid={uid},{PEOPLE}");
        let surname = full_name.rsplit(' ').next().unwrap_or(full_name);
        self.add(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {full_name}\nsn: {surname}\nuserPassword: {password}\n"
        ))?;
        Ok(dn)
    }

    /// A `groupOfNames` under `ou=groups` with these member DNs (at least one: the schema
    /// requires a member); its DN.
    pub fn add_group(&self, cn: &str, members: &[&str]) -> anyhow::Result<String> {
        let dn = format!("cn={cn},{GROUPS}");
        let mut ldif = format!("dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n");
        for member in members {
            ldif.push_str(&format!("member: {member}\n"));
        }
        self.add(&ldif)?;
        Ok(dn)
    }

    /// `ldaps://127.0.0.1:<port>`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// `ldap://127.0.0.1:<port>`, which takes StartTLS.
    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> String {
        fs::read_to_string(self.dir.path().join("ca.pem")).unwrap_or_default()
    }

    /// The CA file (for the CLI's `ca_file`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(parent) = self.parent.take() {
            let _ = parent.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_directory_takes_users_and_groups_over_tls() {
        let slapd = Slapd::start().expect("slapd");
        let alice = slapd
            .add_user("alice", "Alice Smith", "alice-password")
            .expect("alice");
        slapd.add_group("ops", &[&alice]).expect("group");
        // A bind as the user over LDAPS, verified against the test CA.
        let answer = Command::new("ldapwhoami")
            .env("LDAPTLS_CACERT", slapd.ca_path())
            .args([
                "-x",
                "-H",
                &slapd.ldaps_url(),
                "-D",
                &alice,
                "-w",
                "alice-password",
            ])
            .output()
            .expect("ldapwhoami");
        assert!(answer.status.success(), "{answer:?}");
        assert!(String::from_utf8_lossy(&answer.stdout).contains("uid=alice"));
        let wrong = Command::new("ldapwhoami")
            .env("LDAPTLS_CACERT", slapd.ca_path())
            .args([
                "-x",
                "-ZZ",
                "-H",
                &slapd.ldap_url(),
                "-D",
                &alice,
                "-w",
                "nope",
            ])
            .output()
            .expect("ldapwhoami");
        assert!(!wrong.status.success());
    }
}
