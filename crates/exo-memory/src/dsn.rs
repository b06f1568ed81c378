//! Where a store lives: DSN parsing, normalisation and redaction.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    store::Backend,
};

/// Where a SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SqliteLocation {
    /// A private in-memory database (`sqlite::memory:`). Each store opened
    /// from it is a new, empty database; the registry opens it once per
    /// process.
    Memory,
    /// A database file, created when missing. The path is absolute.
    File(PathBuf),
}

/// A store that can be opened: a backend and, for SQL backends, where.
///
/// Its `Debug` and `Display` forms hide passwords.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StoreTarget {
    /// The process's short-term store.
    ShortTerm,
    /// A SQLite database.
    Sqlite(SqliteLocation),
    /// A PostgreSQL database, by its `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl StoreTarget {
    /// Parses a DSN and infers its backend: `postgres://` and
    /// `postgresql://` URLs are PostgreSQL; `sqlite:` DSNs and plain paths
    /// are SQLite. See [`StoreTarget::parse_for`] for the accepted forms.
    pub fn parse(dsn: &str) -> Result<Self> {
        let trimmed = dsn.trim();
        if is_postgres_url(trimmed) {
            Self::parse_for(Backend::Postgres, trimmed)
        } else {
            Self::parse_for(Backend::Sqlite, trimmed)
        }
    }

    /// Parses a DSN for `backend`.
    ///
    /// SQLite accepts `sqlite:///abs/path.db` (three slashes: an absolute
    /// path), `sqlite://relative/path.db`, `sqlite:path.db`,
    /// `sqlite::memory:` (also `:memory:`), and a plain path. Relative paths
    /// are taken from the current directory. PostgreSQL accepts
    /// `postgres://` and `postgresql://` URLs. The short-term backend takes
    /// no DSN, so any DSN given with it is ignored.
    pub fn parse_for(backend: Backend, dsn: &str) -> Result<Self> {
        let dsn = dsn.trim();
        match backend {
            Backend::ShortTerm => Ok(StoreTarget::ShortTerm),
            Backend::Sqlite => parse_sqlite(dsn).map(StoreTarget::Sqlite),
            Backend::Postgres => {
                if is_postgres_url(dsn) {
                    Ok(StoreTarget::Postgres(dsn.to_owned()))
                } else {
                    Err(Error::InvalidDsn {
                        backend: "postgres",
                        dsn: redact_dsn(dsn),
                        reason: "expected a postgres:// or postgresql:// URL".into(),
                    })
                }
            }
        }
    }

    /// The backend of this target.
    pub fn backend(&self) -> Backend {
        match self {
            StoreTarget::ShortTerm => Backend::ShortTerm,
            StoreTarget::Sqlite(_) => Backend::Sqlite,
            StoreTarget::Postgres(_) => Backend::Postgres,
        }
    }

    /// The target as text, with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreTarget::ShortTerm => "short_term".to_owned(),
            StoreTarget::Sqlite(SqliteLocation::Memory) => "sqlite::memory:".to_owned(),
            StoreTarget::Sqlite(SqliteLocation::File(path)) => {
                format!("sqlite://{}", path.display())
            }
            StoreTarget::Postgres(url) => redact_dsn(url),
        }
    }
}

impl fmt::Debug for StoreTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "StoreTarget({})", self.redacted())
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.redacted())
    }
}

fn is_postgres_url(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")
}

fn parse_sqlite(dsn: &str) -> Result<SqliteLocation> {
    let invalid = |reason: &str| Error::InvalidDsn {
        backend: "sqlite",
        dsn: redact_dsn(dsn),
        reason: reason.to_owned(),
    };
    if dsn.is_empty() {
        return Err(invalid("the DSN is empty"));
    }
    if matches!(dsn, "sqlite::memory:" | ":memory:" | "sqlite://:memory:") {
        return Ok(SqliteLocation::Memory);
    }
    let path = if let Some(rest) = dsn.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = dsn.strip_prefix("sqlite:") {
        rest
    } else if dsn.contains("://") {
        return Err(invalid(
            "expected sqlite:///path, sqlite://path, sqlite::memory: or a plain path",
        ));
    } else {
        dsn
    };
    if path.is_empty() {
        return Err(invalid("the path is empty"));
    }
    if path.contains('?') {
        return Err(invalid(
            "query parameters are not supported; give only the path",
        ));
    }
    Ok(SqliteLocation::File(absolute_path(Path::new(path))))
}

