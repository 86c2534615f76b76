//! Which fields of a pipeline config hold secrets (R-SEC-1).
//!
//! The server encrypts these values before a config reaches the database,
//! decrypts them only to build a pipeline, and shows them to API clients
//! as `****` plus the last 4 characters. The table is the single source of
//! truth: a component with a credential adds its field here.
//!
//! Paths are JSON pointers relative to the component object (the
//! destination, or one entry of `processors`); a `*` token matches every
//! key of an object or every index of an array.

/// Secret fields by component kind and `type`.
pub const SECRET_FIELDS: &[SecretField] = &[
    SecretField::destination("webhook", "/secret"),
    SecretField::destination("webhook", "/previous_secret"),
    SecretField::destination("object_store", "/secret_access_key"),
    SecretField::destination("postgres", "/password"),
    SecretField::destination("clickhouse", "/password"),
    SecretField::processor("enrich_http", "/providers/*/api_key"),
    SecretField::processor("enrich_http", "/providers/*/headers/*"),
];

/// Where a component sits in a pipeline document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// `/destination`
    Destination,
    /// `/processors/<n>`
    Processor,
}

/// One secret field of one component type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretField {
    pub kind: ComponentKind,
    /// The component's `type`.
    pub component: &'static str,
    /// JSON pointer pattern relative to the component object.
    pub path: &'static str,
}

impl SecretField {
    const fn destination(component: &'static str, path: &'static str) -> Self {
        Self {
            kind: ComponentKind::Destination,
            component,
            path,
        }
    }

    const fn processor(component: &'static str, path: &'static str) -> Self {
        Self {
            kind: ComponentKind::Processor,
            component,
            path,
        }
    }
}

/// The secret path patterns of one component type.
pub fn secret_paths(kind: ComponentKind, component: &str) -> impl Iterator<Item = &'static str> {
    SECRET_FIELDS
        .iter()
        .filter(move |f| f.kind == kind && f.component == component)
        .map(|f| f.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_kind_and_type() {
        let webhook: Vec<_> = secret_paths(ComponentKind::Destination, "webhook").collect();
        assert_eq!(webhook, vec!["/secret", "/previous_secret"]);
        assert_eq!(secret_paths(ComponentKind::Processor, "webhook").count(), 0);
        assert_eq!(secret_paths(ComponentKind::Destination, "file").count(), 0);
    }
}
