//! LDAP sign-in against a real OpenLDAP (issue #15, part 2): Debian's `slapd` with TLS
//! (`flotilla_testkit::slapd`), users and groups in it, the server configured through its
//! API. A directory user signs in with its directory password and is created on the way,
//! its directory groups give it its teams; a wrong password and an unknown name get the same
//! answer; a local user keeps signing in with its own password; a removed group membership
//! and a disabled user lose their access at the next sync — keys and dashboard session
//! included — and a user deleted from the directory at its next sign-in.

use std::sync::Arc;

use flotilla_api::uri;
use flotilla_core::fake::FakeCloud;
use flotilla_testkit::slapd::{self, Slapd};
use reqwest::Method;
use serde_json::{Value, json};

use crate::access::call_as;
use crate::harness::{Reply, TestServer, config};

const SEARCH_FILTER: &str = "(&(objectClass=inetOrgPerson)(!(description=disabled)))";

async fn start_slapd() -> Slapd {
    tokio::task::spawn_blocking(Slapd::start)
        .await
        .expect("join")
        .expect("slapd (apt-get install slapd ldap-utils)")
}

fn settings(url: &str, tls: &str, ca_pem: &str) -> Value {
    json!({
        "servers": [{"url": url, "tls": tls, "ca_pem": ca_pem,
            "bind_dn": slapd::ADMIN_DN, "bind_password": slapd::ADMIN_PASSWORD}],
        "searches": [{"base_dn": slapd::PEOPLE, "scope": "sub", "filter": SEARCH_FILTER,
            "username_attribute": "uid", "full_name_attribute": "cn"}],
    })
}

fn ok(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    reply.body
}

fn who(user: &str, password: &str) -> (String, String) {
    (user.to_owned(), password.to_owned())
}