/// `path` made absolute, with its directory resolved through symlinks when
/// it exists, so that two spellings of one file share one pool.
fn absolute_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => parent.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    }
}

/// `dsn` with the password of its user info and any `password=` query
/// parameter replaced by `***`.
pub fn redact_dsn(dsn: &str) -> String {
    let (base, query) = match dsn.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (dsn, None),
    };
    let mut redacted = match base.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let rest = &base[authority_start..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            match authority.rfind('@') {
                Some(at) => {
                    let user_info = &authority[..at];
                    let user = match user_info.split_once(':') {
                        Some((user, _password)) => format!("{user}:***"),
                        None => user_info.to_owned(),
                    };
                    format!(
                        "{}{user}{}",
                        &base[..authority_start],
                        &base[authority_start + at..]
                    )
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parameters.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{SqliteLocation, StoreTarget, redact_dsn};
    use crate::store::Backend;

    fn check_redact(dsn: &str, expected: &str) {
        assert_eq!(redact_dsn(dsn), expected, "{dsn}");
    }

    #[test]
    fn redacts_passwords() {
        check_redact(
            "postgres://exo:s3cret@db:5432/exo",
            "postgres://exo:***@db:5432/exo",
        );
        check_redact(
            "postgresql://exo:p%40ss@db/exo?sslmode=require",
            "postgresql://exo:***@db/exo?sslmode=require",
        );
        check_redact("postgres://exo@db/exo", "postgres://exo@db/exo");
        check_redact(
            "postgres://db/exo?user=exo&password=hunter2",
            "postgres://db/exo?user=exo&password=***",
        );
        check_redact("sqlite:///tmp/a.db", "sqlite:///tmp/a.db");
        check_redact("relative.db", "relative.db");
    }

    fn cwd() -> PathBuf {
        std::env::current_dir().unwrap().canonicalize().unwrap()
    }

    fn check_parse(dsn: &str, expected: StoreTarget) {
        assert_eq!(StoreTarget::parse(dsn).unwrap(), expected, "{dsn}");
    }

    #[test]
    fn parses_every_accepted_dsn_form() {
        let file = |path: PathBuf| StoreTarget::Sqlite(SqliteLocation::File(path));
        let tmp = PathBuf::from("/tmp").canonicalize().unwrap();
        check_parse("sqlite:///tmp/memory.db", file(tmp.join("memory.db")));
        check_parse("sqlite://memory.db", file(cwd().join("memory.db")));
        check_parse("sqlite:memory.db", file(cwd().join("memory.db")));
        check_parse("/tmp/memory.db", file(tmp.join("memory.db")));
        check_parse("memory.db", file(cwd().join("memory.db")));
        check_parse("./memory.db", file(cwd().join("memory.db")));
        check_parse(
            "sqlite::memory:",
            StoreTarget::Sqlite(SqliteLocation::Memory),
        );
        check_parse(":memory:", StoreTarget::Sqlite(SqliteLocation::Memory));
        check_parse(
            "postgres://u:p@h/db",
            StoreTarget::Postgres("postgres://u:p@h/db".into()),
        );
        check_parse(
            " postgresql://h/db ",
            StoreTarget::Postgres("postgresql://h/db".into()),
        );
    }

    #[test]
    fn rejects_dsns_that_do_not_fit_their_backend() {
        for (backend, dsn, fragment) in [
            (Backend::Sqlite, "", "empty"),
            (Backend::Sqlite, "sqlite://", "path is empty"),
            (Backend::Sqlite, "mysql://h/db", "expected sqlite"),
            (Backend::Sqlite, "postgres://u:pw@h/db", "expected sqlite"),
            (
                Backend::Sqlite,
                "sqlite:///a.db?mode=ro",
                "query parameters",
            ),
            (
                Backend::Postgres,
                "sqlite:///a.db",
                "postgres:// or postgresql://",
            ),
            (Backend::Postgres, "", "postgres:// or postgresql://"),
        ] {
            let error = StoreTarget::parse_for(backend, dsn)
                .unwrap_err()
                .to_string();
            assert!(error.contains(fragment), "{dsn}: {error}");
            assert!(!error.contains(":pw@"), "password leaked: {error}");
        }
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let target = StoreTarget::parse("postgres://exo:s3cret@db/exo").unwrap();
        assert!(!format!("{target:?}").contains("s3cret"));
        assert!(!target.to_string().contains("s3cret"));
    }
}
