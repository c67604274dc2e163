//! The store's tests run against both databases: SQLite in a temporary directory and a
//! fresh database on the test process's real PostgreSQL server
//! ([`flotilla_testkit::postgres`]). A test is written once as `async fn name(backend:
//! Backend)` and [`store_tests!`] makes one `#[tokio::test]` per database of it.

use std::ops::Deref;

use flotilla_core::ClusterSpec;
use flotilla_core::state::ClusterState;

use super::{ActionRecord, ClusterRecord, Store};

/// Which database a store test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A migrated, empty store and what keeps its database alive (the SQLite file's directory,
/// or the PostgreSQL database, dropped after the store).
pub(crate) struct TestStore {
    store: Store,
    /// The database's file or URL, for [`TestStore::another_replica`].
    pub(crate) location: String,
    _sqlite_dir: Option<tempfile::TempDir>,
    _postgres: Option<flotilla_testkit::postgres::TestDatabase<'static>>,
}

impl Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

pub(crate) async fn store(backend: Backend) -> TestStore {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("t.db");
            let store = Store::open(&path).await.expect("open");
            TestStore {
                store,
                location: path.display().to_string(),
                _sqlite_dir: Some(dir),
                _postgres: None,
            }
        }
        Backend::Postgres => {
            let database = tokio::task::spawn_blocking(flotilla_testkit::postgres::database)
                .await
                .expect("join")
                .expect("a PostgreSQL database");
            let store = Store::connect(database.url()).await.expect("connect");
            TestStore {
                store,
                location: database.url().to_owned(),
                _sqlite_dir: None,
                _postgres: Some(database),
            }
        }
    }
}

impl TestStore {
    /// A second store on the same database, with pools of its own: another replica.
    pub(crate) async fn another_replica(&self) -> Store {
        match self.store.dialect() {
            super::Dialect::Sqlite => Store::open(std::path::Path::new(&self.location)).await,
            super::Dialect::Postgres => Store::connect(&self.location).await,
        }
        .expect("another replica")
    }
}

/// A one-node cluster `c1` of generation 1 in `state`.
pub(crate) fn cluster(state: ClusterState) -> ClusterRecord {
    let spec = ClusterSpec::from_json(&serde_json::json!({
        "name": "c", "target_num_nodes": 1, "region": "/api/infra/v1/region/aws/us-east-1/",
        "node_type": "/api/infra/v1/nodetype/aws/t3.micro/"
    }))
    .expect("spec");
    ClusterRecord {
        uuid: "c1".into(),
        nickname: "c".into(),
        spec,
        state,
        generation: 1,
        next_slot: 1,
        current_action: None,
        created_at: 0,
        deployed_at: None,
        destroyed_at: None,
    }
}

/// A running action on `object_uri`.
pub(crate) fn action(uuid: &str, object_uri: &str) -> ActionRecord {
    ActionRecord {
        uuid: uuid.into(),
        object_uri: object_uri.into(),
        label: "l".into(),
        method: "POST".into(),
        path: "/".into(),
        username: "u".into(),
        user_agent: String::new(),
        ip: String::new(),
        state: flotilla_api::action_state::IN_PROGRESS.into(),
        start_date: 0,
        end_date: None,
        body: String::new(),
        logs: String::new(),
        can_be_canceled: false,
        can_be_retried: false,
    }
}

/// `store_tests!(a, b)`: `sqlite::a`, `postgres::a`, … each a `#[tokio::test]` running the
/// test function `a(Backend)` of the calling module against that database.
macro_rules! store_tests {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::store::testing::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::store::testing::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use store_tests;