async fn members(server: &TestServer, team: &str) -> Vec<String> {
    let team = ok(server.get(&uri::team("corp", team)).await, 200);
    team["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m.as_str().expect("name").to_owned())
        .collect()
}

/// A dashboard session opened with `user`'s password: the cookie header's value.
async fn session(server: &TestServer, user: &str, password: &str) -> String {
    let answer = server
        .client
        .post(format!("{}{}", server.base, uri::session()))
        .json(&json!({"user": user, "key": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(answer.status(), 200);
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie");
    cookie.split(';').next().expect("pair").to_owned()
}

async fn with_cookie(server: &TestServer, cookie: &str, path: &str) -> u16 {
    server
        .client
        .get(format!("{}{path}", server.base))
        .header("Cookie", cookie)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn directory_users_sign_in_get_their_teams_and_lose_access_when_the_directory_says() {
    let directory = start_slapd().await;
    let alice = directory
        .add_user("alice", "Alice Smith", "alice-password-1")
        .expect("alice");
    let bob = directory
        .add_user("bob", "Bob Jones", "bob-password-12")
        .expect("bob");
    let carol = directory
        .add_user("carol", "Carol King", "carol-password-1")
        .expect("carol");
    // An entry named like the server administrator, with a password of its own.
    directory
        .add_user("admin", "Not The Admin", "directory-admin-1")
        .expect("admin entry");
    let ops = directory.add_group("ops", &[&alice, &bob]).expect("ops");
    let dev = directory.add_group("dev", &[&bob]).expect("dev");

    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    ok(
        server
            .call(Method::POST, &uri::orgs(), Some(json!({"name": "corp"})))
            .await,
        201,
    );
    for (team, group) in [("ops", &ops), ("dev", &dev)] {
        ok(
            server
                .call(
                    Method::POST,
                    &uri::teams("corp"),
                    Some(json!({"name": team, "ldap_group_dn": group})),
                )
                .await,
            201,
        );
    }
    ok(
        server
            .call(
                Method::POST,
                &uri::grants("corp"),
                Some(json!({"team": "ops", "role": "view"})),
            )
            .await,
        201,
    );
    // A local user, created before LDAP is on, whose name no search finds.
    ok(
        server
            .call(
                Method::POST,
                &uri::users(),
                Some(json!({"username": "local", "password": "local-password-1"})),
            )
            .await,
        201,
    );

    // Settings with a field wrong are refused naming it; then LDAPS with the test CA.
    let mut wrong = settings(&directory.ldap_url(), "ldaps", &directory.ca_pem());
    wrong["servers"][0]["tls"] = json!("ldaps");
    let refused = server.call(Method::PUT, &uri::ldap(), Some(wrong)).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("servers[0].url:")),
        "{:?}",
        refused.body
    );
    ok(
        server
            .call(
                Method::PUT,
                &uri::ldap(),
                Some(settings(
                    &directory.ldaps_url(),
                    "ldaps",
                    &directory.ca_pem(),
                )),
            )
            .await,
        200,
    );
    let shown = ok(server.get(&uri::ldap()).await, 200);
    assert_eq!(shown["servers"][0]["bind_password_set"], json!(true));
    assert!(
        !shown.to_string().contains(slapd::ADMIN_PASSWORD),
        "{shown}"
    );
    // Only the server administrator sees or changes the settings.
    let local = who("local", "local-password-1");
    assert_eq!(
        call_as(&server, &local, Method::GET, &uri::ldap(), None)
            .await
            .status,
        403
    );

    // Alice signs in with her directory password: created, and in `ops` by her group.
    let alice_login = who("alice", "alice-password-1");
    ok(
        call_as(
            &server,
            &alice_login,
            Method::GET,
            &uri::node_clusters(),
            None,
        )
        .await,
        200,
    );
    let user = ok(server.get(&uri::user("alice")).await, 200);
    assert_eq!(user["organizations"], json!(["corp"]));
    assert_eq!(members(&server, "ops").await, vec!["alice".to_owned()]);
    // The local user still signs in with its own password.
    ok(
        call_as(&server, &local, Method::GET, &uri::node_clusters(), None).await,
        200,
    );

    // The directory's `admin` entry does not become the server administrator: its password
    // is refused, the administrator's key still works and it is no directory user.
    assert_eq!(
        call_as(
            &server,
            &who("admin", "directory-admin-1"),
            Method::GET,
            &uri::node_clusters(),
            None
        )
        .await
        .status,
        401
    );
    assert_eq!(
        ok(server.get(&uri::user("admin")).await, 200)["admin"],
        json!(true)
    );

    // A wrong password and an unknown name: the same answer.
    let wrong_password = call_as(
        &server,
        &who("alice", "not-her-password"),
        Method::GET,
        &uri::node_clusters(),
        None,
    )
    .await;
    let unknown = call_as(
        &server,
        &who("mallory", "not-her-password"),
        Method::GET,
        &uri::node_clusters(),
        None,
    )
    .await;
    assert_eq!(wrong_password.status, 401);
    assert_eq!(
        (wrong_password.status, &wrong_password.body),
        (unknown.status, &unknown.body)
    );
    // An empty password is not an anonymous bind.
    assert_eq!(
        call_as(
            &server,
            &who("alice", ""),
            Method::GET,
            &uri::node_clusters(),
            None
        )
        .await
        .status,
        401
    );

    // Bob and Carol sign in; Alice takes an API key and opens a dashboard session.
    for (user, password) in [("bob", "bob-password-12"), ("carol", "carol-password-1")] {
        ok(
            call_as(
                &server,
                &who(user, password),
                Method::GET,
                &uri::node_clusters(),
                None,
            )
            .await,
            200,
        );
    }
    assert_eq!(members(&server, "ops").await, vec!["alice", "bob"]);
    assert_eq!(members(&server, "dev").await, vec!["bob"]);
    let key = ok(
        call_as(
            &server,
            &alice_login,
            Method::POST,
            &uri::api_keys("alice"),
            Some(json!({"name": "ci"})),
        )
        .await,
        201,
    )["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let alice_key = who("alice", &key);
    ok(
        call_as(
            &server,
            &alice_key,
            Method::GET,
            &uri::node_clusters(),
            None,
        )
        .await,
        200,
    );
    let cookie = session(&server, "alice", "alice-password-1").await;
    assert_eq!(
        with_cookie(&server, &cookie, &uri::node_clusters()).await,
        200
    );

    // The directory changes: Bob leaves `ops`, Alice is disabled (the search filter no
    // longer finds her). Nothing changes until the sync…
    directory
        .modify(&format!(
            "dn: {ops}\nchangetype: modify\ndelete: member\nmember: {bob}\n"
        ))
        .expect("remove bob from ops");
    directory
        .modify(&format!(
            "dn: {alice}\nchangetype: modify\nadd: description\ndescription: disabled\n"
        ))
        .expect("disable alice");
    assert_eq!(members(&server, "ops").await, vec!["alice", "bob"]);
    let report = ok(
        server.call(Method::POST, &uri::ldap_sync(), None).await,
        200,
    );
    assert_eq!(report["users"], json!(3), "{report}");
    assert_eq!(report["disabled"], json!(["alice"]), "{report}");
    assert_eq!(
        report["removed"],
        json!(["corp/ops/alice", "corp/ops/bob"]),
        "{report}"
    );
    // …after which Bob is only in `dev`, and Alice's password, key and session all stop.
    assert!(members(&server, "ops").await.is_empty());
    assert_eq!(members(&server, "dev").await, vec!["bob"]);
    for credentials in [&alice_login, &alice_key] {
        assert_eq!(
            call_as(
                &server,
                credentials,
                Method::GET,
                &uri::node_clusters(),
                None
            )
            .await
            .status,
            401
        );
    }
    assert_eq!(
        with_cookie(&server, &cookie, &uri::node_clusters()).await,
        401
    );
    // A second sync has nothing to do.
    let again = ok(
        server.call(Method::POST, &uri::ldap_sync(), None).await,
        200,
    );
    assert_eq!(again["disabled"], json!([]));
    assert_eq!(again["removed"], json!([]));

    // Carol is deleted from the directory: her next sign-in is refused like a stranger's,
    // and she is disabled on the way.
    directory.delete(&carol).expect("delete carol");
    let gone = call_as(
        &server,
        &who("carol", "carol-password-1"),
        Method::GET,
        &uri::node_clusters(),
        None,
    )
    .await;
    assert_eq!((gone.status, &gone.body), (unknown.status, &unknown.body));
    assert_eq!(server.get(&uri::user("carol")).await.status, 404);

    // Neither the bind password nor a directory password is in the database's files (the
    // bind password is sealed; users' passwords are never stored). On PostgreSQL the
    // secrets-at-rest test (`security.rs`) searches a dump instead.
    let mut stored = Vec::new();
    for file in ["flotilla.db", "flotilla.db-wal"] {
        stored.extend(std::fs::read(dir.path().join(file)).unwrap_or_default());
    }
    if flotilla_testkit::DatabaseKind::from_env() == flotilla_testkit::DatabaseKind::Sqlite {
        assert!(!stored.is_empty(), "the SQLite files were read");
    }
    for secret in [slapd::ADMIN_PASSWORD, "alice-password-1", "bob-password-12"] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is in the database"
        );
    }

    // Re-enabled in the directory, Alice signs in again (and is back in `ops`).
    directory
        .modify(&format!(
            "dn: {alice}\nchangetype: modify\ndelete: description\n"
        ))
        .expect("enable alice");
    ok(
        call_as(
            &server,
            &alice_login,
            Method::GET,
            &uri::node_clusters(),
            None,
        )
        .await,
        200,
    );
    assert_eq!(members(&server, "ops").await, vec!["alice"]);
    server.stop().await;
}

#[tokio::test]
async fn starttls_with_the_directorys_ca_and_an_untrusted_certificate_is_refused() {
    let directory = start_slapd().await;
    directory
        .add_user("dave", "Dave Brown", "dave-password-12")
        .expect("dave");
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(&dir), Arc::new(FakeCloud::new()), None).await;
    ok(
        server
            .call(
                Method::PUT,
                &uri::ldap(),
                Some(settings(
                    &directory.ldap_url(),
                    "starttls",
                    &directory.ca_pem(),
                )),
            )
            .await,
        200,
    );
    let dave = who("dave", "dave-password-12");
    ok(
        call_as(&server, &dave, Method::GET, &uri::node_clusters(), None).await,
        200,
    );
    // The bind password is kept when a PUT leaves it out.
    let mut kept = settings(&directory.ldaps_url(), "ldaps", &directory.ca_pem());
    kept["servers"][0]
        .as_object_mut()
        .expect("server")
        .remove("bind_password");
    let refused = server
        .call(Method::PUT, &uri::ldap(), Some(kept.clone()))
        .await;
    assert_eq!(
        refused.status, 400,
        "another URL: no stored password to keep"
    );
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("servers[0].bind_password:"))
    );
    // A CA that did not sign the directory's certificate: the directory cannot be
    // reached, and a directory user is told so (503), never let in.
    let other_ca = start_slapd().await.ca_pem();
    ok(
        server
            .call(
                Method::PUT,
                &uri::ldap(),
                Some(settings(&directory.ldaps_url(), "ldaps", &other_ca)),
            )
            .await,
        200,
    );
    let untrusted = call_as(&server, &dave, Method::GET, &uri::node_clusters(), None).await;
    assert_eq!(untrusted.status, 503, "{:?}", untrusted.body);
    // And the admin's key still works whatever the directory does.
    ok(server.get(&uri::node_clusters()).await, 200);
    server.stop().await;
}
