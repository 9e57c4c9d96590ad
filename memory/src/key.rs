//! The encryption key a host app gives for a profile (cargo feature `encryption`).

/// A SQLCipher key, from the platform keystore. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncryptionKey {
    /// A passphrase; SQLCipher derives the key with PBKDF2 (slow on purpose: ~100 ms at open).
    Passphrase(String),
    /// A raw 256-bit key (no derivation; what a keystore-generated key should be).
    Raw([u8; 32]),
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncryptionKey::Passphrase(_) => f.write_str("EncryptionKey::Passphrase(<redacted>)"),
            EncryptionKey::Raw(_) => f.write_str("EncryptionKey::Raw(<redacted>)"),
        }
    }
}

impl EncryptionKey {
    /// The SQL literal for `PRAGMA key = ...`.
    #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
    pub(crate) fn pragma_literal(&self) -> String {
        match self {
            EncryptionKey::Passphrase(p) => format!("'{}'", p.replace('\'', "''")),
            EncryptionKey::Raw(k) => {
                let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
                format!("\"x'{hex}'\"")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_quote_and_debug_redacts() {
        let p = EncryptionKey::Passphrase("it's".into());
        assert_eq!(p.pragma_literal(), "'it''s'");
        assert!(!format!("{p:?}").contains("it"));
        let r = EncryptionKey::Raw([0xab; 32]);
        assert!(r.pragma_literal().starts_with("\"x'abab"));
    }
}
