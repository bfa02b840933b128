//! The orders database: SQLite (the embedded default, a file under `./data/`) or PostgreSQL
//! (`DATABASE_URL=postgres://…`), one schema, migrations embedded in the binary.
//!
//! Queries are written once and run on either engine through `on_db!`, which expands the body
//! once per engine, so each runs with that engine's native types (UUID and TIMESTAMPTZ on
//! PostgreSQL, text on SQLite). Placeholders are `$1, $2, …`, which both engines accept.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Database, Decode, Encode, Postgres, SqlSafeStr, Sqlite, Transaction, Type};
use tracing::Instrument as _;
use uuid::Uuid;

/// Where the embedded default keeps its file.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://data/orders.db";

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "orders",
        include_str!("../migrations/postgres/0001_orders.sql"),
    ),
    (
        2,
        "idempotency scope",
        include_str!("../migrations/postgres/0002_idempotency_scope.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "orders", include_str!("../migrations/sqlite/0001_orders.sql")),
    (
        2,
        "idempotency scope",
        include_str!("../migrations/sqlite/0002_idempotency_scope.sql"),
    ),
];

/// A connection pool on one of the two engines; cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to the engine's pool (`&SqlitePool` or `&PgPool`). The body is
/// compiled once per engine.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

impl Db {
    /// Connect to `url` (or the embedded default), creating the SQLite file and its directory if
    /// missing, and apply the migrations.
    pub async fn connect(url: Option<&str>, max_connections: u32) -> anyhow::Result<Self> {
        let url = url
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .unwrap_or(DEFAULT_SQLITE_URL);
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await
                .with_context(|| format!("Failed to connect to PostgreSQL at {}", redact(url)))?;
            Db::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("DATABASE_URL={url:?} is not a valid SQLite URL"))?;
            let file = options.get_filename().to_owned();
            if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty())
                && file != Path::new(":memory:")
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("Failed to create the database directory {}", dir.display()))?;
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .with_context(|| format!("Failed to open the SQLite database {}", file.display()))?;
            Db::Sqlite(pool)
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite: (got {:?})",
                redact(url)
            );
        };
        db.migrate().await?;
        tracing::info!(engine = db.engine(), url = %redact(url), "orders database ready");
        Ok(db)
    }

    /// `sqlite` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = |set: &[(i64, &'static str, &'static str)]| {
            Migrator::with_migrations(
                set.iter()
                    .map(|&(version, description, sql)| {
                        Migration::new(
                            version,
                            Cow::Borrowed(description),
                            MigrationType::Simple,
                            sql.into_sql_str(),
                            false,
                        )
                    })
                    .collect(),
            )
        };
        match self {
            Db::Sqlite(pool) => migrator(SQLITE_MIGRATIONS).run(pool).await,
            Db::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await,
        }
        .context("Failed to apply the database migrations")
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await);
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Start a transaction meant to write. SQLite takes the write lock at once (`BEGIN IMMEDIATE`),
/// so two writers wait for each other instead of failing when a read lock must be upgraded.
pub trait BeginWrite {
    type Engine: Database;
    fn begin_write(&self) -> impl Future<Output = sqlx::Result<Transaction<'static, Self::Engine>>> + Send;
}

impl BeginWrite for SqlitePool {
    type Engine = Sqlite;
    fn begin_write(&self) -> impl Future<Output = sqlx::Result<Transaction<'static, Sqlite>>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Engine = Postgres;
    fn begin_write(&self) -> impl Future<Output = sqlx::Result<Transaction<'static, Postgres>>> + Send {
        self.begin()
    }
}

/// A UUID column: native `UUID` on PostgreSQL, hyphenated text on SQLite (readable in `sqlite3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbId(pub Uuid);

