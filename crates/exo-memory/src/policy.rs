//! Which stores a task payload may open.
//!
//! A DSN that comes from a task payload is a path or a credential chosen by
//! whoever wrote to the queue: with it, a payload could make the worker
//! create files anywhere it can write, or connect to any database it can
//! reach. So the worker is configured with named stores
//! (`--memory-store main=postgres://...`), and a payload refers to one by
//! name (`"store": "main"`). A payload `dsn` is refused unless it names one
//! of the configured stores or the worker was started with
//! `allow_payload_dsn`.

use std::{collections::BTreeMap, str::FromStr};

use crate::{
    config::MemoryConfig,
    dsn::{StoreTarget, redact_dsn},
    error::{Error, Result},
    store::Backend,
};

/// A store configured on the worker: `name=dsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedStore {
    /// The name payloads use in `"store"`.
    pub name: String,
    /// Where it lives.
    pub target: StoreTarget,
}

impl NamedStore {
    /// Parses `name=dsn`, e.g. `main=postgres://exo@db/exo` or
    /// `local=sqlite:///var/lib/exo/memory.db`. The backend is inferred from
    /// the DSN (see [`StoreTarget::parse`]). Names are letters, digits, `_`,
    /// `-` and `.`.
    pub fn parse(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidStoreSpec {
            spec: redact_spec(spec),
            reason: reason.to_owned(),
        };
        let Some((name, dsn)) = spec.split_once('=') else {
            return Err(invalid("expected NAME=DSN"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(invalid(
                "a name may hold only letters, digits, `_`, `-` and `.`",
            ));
        }
        if dsn.trim().is_empty() {
            return Err(invalid("the DSN is empty"));
        }
        let target = StoreTarget::parse(dsn).map_err(|error| invalid(&error.to_string()))?;
        Ok(NamedStore {
            name: name.to_owned(),
            target,
        })
    }
}

impl FromStr for NamedStore {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        Self::parse(spec)
    }
}

fn redact_spec(spec: &str) -> String {
    match spec.split_once('=') {
        Some((name, dsn)) => format!("{name}={}", redact_dsn(dsn)),
        None => redact_dsn(spec),
    }
}

/// The worker's memory policy: its named stores, and whether a payload may
/// bring its own DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryPolicy {
    stores: BTreeMap<String, StoreTarget>,
    allow_payload_dsn: bool,
}

impl MemoryPolicy {
    /// A policy with these stores. Fails on a duplicate name, or on a store
    /// whose backend is not compiled in, so a misconfigured worker fails at
    /// startup rather than on its first task.
    pub fn new(
        stores: impl IntoIterator<Item = NamedStore>,
        allow_payload_dsn: bool,
    ) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for store in stores {
            store.target.backend().ensure_compiled()?;
            if by_name.contains_key(&store.name) {
                return Err(Error::InvalidStoreSpec {
                    spec: format!("{}={}", store.name, store.target),
                    reason: format!("the name `{}` is defined twice", store.name),
                });
            }
            by_name.insert(store.name, store.target);
        }
        Ok(MemoryPolicy {
            stores: by_name,
            allow_payload_dsn,
        })
    }

    /// A policy from `name=dsn` definitions, as the CLI takes them.
    pub fn from_specs<I, S>(specs: I, allow_payload_dsn: bool) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let stores = specs
            .into_iter()
            .map(|spec| NamedStore::parse(spec.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Self::new(stores, allow_payload_dsn)
    }

    /// The configured store of this name.
    pub fn store(&self, name: &str) -> Option<&StoreTarget> {
        self.stores.get(name)
    }

    /// The configured stores, by name.
    pub fn stores(&self) -> impl Iterator<Item = (&str, &StoreTarget)> {
        self.stores
            .iter()
            .map(|(name, target)| (name.as_str(), target))
    }

    /// True when payloads may bring their own DSN.
    pub fn allows_payload_dsn(&self) -> bool {
        self.allow_payload_dsn
    }

    /// Decides which store a task gets:
    ///
    /// 1. `store` names a configured store; `backend` and `dsn`, if also
    ///    given, must agree with it.
    /// 2. Otherwise the backend is `backend`, else the one the `dsn` implies,
    ///    else `short_term`. The short-term backend needs no DSN.
    /// 3. A SQL backend must be compiled in. A payload `dsn` is accepted
    ///    when it names the same database as a configured store, or when
    ///    payload DSNs are allowed; otherwise it is refused.
    /// 4. A SQL backend without `store` or `dsn` gets the worker's only
    ///    store of that backend, if it has exactly one.
    pub fn resolve(&self, config: &MemoryConfig) -> Result<StoreTarget> {
        if let Some(name) = &config.store {
            return self.resolve_named(name, config);
        }
        let backend = match (config.backend, &config.dsn) {
            (Some(backend), _) => backend,
            (None, Some(dsn)) => StoreTarget::parse(dsn)?.backend(),
            (None, None) => Backend::ShortTerm,
        };
        if backend == Backend::ShortTerm {
            return Ok(StoreTarget::ShortTerm);
        }
        backend.ensure_compiled()?;
        match &config.dsn {
            Some(dsn) => {
                let target = StoreTarget::parse_for(backend, dsn)?;
                if self.allow_payload_dsn || self.stores.values().any(|known| *known == target) {
                    Ok(target)
                } else {
                    Err(Error::PayloadDsnRefused)
                }
            }
            None => self.only_store_of(backend),
        }
    }

    fn resolve_named(&self, name: &str, config: &MemoryConfig) -> Result<StoreTarget> {
        let target = self.stores.get(name).ok_or_else(|| Error::UnknownStore {
            name: name.to_owned(),
            known: self.known_names(),
        })?;
        if let Some(backend) = config.backend
            && backend != target.backend()
        {
            return Err(Error::InvalidConfig(format!(
                "store `{name}` is a {} store, but `backend` asks for {backend}",
                target.backend()
            )));
        }
        if let Some(dsn) = &config.dsn {
            let same =
                StoreTarget::parse_for(target.backend(), dsn).is_ok_and(|given| given == *target);
            if !same {
                return Err(Error::InvalidConfig(format!(
                    "both `store` and `dsn` are given and `dsn` is not store `{name}`; \
                     give only `store`"
                )));
            }
        }
        target.backend().ensure_compiled()?;
        Ok(target.clone())
    }

    fn only_store_of(&self, backend: Backend) -> Result<StoreTarget> {
        let candidates: Vec<(&String, &StoreTarget)> = self
            .stores
            .iter()
            .filter(|(_, target)| target.backend() == backend)
            .collect();
        match candidates.as_slice() {
            [(_, target)] => Ok((*target).clone()),
            [] => Err(Error::StoreNotChosen(format!(
                "metadata.memory asks for the {backend} backend without a `store`, and this \
                 worker has no {backend} store; configure one with `--memory-store NAME=DSN` \
                 and name it in \"store\""
            ))),
            several => Err(Error::StoreNotChosen(format!(
                "metadata.memory asks for the {backend} backend without a `store`, and this \
                 worker has several ({}); name one in \"store\"",
                several
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn known_names(&self) -> String {
        if self.stores.is_empty() {
            "no named stores (configure them with `--memory-store NAME=DSN`)".to_owned()
        } else {
            let names: Vec<String> = self.stores.keys().map(|name| format!("`{name}`")).collect();
            format!("stores {}", names.join(", "))
        }
    }
}
