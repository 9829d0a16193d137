//! Encrypted PKCS#8 private keys (`-----BEGIN ENCRYPTED PRIVATE KEY-----`, RFC 5958 with PBES2,
//! RFC 8018), as ACM's `ExportCertificate` returns them. The ASN.1 is read with RustCrypto's
//! `pkcs8`/`pkcs5` types (parsing only); the key derivation (PBKDF2-HMAC-SHA1/256/384/512) and
//! the decryption (AES-128/192/256-CBC) are aws-lc-rs, the process's one crypto provider. The
//! plain key lives in memory only.

use std::num::NonZeroU32;

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_128, AES_192, AES_256};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::pbkdf2;
use pkcs8::der::Decode;
use pkcs8::pkcs5::pbes2::{EncryptionScheme, Kdf, Pbkdf2Prf};
use pkcs8::pkcs5::EncryptionScheme as Scheme;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// More PBKDF2 iterations than this are refused (a hostile file could make a key cost minutes).
const MAX_ITERATIONS: u32 = 10_000_000;

/// Reads `pem`: an `ENCRYPTED PRIVATE KEY` block is decrypted with `passphrase`; any other key
/// block (PKCS#8, PKCS#1, SEC1) is returned as it is.
pub fn private_key_from_pem(pem: &[u8], passphrase: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    if let Some(der) = encrypted_block(pem)? {
        return decrypt(&der, passphrase).map(PrivateKeyDer::Pkcs8);
    }
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| format!("bad PEM in the private key: {e}"))?;
        match kind {
            SectionKind::PrivateKey => return Ok(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => return Ok(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => return Ok(PrivateKeyDer::Sec1(der.into())),
            _ => continue,
        }
    }
    Err("no private key in the PEM".into())
}

/// The DER of the `ENCRYPTED PRIVATE KEY` block of `pem`, if it has one (rustls-pki-types'
/// PEM reader skips that label).
fn encrypted_block(pem: &[u8]) -> Result<Option<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
    const END: &str = "-----END ENCRYPTED PRIVATE KEY-----";
    let text = std::str::from_utf8(pem).map_err(|_| "the private key PEM is not text".to_string())?;
    let Some(start) = text.find(BEGIN) else { return Ok(None) };
    let body = &text[start + BEGIN.len()..];
    let end = body.find(END).ok_or("the ENCRYPTED PRIVATE KEY block has no end line")?;
    let b64: String = body[..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    aws_smithy_types::base64::decode(b64)
        .map(Some)
        .map_err(|_| "bad base64 in the ENCRYPTED PRIVATE KEY block".to_string())
}

/// Decrypts the DER of an `EncryptedPrivateKeyInfo` protected with PBES2.
pub fn decrypt(der: &[u8], passphrase: &[u8]) -> Result<PrivatePkcs8KeyDer<'static>, String> {
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(der).map_err(|e| format!("bad encrypted private key: {e}"))?;
    let Scheme::Pbes2(params) = info.encryption_algorithm else {
        return Err("the private key is encrypted with PBES1; only PBES2 is supported".into());
    };
    let Kdf::Pbkdf2(kdf) = &params.kdf else {
        return Err("the private key's PBES2 uses scrypt; only PBKDF2 is supported".into());
    };
    let prf = match kdf.prf {
        Pbkdf2Prf::HmacWithSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Pbkdf2Prf::HmacWithSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Pbkdf2Prf::HmacWithSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Pbkdf2Prf::HmacWithSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return Err("the private key's PBKDF2 uses HMAC-SHA-224, which is not supported".into()),
    };
    let (algorithm, key_len, iv) = match params.encryption {
        EncryptionScheme::Aes128Cbc { iv } => (&AES_128, 16, iv),
        EncryptionScheme::Aes192Cbc { iv } => (&AES_192, 24, iv),
        EncryptionScheme::Aes256Cbc { iv } => (&AES_256, 32, iv),
        _ => return Err("the private key's cipher is not AES-CBC".into()),
    };
    let iterations = NonZeroU32::new(kdf.iteration_count)
        .filter(|n| n.get() <= MAX_ITERATIONS)
        .ok_or_else(|| format!("the private key's PBKDF2 iteration count {} is out of range", kdf.iteration_count))?;
    if kdf.key_length.is_some_and(|l| usize::from(l) != key_len) {
        return Err("the private key's PBKDF2 key length does not fit its cipher".into());
    }
    let mut key = vec![0u8; key_len];
    pbkdf2::derive(prf, iterations, kdf.salt, passphrase, &mut key);
    let cipher = UnboundCipherKey::new(algorithm, &key)
        .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
        .map_err(|_| "cannot set up AES-CBC".to_string())?;
    let mut data = info.encrypted_data.to_vec();
    let plain = cipher
        .decrypt(&mut data, DecryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| "cannot decrypt the private key (wrong passphrase or damaged key)".to_string())?;
    // A wrong passphrase passes the padding check now and then: the result must be a PKCS#8.
    pkcs8::PrivateKeyInfo::from_der(plain)
        .map_err(|_| "cannot decrypt the private key (wrong passphrase or damaged key)".to_string())?;
    Ok(PrivatePkcs8KeyDer::from(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -passout pass:...`
    // (and aes-128-cbc with hmacWithSHA1) from the same P-256 key: the encrypted forms OpenSSL
    // and ACM write.
    const PLAIN: &str = include_str!("testdata/key.pem");
    const AES256_SHA256: &str = include_str!("testdata/key-aes256-sha256.pem");
    const AES128_SHA1: &str = include_str!("testdata/key-aes128-sha1.pem");
    const PASS: &[u8] = b"correct horse battery staple";

    fn plain() -> Vec<u8> {
        match private_key_from_pem(PLAIN.as_bytes(), b"").unwrap() {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => panic!("not PKCS#8: {other:?}"),
        }
    }

    #[test]
    fn decrypts_pbes2_with_pbkdf2_and_aes_cbc() {
        for pem in [AES256_SHA256, AES128_SHA1] {
            let key = private_key_from_pem(pem.as_bytes(), PASS).unwrap();
            assert_eq!(key.secret_der(), plain(), "decrypted key equals the plain one");
        }
    }

    #[test]
    fn a_wrong_passphrase_is_an_error_never_a_key() {
        for pass in [&b"wrong"[..], b"", b"correct horse battery stapl"] {
            let e = private_key_from_pem(AES256_SHA256.as_bytes(), pass).unwrap_err();
            assert!(e.contains("cannot decrypt"), "{e}");
        }
    }

    #[test]
    fn damaged_input_is_an_error() {
        let e = decrypt(b"\x30\x03\x02\x01\x00", PASS).unwrap_err();
        assert!(e.starts_with("bad encrypted private key"), "{e}");
        assert!(private_key_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", PASS).is_err());
    }
}