impl Type<Sqlite> for DbId {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for DbId {
    fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(self.0.hyphenated().to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbId {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<'r, Sqlite>>::decode(value)?;
        Ok(DbId(Uuid::parse_str(text)?))
    }
}

impl Type<Postgres> for DbId {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for DbId {
    fn encode_by_ref(&self, buf: &mut <Postgres as Database>::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbId {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbId(<Uuid as Decode<'r, Postgres>>::decode(value)?))
    }
}

/// Now, at the precision both engines keep (microseconds), so what is read back equals what
/// was written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// One SQL statement with its client span: [`sqlx::query`], executed inside the span the
/// database semantic conventions describe. The span carries the statement's text as written —
/// placeholders (`$1`), never the values bound to them, which travel separately.
pub struct Statement<'q, DB: Database> {
    query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments>,
    span: tracing::Span,
}

/// [`sqlx::query`] in a client span (see [`Statement`]).
pub fn query<'q, DB: Database>(sql: impl SqlSafeStr) -> Statement<'q, DB> {
    let sql = sql.into_sql_str();
    let span = statement_span(DB::NAME, sql.as_str());
    Statement {
        query: sqlx::query(sql),
        span,
    }
}

/// The client span of one statement: `db.system.name`, `db.operation.name` (its first word),
/// `db.collection.name` (the table it names first, when it names one) and `db.query.text`.
fn statement_span(engine: &str, sql: &str) -> tracing::Span {
    let system = match engine {
        "PostgreSQL" => "postgresql",
        "SQLite" => "sqlite",
        other => other,
    };
    let words: Vec<&str> = sql.split_whitespace().take(64).collect();
    let operation = words
        .first()
        .map(|word| word.to_ascii_uppercase())
        .unwrap_or_default();
    let table = words
        .windows(2)
        .find(|pair| {
            ["FROM", "INTO", "UPDATE"]
                .iter()
                .any(|keyword| pair[0].eq_ignore_ascii_case(keyword))
        })
        .map(|pair| pair[1].trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|table| !table.is_empty());
    let span = tracing::info_span!(
        "db.statement",
        otel.name = %format_args!("{operation} {}", table.unwrap_or(system)),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = system,
        db.operation.name = %operation,
        db.collection.name = tracing::field::Empty,
        db.query.text = sql,
    );
    if let Some(table) = table {
        span.record("db.collection.name", table);
    }
    span
}

impl<'q, DB: Database> Statement<'q, DB> {
    pub fn bind<'t, T: Encode<'t, DB> + Type<DB>>(self, value: T) -> Self {
        Self {
            query: self.query.bind(value),
            span: self.span,
        }
    }

    pub async fn execute<'e, 'c: 'e, E>(self, executor: E) -> sqlx::Result<DB::QueryResult>
    where
        'q: 'e,
        <DB as Database>::Arguments: 'e + sqlx::IntoArguments<DB>,
        E: sqlx::Executor<'c, Database = DB>,
    {
        let result = self.query.execute(executor).instrument(self.span.clone()).await;
        failed_in(&self.span, result)
    }

    pub async fn fetch_all<'e, 'c: 'e, E>(self, executor: E) -> sqlx::Result<Vec<DB::Row>>
    where
        'q: 'e,
        <DB as Database>::Arguments: 'e + sqlx::IntoArguments<DB>,
        E: sqlx::Executor<'c, Database = DB>,
    {
        let result = self.query.fetch_all(executor).instrument(self.span.clone()).await;
        failed_in(&self.span, result)
    }

    pub async fn fetch_one<'e, 'c: 'e, E>(self, executor: E) -> sqlx::Result<DB::Row>
    where
        'q: 'e,
        <DB as Database>::Arguments: 'e + sqlx::IntoArguments<DB>,
        E: sqlx::Executor<'c, Database = DB>,
    {
        let result = self.query.fetch_one(executor).instrument(self.span.clone()).await;
        failed_in(&self.span, result)
    }

    pub async fn fetch_optional<'e, 'c: 'e, E>(self, executor: E) -> sqlx::Result<Option<DB::Row>>
    where
        'q: 'e,
        <DB as Database>::Arguments: 'e + sqlx::IntoArguments<DB>,
        E: sqlx::Executor<'c, Database = DB>,
    {
        let result = self
            .query
            .fetch_optional(executor)
            .instrument(self.span.clone())
            .await;
        failed_in(&self.span, result)
    }
}

/// Mark the statement's span failed when it did.
fn failed_in<T>(span: &tracing::Span, result: sqlx::Result<T>) -> sqlx::Result<T> {
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// True when `error` is a unique-constraint violation (on either engine).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/orders"),
            "postgres://postgres@127.0.0.1/orders"
        );
        assert_eq!(redact("sqlite://data/orders.db"), "sqlite://data/orders.db");
    }
}
