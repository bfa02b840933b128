//! A fresh orders database for one test: a SQLite file or a PostgreSQL database, removed afterwards.

use std::path::PathBuf;

use sqlx::Connection as _;

use crate::postgres::PostgresServer;

/// The database engines the orders service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh database for one test: a SQLite file in a new temporary directory, or a new
/// PostgreSQL database with a random name. Removed when dropped (also when the test panicked).
pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A SQLite file in a directory that does not exist yet (the service creates it).
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("shopstack-orders-{}", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}/data/orders.db", dir.display());
        Self {
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A new database on [`PostgresServer::shared_url`]'s server; panics when there is none.
    pub async fn postgres() -> Self {
        let admin_url = postgres_admin_url().await;
        let name = format!("orders_test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is needed for this test: {error}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("CREATE DATABASE {name}: {error}"));
        let _ = connection.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Self {
            url: format!("{base}/{name}"),
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    pub async fn of(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => Self::sqlite(),
            Engine::Postgres => Self::postgres().await,
        }
    }
}

/// Where the PostgreSQL databases are created: `TEST_POSTGRES_URL` when set, else this test
/// binary's own server (started on first use, shared by its tests).
async fn postgres_admin_url() -> String {
    match tokio::task::spawn_blocking(PostgresServer::shared_url).await {
        Ok(Ok(url)) => url,
        Ok(Err(error)) => panic!("no PostgreSQL for this test: {error:#}"),
        Err(error) => panic!("no PostgreSQL for this test: {error}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
                let _ = std::thread::spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
                    else {
                        return;
                    };
                    runtime.block_on(async move {
                        if let Ok(mut connection) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            )))
                            .execute(&mut connection)
                            .await;
                            let _ = connection.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}
