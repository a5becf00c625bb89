use super::*;

#[test]
fn a_closed_postgres_socket_is_transient_a_constraint_is_not() {
    use diesel::result::{DatabaseErrorKind, Error};
    let db = |kind, msg: &str| {
        StoreError::Database(Error::DatabaseError(kind, Box::new(msg.to_owned())))
    };
    assert!(db(DatabaseErrorKind::UnableToSendCommand, "connection closed").is_transient());
    assert!(db(DatabaseErrorKind::ClosedConnection, "closed").is_transient());
    assert!(db(DatabaseErrorKind::Unknown, "database is locked").is_transient());
    assert!(!db(DatabaseErrorKind::UniqueViolation, "duplicate key").is_transient());
    assert!(!db(DatabaseErrorKind::Unknown, "syntax error").is_transient());
}

#[test]
fn parses_supported_schemes() {
    assert_eq!(
        DatabaseUrl::parse("sqlite:///var/lib/ce.db").unwrap(),
        DatabaseUrl::Sqlite {
            path: "/var/lib/ce.db".into()
        }
    );
    assert_eq!(
        DatabaseUrl::parse("sqlite://data/ce.db").unwrap(),
        DatabaseUrl::Sqlite {
            path: "data/ce.db".into()
        }
    );
    assert_eq!(
        DatabaseUrl::parse("postgresql://h/db").unwrap().backend(),
        "postgres"
    );
}

#[test]
fn rejects_unknown_schemes_and_bare_paths() {
    assert!(matches!(
        DatabaseUrl::parse("mysql://h/db"),
        Err(StoreError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        DatabaseUrl::parse("data.db"),
        Err(StoreError::InvalidUrl(_))
    ));
    assert!(matches!(
        DatabaseUrl::parse("sqlite::memory:"),
        Err(StoreError::InvalidUrl(_))
    ));
}

#[test]
fn display_redacts_passwords() {
    let url = DatabaseUrl::parse("postgres://app:s3cret@db:5432/calls").unwrap();
    assert_eq!(url.to_string(), "postgres://app:***@db:5432/calls");
    let url = DatabaseUrl::parse("postgres://db/calls?user=a&password=s3cret").unwrap();
    assert!(!url.to_string().contains("s3cret"));
    assert!(!format!("{url:?}").contains("s3cret"));
}
