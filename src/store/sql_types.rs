//! Portable SQL types: one diesel schema for both backends.
//!
//! PostgreSQL keeps its native `uuid`, `timestamptz` and `jsonb` columns; SQLite stores the same
//! values as TEXT (UUIDs hyphenated, timestamps as fixed-width RFC 3339 UTC with microseconds so
//! that text order is time order, JSON as its text). The SQL types below carry both mappings, and
//! the value newtypes ([`DbUuid`], [`DbTime`], [`DbJson`]) implement the conversions, so every
//! query in `store` is written once and compiled for each backend.
//!
//! The names match what `diesel print-schema` emits for PostgreSQL, so `diesel.toml` can point
//! `import_types` at this module and a regenerated `schema.rs` compiles unchanged.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sqlite::{Sqlite, SqliteValue};

pub use diesel::sql_types::{BigInt, Bool, Double, Float8, Int4, Int8, Integer, Nullable, Text};

/// A UUID: `uuid` on PostgreSQL, hyphenated TEXT on SQLite.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Debug, Clone, Copy)]
#[diesel(postgres_type(oid = 2950, array_oid = 2951))]
#[diesel(sqlite_type(name = "Text"))]
pub struct Uuid;

/// A point in time in UTC: `timestamptz` on PostgreSQL, RFC 3339 TEXT on SQLite.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Debug, Clone, Copy)]
#[diesel(postgres_type(oid = 1184, array_oid = 1185))]
#[diesel(sqlite_type(name = "Text"))]
pub struct Timestamptz;

// `table!` gives columns named after temporal types `+`/`-` operators. Mirror PostgreSQL:
// timestamptz ± interval (only meaningful on PostgreSQL; the store does its time arithmetic in
// Rust so queries stay portable).
impl diesel::sql_types::ops::Add for Timestamptz {
    type Rhs = diesel::sql_types::Interval;
    type Output = Timestamptz;
}

impl diesel::sql_types::ops::Sub for Timestamptz {
    type Rhs = diesel::sql_types::Interval;
    type Output = Timestamptz;
}

/// A JSON document: `jsonb` on PostgreSQL, TEXT on SQLite.
#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId, Debug, Clone, Copy)]
#[diesel(postgres_type(oid = 3802, array_oid = 3807))]
#[diesel(sqlite_type(name = "Text"))]
pub struct Jsonb;

/// A UUID value bound to or read from a [`Uuid`] column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Uuid)]
pub struct DbUuid(pub uuid::Uuid);

/// A UTC timestamp bound to or read from a [`Timestamptz`] column, at microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, AsExpression, FromSqlRow)]
#[diesel(sql_type = Timestamptz)]
pub struct DbTime(pub DateTime<Utc>);

/// A JSON value bound to or read from a [`Jsonb`] column.
#[derive(Debug, Clone, PartialEq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
pub struct DbJson(pub serde_json::Value);

impl From<uuid::Uuid> for DbUuid {
    fn from(value: uuid::Uuid) -> Self {
        Self(value)
    }
}

impl From<DateTime<Utc>> for DbTime {
    /// Truncates to microseconds: both backends store microseconds, so a value written and read
    /// back compares equal to the one the caller holds.
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

/// SQLite text form of a timestamp: fixed width, so lexical order is chronological order.
const SQLITE_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

impl ToSql<Uuid, Pg> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <uuid::Uuid as ToSql<diesel::sql_types::Uuid, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Uuid, Pg> for DbUuid {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <uuid::Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Uuid, Sqlite> for DbUuid {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<Uuid, Sqlite> for DbUuid {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        Ok(Self(uuid::Uuid::parse_str(&text)?))
    }
}

impl ToSql<Timestamptz, Pg> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <DateTime<Utc> as ToSql<diesel::sql_types::Timestamptz, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Timestamptz, Pg> for DbTime {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <DateTime<Utc> as FromSql<diesel::sql_types::Timestamptz, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Timestamptz, Sqlite> for DbTime {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.format(SQLITE_TIME_FORMAT).to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<Timestamptz, Sqlite> for DbTime {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        parse_sqlite_time(&text).map(Self)
    }
}

/// Reads our own RFC 3339 form, and SQLite's `CURRENT_TIMESTAMP` form (UTC, space separated) so
/// that rows written by hand or by SQL defaults still load.
fn parse_sqlite_time(text: &str) -> deserialize::Result<DateTime<Utc>> {
    if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
        return Ok(parsed.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|err| format!("invalid timestamp {text:?} in SQLite: {err}"))?;
    Ok(naive.and_utc())
}

impl ToSql<Jsonb, Pg> for DbJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <serde_json::Value as ToSql<diesel::sql_types::Jsonb, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Jsonb, Pg> for DbJson {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        <serde_json::Value as FromSql<diesel::sql_types::Jsonb, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Jsonb, Sqlite> for DbJson {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(serde_json::to_string(&self.0)?);
        Ok(IsNull::No)
    }
}

impl FromSql<Jsonb, Sqlite> for DbJson {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        Ok(Self(serde_json::from_str(&text)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_time_text_sorts_chronologically_and_round_trips() {
        let early = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000001Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let late = early + chrono::Duration::milliseconds(1500);
        let (a, b) = (
            early.format(SQLITE_TIME_FORMAT).to_string(),
            late.format(SQLITE_TIME_FORMAT).to_string(),
        );
        assert_eq!(a.len(), b.len());
        assert!(a < b);
        assert_eq!(parse_sqlite_time(&a).ok(), Some(early));
    }

    #[test]
    fn sqlite_current_timestamp_form_is_read_as_utc() {
        let parsed = parse_sqlite_time("2026-11-21 10:00:00").ok();
        assert_eq!(
            parsed.map(|t| t.to_rfc3339()),
            Some("2026-11-21T10:00:00+00:00".into())
        );
        assert!(parse_sqlite_time("yesterday").is_err());
    }

    #[test]
    fn db_time_truncates_to_microseconds() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap_or_default();
        assert_eq!(DbTime::from(t).0.timestamp_subsec_nanos(), 123_456_000);
    }
}
